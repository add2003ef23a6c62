"""The state file: exact round trip, atomic replacement, and a corrupt file
set aside rather than crashing the daemon."""

from __future__ import annotations

import json
import os
from ipaddress import ip_address
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given

from director import statefile
from director.config import RealServerId
from director.desired import AdminState
from director.ipvs.model import (
    AF_INET6,
    Destination,
    Forward,
    Protocol,
    Service,
    ServiceFlags,
    ServiceKey,
    SyncDaemon,
    SyncState,
    Timeouts,
    TunnelFlags,
    TunnelType,
)
from director.runtime import EMPTY, RuntimeLayer
from director.vips import Vip

VIP = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
V6 = ServiceKey.inet(Protocol.UDP, "2001:db8::1", 53)
MARK = ServiceKey.mark(7, AF_INET6)
RS = RealServerId(VIP, ip_address("10.0.1.1"), 80)

LAYER = RuntimeLayer(
    services={
        VIP: Service(VIP, "sh", ServiceFlags.PERSISTENT | ServiceFlags.SCHED2, 300, 0xFFFFFF00),
        MARK: Service(MARK, "wlc", ServiceFlags.PERSISTENT, 60, 64, "sip"),
    },
    deleted_services=frozenset({V6}),
    real_servers={
        RS: Destination(RS.address, 80, Forward.MASQ, 3, 100, 10),
        RealServerId(MARK, ip_address("2001:db8::5"), 443): Destination(
            ip_address("2001:db8::5"),
            443,
            Forward.TUNNEL,
            0,
            0,
            0,
            TunnelType.GUE,
            6080,
            TunnelFlags.REMCSUM,
        ),
    },
    deleted_real_servers=frozenset({RealServerId(V6, ip_address("2001:db8::9"), 53)}),
    admin={RS: AdminState.DRAIN},
    timeouts=Timeouts(10, 0, 30),
)


def test_round_trip() -> None:
    assert statefile.decode(statefile.encode(LAYER)) == statefile.Saved(LAYER)
    assert statefile.decode(statefile.encode(EMPTY)) == statefile.Saved(EMPTY)


@given(
    weights=st.lists(st.integers(0, 65535), max_size=5),
    port=st.integers(0, 65535),
    timeouts=st.none() | st.builds(Timeouts, st.integers(0, 10**6), st.integers(0, 10**6)),
)
def test_round_trip_of_generated_layers(
    weights: list[int], port: int, timeouts: Timeouts | None
) -> None:
    servers = {
        RealServerId(VIP, ip_address(f"10.0.1.{i}"), port): Destination(
            ip_address(f"10.0.1.{i}"), port, weight=w
        )
        for i, w in enumerate(weights)
    }
    layer = RuntimeLayer(real_servers=servers, timeouts=timeouts)
    decoded = statefile.decode(statefile.encode(layer)).layer
    assert decoded == layer
    assert list(decoded.real_servers) == list(servers)


def test_save_replaces_atomically_and_load_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    statefile.save(path, EMPTY)
    statefile.save(path, LAYER)
    assert statefile.load(path) == statefile.Loaded(LAYER)
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]  # no temporaries


def test_owned_services_are_saved_and_read_back(tmp_path: Path) -> None:
    owned = frozenset({VIP, ServiceKey.mark(2**31 + 5, AF_INET6)})
    path = tmp_path / "state.json"
    statefile.save(path, LAYER, owned)
    assert statefile.load(path) == statefile.Loaded(LAYER, owned)


def test_a_version_1_file_loads_with_no_owned_services(tmp_path: Path) -> None:
    data = json.loads(statefile.encode(LAYER, {VIP}))
    del data["owned_services"]
    data["version"] = 1
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data))
    assert statefile.load(path) == statefile.Loaded(LAYER)


def test_missing_file_is_an_empty_layer(tmp_path: Path) -> None:
    assert statefile.load(tmp_path / "none.json") == statefile.Loaded(EMPTY)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"version": 3}', "state.version: 3 is not a supported version"),
        (
            json.dumps({**json.loads(statefile.encode(LAYER)), "admin": [{"state": "x"}]}),
            "state.admin[0].service: missing",
        ),
        (
            statefile.encode(LAYER).replace('"weight": 3', '"weight": "3"'),
            "state.real_servers[0].weight: expected an integer, got a string",
        ),
        (
            statefile.encode(LAYER).replace('"10.0.1.1"', '"10.0.1"', 1),
            'state.real_servers[0].address: "10.0.1" is not an IP address',
        ),
        # Values and types as JSON writes and names them, not as Python does.
        (
            statefile.encode(LAYER).replace('"weight": 3', '"weight": true'),
            "state.real_servers[0].weight: expected an integer, got true",
        ),
        (
            statefile.encode(LAYER).replace('"weight": 3', '"weight": null'),
            "state.real_servers[0].weight: expected an integer, got null",
        ),
        (
            statefile.encode(LAYER).replace('"weight": 3', '"weight": 3.5'),
            "state.real_servers[0].weight: expected an integer, got a number",
        ),
        (
            statefile.encode(LAYER).replace('"scheduler": "sh"', '"scheduler": ["sh"]'),
            "state.services[0].scheduler: expected a string, got an array",
        ),
        (
            statefile.encode(LAYER).replace('"services": [', '"services": {"a": 1}, "x": [', 1),
            "state.services: expected an array, got an object",
        ),
        # Shapes say what they found (operator trial, stop 25).
        (
            statefile.encode(LAYER).replace('"services": [', '"services": [7, ', 1),
            "state.services[0]: expected an object, got an integer",
        ),
        ("[]", "expected a JSON object at the top, got an array"),
        ("null", "expected a JSON object at the top, got null"),
        (
            statefile.encode(LAYER).replace('"family": "ipv4"', '"family": "inet\'"', 1),
            'state.services[0].key.family: "inet\'" is not one of "ipv4", "ipv6"',
        ),
        (
            statefile.encode(LAYER, {VIP}, vips={Vip("eth0", ip_address("192.0.2.1"))}).replace(
                '"eth0"', '"eth\\u0000"'
            ),
            'state.owned_vips[0].interface: "eth\\u0000" is not an interface name',
        ),
        (
            statefile.encode(LAYER).replace('"forward": "masq"', '"forward": "carrier pigeon"'),
            'state.real_servers[0].forward: "carrier pigeon" is not one of "local", "masq", "route", "tunnel"',
        ),
        (
            statefile.encode(LAYER).replace('"weight": 3', '"weight": -1'),
            "state.real_servers[0].weight: -1 is not in 0..2147483647",
        ),
        (
            statefile.encode(LAYER).replace('"tcp": 10', f'"tcp": {2**32 - 1}'),
            "state.timeouts.tcp: 4294967295 is not in 0..21474836",
        ),
        # Operator trial (stop 25): values no kernel takes, and strings UTF-8
        # cannot carry, set aside at load rather than refused at every pass
        # or raised from the first pass (a lone surrogate stopped the daemon).
        (
            statefile.encode(LAYER).replace('"scheduler": "sh"', f'"scheduler": "{"x" * 40}"'),
            f'state.services[0].scheduler: "{"x" * 40}": longer than 15 characters',
        ),
        (
            statefile.encode(LAYER).replace('"pe_name": "sip"', f'"pe_name": "{"y" * 40}"'),
            f'state.services[1].pe_name: "{"y" * 40}": longer than 31 characters',
        ),
        (
            statefile.encode(LAYER).replace('"scheduler": "sh"', '"scheduler": "\\ud800"'),
            'state.services[0].scheduler: "\\ud800" holds a lone surrogate',
        ),
        (
            statefile.encode(LAYER, {VIP}, vips={Vip("eth0", ip_address("192.0.2.1"))}).replace(
                '"eth0"', '"\\ud800"'
            ),
            'state.owned_vips[0].interface: "\\ud800" holds a lone surrogate',
        ),
        (
            statefile.encode(
                LAYER, sync={SyncState.MASTER: SyncDaemon(SyncState.MASTER, "eth0")}
            ).replace('"eth0"', '"a/b"'),
            'state.sync_daemons[0].mcast_ifn: "a/b" is not an interface name',
        ),
        (
            statefile.encode(LAYER).replace('"weight": 3', f'"weight": {"9" * 5000}'),
            "not JSON this daemon can read: a number of over 4300 digits",
        ),
    ],
)
def test_corrupt_file_is_set_aside_with_the_problem_named(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    loaded = statefile.load(path)
    assert loaded.layer == EMPTY
    assert loaded.problem is not None and problem in loaded.problem
    assert loaded.moved_to == tmp_path / "state.json.corrupt"
    assert loaded.moved_to.read_text() == text
    assert not path.exists()


def test_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    statefile.save(path, LAYER)

    def no_space(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space"):
        statefile.save(path, EMPTY)
    monkeypatch.undo()
    assert statefile.load(path).layer == LAYER
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def _former_records(layer: RuntimeLayer) -> dict[str, list[str]]:
    """The records as the encoder of a -R's first state file wrote them
    (json.dumps of one dict each): the format the file keeps."""

    def key(k: ServiceKey) -> dict[str, object]:
        return {
            "family": "ipv6" if k.family == AF_INET6 else "ipv4",
            "protocol": k.protocol.name.lower() if k.protocol is not None else None,
            "address": str(k.address) if k.address is not None else None,
            "port": k.port,
            "fwmark": k.fwmark,
        }

    def rid(r: RealServerId) -> dict[str, object]:
        return {"service": key(r.service), "address": str(r.address), "port": r.port}

    return {
        "services": [
            json.dumps(
                {
                    "key": key(s.key),
                    "scheduler": s.scheduler,
                    "flags": int(s.flags & ~ServiceFlags.HASHED),
                    "timeout": s.timeout,
                    "netmask": s.netmask,
                    "pe_name": s.pe_name,
                }
            )
            for s in layer.services.values()
        ],
        "real_servers": [
            json.dumps(
                {
                    **rid(r),
                    "forward": d.forward.name.lower(),
                    "weight": d.weight,
                    "u_threshold": d.u_threshold,
                    "l_threshold": d.l_threshold,
                    "tun_type": d.tun_type.name.lower(),
                    "tun_port": d.tun_port,
                    "tun_flags": int(d.tun_flags),
                }
            )
            for r, d in layer.real_servers.items()
        ],
    }


def _records(text: str, name: str) -> list[str]:
    """The lines of one list of the file: its records as written."""
    lines = text.splitlines()
    if {f' "{name}": []', f' "{name}": [],'} & set(lines):
        return []
    start = lines.index(f' "{name}": [') + 1
    end = next(i for i in range(start, len(lines)) if lines[i] in (" ]", " ],"))
    return [line.removeprefix("  ").removesuffix(",") for line in lines[start:end]]


@given(
    servers=st.lists(
        st.tuples(
            st.sampled_from([VIP, V6, MARK]),
            st.ip_addresses(),
            st.integers(0, 65535),
            st.sampled_from(list(Forward)),
            st.integers(0, 2**31 - 1),
            st.integers(0, 2**32 - 1),
            st.sampled_from(list(TunnelType)),
            st.sampled_from(list(TunnelFlags)),
        ),
        max_size=6,
    ),
    schedulers=st.lists(
        st.tuples(
            st.text(max_size=6), st.integers(0, 0x3F), st.integers(0, 2**31), st.text(max_size=4)
        ),
        max_size=3,
    ),
)
def test_records_are_written_as_json_dumps_writes_them(
    servers: list[tuple[ServiceKey, object, int, Forward, int, int, TunnelType, TunnelFlags]],
    schedulers: list[tuple[str, int, int, str]],
) -> None:
    """The encoder shares the text of keys and settings between records:
    each record is still, byte for byte, json.dumps of its fields (any
    scheduler name, escapes included), and the file decodes to the layer."""
    real_servers = {
        RealServerId(service, address, port): Destination(
            address,
            port,
            forward,
            weight,
            threshold,
            threshold // 2,
            tun_type,
            port,
            tun_flags,  # type: ignore[arg-type]
        )
        for service, address, port, forward, weight, threshold, tun_type, tun_flags in servers
    }
    keys = [VIP, V6, MARK]
    services = {
        keys[i]: Service(keys[i], name, ServiceFlags(flags), timeout, 32, pe)
        for i, (name, flags, timeout, pe) in enumerate(schedulers)
    }
    layer = RuntimeLayer(services=services, real_servers=real_servers)
    text = statefile.encode(layer)
    former = _former_records(layer)
    assert _records(text, "services") == former["services"]
    assert _records(text, "real_servers") == former["real_servers"]
    assert json.loads(text)["real_servers"] == [json.loads(r) for r in former["real_servers"]]


def test_a_file_that_cannot_be_read_is_named_in_words(tmp_path: Path) -> None:
    """Operator trial (stop 25): these read "'utf-8' codec can't decode byte
    0xff in position 43" and "[Errno 21] Is a directory: '/run/...'"."""
    path = tmp_path / "state.json"
    path.write_bytes(b'{"version": 2, "x": "\xff"}')
    loaded = statefile.load(path)
    assert loaded.problem == "not UTF-8 (as JSON must be): byte 0xff at offset 21"
    assert loaded.moved_to == tmp_path / "state.json.corrupt"

    directory = tmp_path / "dir.json"
    (directory / "inside").mkdir(parents=True)
    for name in ("dir.json.corrupt", *(f"dir.json.corrupt.{n}" for n in (1, 2, 3))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "full").touch()  # none can be replaced or moved on
    loaded = statefile.load(directory)
    assert loaded.problem is not None
    assert loaded.problem.startswith(
        "cannot read: Is a directory (and it could not be moved aside: "
    )
    assert "Errno" not in loaded.problem and "'" not in loaded.problem


def test_each_file_set_aside_is_kept_up_to_three_before(tmp_path: Path) -> None:
    """Operator trial (stop 25): a second bad start overwrote the first's
    `.corrupt`. The newest is `.corrupt`, the ones before `.corrupt.1` to
    `.corrupt.3`; a fifth bad file drops the oldest."""
    path = tmp_path / "state.json"
    for n in range(5):
        path.write_text(f"bad {n}")
        loaded = statefile.load(path)
        assert loaded.moved_to == tmp_path / "state.json.corrupt"
    kept = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert kept == {
        "state.json.corrupt": "bad 4",
        "state.json.corrupt.1": "bad 3",
        "state.json.corrupt.2": "bad 2",
        "state.json.corrupt.3": "bad 1",
    }
