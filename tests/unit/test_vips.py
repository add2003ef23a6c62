"""VIPs on interfaces (director.vips): the verdict, the plan from (desired,
owned, present) to address operations, and the engine keeping them over a
dict-backed rtnetlink in virtual time (health, restart, reload, refusals,
maintenance, the state file, status). The real kernel's answers are in
tests/kernel/test_vips.py."""

from __future__ import annotations

import errno
import random
from ipaddress import ip_address
from pathlib import Path

import pytest
import structlog.testing
import trio
import trio.testing
from engine_support import Network, running

from director import statefile
from director.config import ConfigError, parse_config
from director.config.model import RealServerId, VirtualServer
from director.control.handler import Controller
from director.control.messages import Peer, Request
from director.desired import AdminState, RealServerView
from director.engine import Director
from director.health.state import Health
from director.ipvs.facts import NO_MODULES
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import IPAddress
from director.kernel import KernelTable
from director.runtime import EMPTY
from director.status import status_data, status_text
from director.vips import (
    AddAddress,
    AddressError,
    CreateInterface,
    Present,
    RemoveAddress,
    Vip,
    VipOperation,
    desired_vips,
    owned_after,
    plan_vips,
    receives_traffic,
)

VIP = Vip("director0", ip_address("10.0.0.1"))
UP, DOWN, UNKNOWN = (RealServerView(h) for h in (Health.UP, Health.DOWN, Health.UNKNOWN))


def service(quorum: int = 1, servers: int = 2, extra: str = "") -> str:
    text = f"""
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
scheduler = "rr"
quorum = {quorum}
vip_interface = "director0"
check = {{ type = "tcp", interval = 1.0, timeout = 0.5, rise = 1, fall = 1 }}
{extra}
"""
    for i in range(servers):
        text += f'[[virtual_server.real_server]]\naddress = "10.0.1.{i + 1}:80"\n'
    return "[daemon]\nreconcile_interval = 5.0\n" + text


def vs_of(text: str) -> VirtualServer:
    return parse_config(text, "t.toml", NO_MODULES).virtual_servers[0]


def views(vs: VirtualServer, *states: RealServerView) -> dict[RealServerId, RealServerView]:
    return dict(zip(vs.real_server_ids, states, strict=True))


# -- the verdict ----------------------------------------------------------------------


def test_a_service_with_its_quorum_up_receives_traffic() -> None:
    vs = vs_of(service(quorum=2, servers=3))
    assert receives_traffic(vs, views(vs, UP, UP, DOWN), maintenance=False) is True


def test_a_service_below_its_quorum_does_not() -> None:
    vs = vs_of(service(quorum=2, servers=3))
    assert receives_traffic(vs, views(vs, UP, DOWN, DOWN), maintenance=False) is False


def test_unchecked_servers_that_could_make_the_quorum_leave_it_unknown() -> None:
    vs = vs_of(service(quorum=2, servers=3))
    assert receives_traffic(vs, views(vs, UP, UNKNOWN, DOWN), maintenance=False) is None
    assert receives_traffic(vs, {}, maintenance=False) is None


def test_maintenance_means_no_traffic_whatever_the_health() -> None:
    vs = vs_of(service())
    assert receives_traffic(vs, views(vs, UP, UP), maintenance=True) is False


def test_a_disabled_server_does_not_count_for_the_quorum() -> None:
    vs = vs_of(service(quorum=2))
    admin = {vs.real_server_ids[1]: AdminState.DISABLED}
    assert receives_traffic(vs, views(vs, UP, UP), False, admin) is False
    assert receives_traffic(vs, views(vs, UP, UP), False, {}) is True


def test_services_sharing_an_address_share_the_vip() -> None:
    config = parse_config(
        service()
        + service().split("[daemon]\nreconcile_interval = 5.0\n")[1].replace(":80", ":443"),
        "t.toml",
        NO_MODULES,
    )
    web, tls = config.virtual_servers
    health = {**views(web, DOWN, DOWN), **views(tls, UP, DOWN)}
    assert desired_vips(config.virtual_servers, health, False) == {VIP: True}
    health = {**views(web, DOWN, DOWN), **views(tls, UNKNOWN, DOWN)}
    assert desired_vips(config.virtual_servers, health, False) == {VIP: None}


def test_vip_interface_on_a_fwmark_service_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            '[[virtual_server]]\nfwmark = 3\nvip_interface = "director0"\n', "t.toml", NO_MODULES
        )
    assert any("a fwmark service has no address" in e for e in info.value.errors)


def test_create_vip_interface_needs_vip_interface() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n'
            "create_vip_interface = true\n",
            "t.toml",
            NO_MODULES,
        )
    assert info.value.errors == ["virtual_server[0].create_vip_interface: only with vip_interface"]


# -- the plan -------------------------------------------------------------------------


def present(*vips: Vip, interfaces: tuple[str, ...] = ("director0", "eth0")) -> Present:
    addresses: dict[IPAddress, frozenset[str]] = {}
    for vip in vips:
        addresses[vip.address] = addresses.get(vip.address, frozenset()) | {vip.interface}
    return Present(frozenset(interfaces), addresses)


def test_a_wanted_vip_that_is_absent_is_added_and_owned() -> None:
    plan = plan_vips({VIP: True}, set(), present())
    assert plan.operations == (AddAddress(VIP),)
    assert plan.owned == {VIP}


def test_an_owned_vip_that_is_present_is_left_as_it_is() -> None:
    plan = plan_vips({VIP: True}, {VIP}, present(VIP))
    assert plan.operations == () and plan.owned == {VIP}


def test_an_owned_vip_whose_quorum_is_lost_is_removed() -> None:
    plan = plan_vips({VIP: False}, {VIP}, present(VIP))
    assert plan.operations == (RemoveAddress(VIP),)
    assert plan.owned == {VIP}  # until the kernel took the removal


def test_a_vip_present_and_not_ours_is_never_removed_and_said_to_be_there_already() -> None:
    plan = plan_vips({VIP: False}, set(), present(VIP))
    assert plan.operations == ()
    plan = plan_vips({VIP: True}, set(), present(VIP))
    assert plan.operations == () and plan.owned == set()
    assert plan.there_already == {VIP: {"director0"}}


def test_the_vip_already_on_another_interface_is_not_added_a_second_time() -> None:
    plan = plan_vips({VIP: True}, set(), present(Vip("eth0", VIP.address)))
    assert plan.operations == ()
    assert plan.there_already == {VIP: {"eth0"}}


def test_an_unknown_verdict_keeps_what_is() -> None:
    assert plan_vips({VIP: None}, {VIP}, present(VIP)).operations == ()
    assert plan_vips({VIP: None}, set(), present()).operations == ()


def test_an_owned_vip_the_config_dropped_is_removed_and_an_absent_one_forgotten() -> None:
    plan = plan_vips({}, {VIP}, present(VIP))
    assert plan.operations == (RemoveAddress(VIP),)
    plan = plan_vips({}, {VIP}, present())
    assert plan.operations == () and plan.owned == set()


def test_a_changed_vip_interface_moves_the_vip() -> None:
    moved = Vip("director1", VIP.address)
    plan = plan_vips({moved: True}, {VIP}, present(VIP, interfaces=("director0", "director1")))
    assert plan.operations == (AddAddress(moved), RemoveAddress(VIP))


def test_a_missing_interface_is_reported_or_created_when_asked() -> None:
    plan = plan_vips({VIP: True}, set(), present(interfaces=("eth0",)))
    assert plan.operations == () and plan.no_interface == {VIP}
    plan = plan_vips({VIP: True}, set(), present(interfaces=("eth0",)), {"director0"})
    assert plan.operations == (CreateInterface("director0"), AddAddress(VIP))


def test_ownership_ends_with_a_removal_or_a_failed_add() -> None:
    sent: list[VipOperation] = [RemoveAddress(VIP)]
    assert owned_after({VIP}, sent, [None]) == set()
    assert owned_after({VIP}, sent, [("Cannot assign requested address", 99)]) == set()
    assert owned_after({VIP}, sent, [("Operation not permitted", 1)]) == {VIP}
    assert owned_after({VIP}, [AddAddress(VIP)], [("File exists", errno.EEXIST)]) == set()


# -- the engine -----------------------------------------------------------------------


class Links:
    """rtnetlink as a dict: interfaces, their addresses, and errnos to answer."""

    def __init__(self, *interfaces: str) -> None:
        self.interfaces = set(interfaces or ("lo", "director0"))
        self.addresses: dict[str, set[IPAddress]] = {name: set() for name in self.interfaces}
        self.refuse: dict[type, int] = {}
        self.sent: list[VipOperation] = []

    async def present(self) -> Present:
        by_address: dict[IPAddress, set[str]] = {}
        for name, addresses in self.addresses.items():
            for address in addresses:
                by_address.setdefault(address, set()).add(name)
        return Present(frozenset(self.interfaces), {a: frozenset(n) for a, n in by_address.items()})

    async def apply(self, op: VipOperation) -> None:
        self.sent.append(op)
        code = self.refuse.get(type(op))
        if code is not None:
            raise AddressError(__import__("os").strerror(code), code)
        if isinstance(op, CreateInterface):
            self.interfaces.add(op.name)
            self.addresses[op.name] = set()
            return
        if op.vip.interface not in self.interfaces:
            raise AddressError('Cannot find device "x"', errno.ENODEV)
        have = self.addresses[op.vip.interface]
        if isinstance(op, AddAddress):
            if op.vip.address in have:
                raise AddressError("File exists", errno.EEXIST)
            have.add(op.vip.address)
        else:
            if op.vip.address not in have:
                raise AddressError("Cannot assign requested address", errno.EADDRNOTAVAIL)
            have.discard(op.vip.address)

    def on(self, interface: str = "director0") -> set[IPAddress]:
        return self.addresses.get(interface, set())


def director_for(
    text: str,
    links: Links,
    network: Network,
    state: Path | None = None,
    backend: MemoryBackend | None = None,
) -> Director:
    loaded = statefile.load(state) if state is not None else None
    return Director(
        parse_config(text, "t.toml", NO_MODULES),
        KernelTable(backend or MemoryBackend(), threaded=False),
        probe=network.probe,
        rng=random.Random(1),
        state_path=state,
        runtime=loaded.layer if loaded else EMPTY,
        owned=loaded.owned if loaded else frozenset(),
        addresses=links,
        vips_owned=loaded.vips if loaded else frozenset(),
        maintenance=loaded.maintenance if loaded else False,
    )


A, B = ip_address("10.0.1.1"), ip_address("10.0.1.2")
ADDRESS = VIP.address


async def test_the_vip_follows_the_quorum(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    links, network = Links(), Network()
    path = tmp_path / "state.json"
    director = director_for(service(), links, network, path)
    async with running(director):
        assert links.on() == set()  # nothing checked yet: not known
        await trio.sleep(1.1)
        assert links.on() == {ADDRESS}
        assert statefile.load(path).vips == {VIP}
        network.down |= {A}
        await trio.sleep(2.1)
        assert links.on() == {ADDRESS}  # one of two up: quorum 1 met
        network.down |= {B}
        await trio.sleep(2.1)
        assert links.on() == set()
        assert statefile.load(path).vips == set()
        network.down.clear()
        await trio.sleep(2.1)
        assert links.on() == {ADDRESS}


async def test_a_vip_removed_behind_the_daemons_back_comes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links = Links()
    director = director_for(service(), links, Network())
    async with running(director):
        await trio.sleep(1.1)
        links.on().clear()
        await trio.sleep(5.1)
        assert links.on() == {ADDRESS}


async def test_a_restart_adopts_the_owned_vip_without_removing_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    links, network, backend = Links(), Network(), MemoryBackend()
    path = tmp_path / "state.json"
    first = director_for(service(), links, network, path, backend)
    async with running(first):
        await trio.sleep(1.1)
    await first.stop()
    assert links.on() == {ADDRESS}
    links.sent.clear()
    second = director_for(service(), links, network, path, backend)
    assert second.vips.owned == {VIP}
    async with running(second):
        # Before any probe: the servers are adopted unchecked, the VIP stays.
        assert links.on() == {ADDRESS}
        await trio.sleep(3.1)
        assert links.on() == {ADDRESS}
    assert links.sent == []  # never removed, never added again


async def test_a_reload_without_the_service_removes_the_vip_and_keeps_hand_added_ones(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    links = Links()
    hand = ip_address("192.0.2.9")
    links.on().add(hand)
    path = tmp_path / "state.json"
    director = director_for(service(), links, Network(), path)
    async with running(director):
        await trio.sleep(1.1)
        assert links.on() == {ADDRESS, hand}
        config = parse_config("[daemon]\nreconcile_interval = 5.0\n", "t.toml", NO_MODULES)
        await director.exclusive(lambda: director.reload(config))
        assert links.on() == {hand}
        assert statefile.load(path).vips == set()
        assert director.vips.report(trio.current_time()) == ()


async def test_a_vip_there_already_is_left_alone_and_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links = Links()
    links.on().add(ADDRESS)
    network = Network()
    director = director_for(service(), links, network)
    with structlog.testing.capture_logs() as logs:
        async with running(director):
            await trio.sleep(1.1)
            (line,) = director.vips.report(trio.current_time())
            assert line.state == "there already on director0, not ours: left alone"
            network.down |= {A, B}
            await trio.sleep(2.1)
            assert links.on() == {ADDRESS}  # not ours: never removed
    assert links.sent == []
    (event,) = [e for e in logs if e["event"] == "vip_there_already"]
    assert event["found_on"] == ["director0"]


async def test_a_missing_interface_is_reported_retried_and_taken_once_it_exists(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links = Links("lo")
    director = director_for(service(), links, Network())
    with structlog.testing.capture_logs() as logs:
        async with running(director):
            await trio.sleep(1.1)
            (entry,) = director.kernel.backend.services()  # type: ignore[attr-defined]
            assert len(entry.destinations) == 2  # the service applied all the same
            (line,) = director.vips.report(trio.current_time())
            assert line.state == 'missing interface: Cannot find device "director0"'
            links.interfaces.add("director0")
            links.addresses["director0"] = set()
            await trio.sleep(5.1)
            assert links.on() == {ADDRESS}
    assert [e["dev"] for e in logs if e["event"] == "vip_no_interface"] == ["director0"]


async def test_create_vip_interface_makes_a_dummy_interface(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links = Links("lo")
    director = director_for(service(extra="create_vip_interface = true"), links, Network())
    async with running(director):
        await trio.sleep(1.1)
        assert links.sent == [CreateInterface("director0"), AddAddress(VIP)]
        assert links.on() == {ADDRESS}


async def test_a_refused_add_is_retried_with_backoff_and_shown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links = Links()
    links.refuse[AddAddress] = errno.EPERM
    director = director_for(service(), links, Network())
    with structlog.testing.capture_logs() as logs:
        async with running(director):
            await trio.sleep(1.05)
            links.sent.clear()
            began = trio.current_time()
            await trio.sleep(20)
            # After the first refusal: 1, 2, 4 s of backoff, then every 5 s.
            assert len(links.sent) == 5, trio.current_time() - began
            (line,) = director.vips.report(trio.current_time())
            assert line.refused is not None
            assert line.refused.startswith(
                "add_address refused by the kernel: Operation not permitted"
            )
            text = status_text((), vips=director.vips.report(trio.current_time()))
            assert (
                "VIPs (vip_interface)\n  10.0.0.1/32 dev director0 (tcp:10.0.0.1:80): absent, quorum met; "
                in text
            )
            del links.refuse[AddAddress]
            await trio.sleep(5.1)
            assert links.on() == {ADDRESS}
    refused = [e for e in logs if e["event"] == "vip_refused"]
    assert refused[0]["error"] == "Operation not permitted"


ADMIN = Peer(uid=0, gid=0, pid=1, may_change=True)


async def maintenance(controller: Controller, *mode: str) -> str:
    args = {"mode": mode[0]} if mode else {}
    response = await controller.handle(Request(command="maintenance", args=args), ADMIN)
    assert response.status == 0, response
    return response.stdout


async def test_maintenance_removes_the_vip_restores_it_and_survives_a_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    links, network, backend = Links(), Network(), MemoryBackend()
    path = tmp_path / "state.json"
    director = director_for(service(), links, network, path, backend)
    async with running(director):
        await trio.sleep(1.1)
        assert links.on() == {ADDRESS}
        controller = Controller(director)
        assert await maintenance(controller, "on") == "maintenance on: 1 VIPs removed\n"
        assert links.on() == set()
        assert statefile.load(path).maintenance is True
        assert await maintenance(controller) == "maintenance: on\n"
        status = await controller.handle(Request(command="status", args={}), ADMIN)
        assert status.stdout.startswith("maintenance: on")
        assert isinstance(status.data, dict) and status.data["maintenance"] is True
        assert status.data["vips"][0]["reason"] == "maintenance"  # type: ignore[index]
        await trio.sleep(6)
        assert links.on() == set()  # kept off while on
    await director.stop()

    second = director_for(service(), links, network, path, backend)
    assert second.vips.maintenance is True
    async with running(second):
        await trio.sleep(2.1)
        assert links.on() == set()
        controller = Controller(second)
        assert await maintenance(controller, "off") == "maintenance off: 1 VIPs added\n"
        assert links.on() == {ADDRESS}
        assert statefile.load(path).maintenance is False


async def test_maintenance_asks_for_on_or_off_and_reading_it_needs_no_rights(
    autojump_clock: trio.testing.MockClock,
) -> None:
    director = director_for(service(), Links(), Network())
    controller = Controller(director)
    reader = Peer(uid=1000, gid=1000, pid=2, may_change=False)
    response = await controller.handle(Request(command="maintenance", args={}), reader)
    assert (response.status, response.stdout) == (0, "maintenance: off\n")
    response = await controller.handle(Request(command="maintenance", args={"mode": "on"}), reader)
    assert response.status == 255
    response = await controller.handle(Request(command="maintenance", args={"mode": "yes"}), ADMIN)
    assert response.status == 2 and "expected" in response.stderr


def test_status_data_has_vips_only_when_there_are_any() -> None:
    assert status_data(()) == {"services": []}
    assert status_data((), maintenance=False) == {"services": [], "maintenance": False}


def test_the_state_file_keeps_owned_vips_and_maintenance() -> None:
    six = Vip("director0", ip_address("2001:db8::1"))
    text = statefile.encode(EMPTY, vips={VIP, six}, maintenance=True)
    saved = statefile.decode(text)
    assert saved.vips == {VIP, six} and saved.maintenance is True
    assert six.prefixlen == 128 and VIP.prefixlen == 32
    bare = statefile.decode(statefile.encode(EMPTY))
    assert bare.vips == set() and bare.maintenance is False


def test_a_bad_vip_record_in_the_state_file_is_named() -> None:
    text = statefile.encode(EMPTY, vips={VIP}).replace('"director0"', '"a/b"')
    with pytest.raises(statefile.StateFileError, match=r"owned_vips\[0\].interface"):
        statefile.decode(text)


async def test_flush_on_stop_removes_the_owned_vips_only(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    links = Links()
    hand = ip_address("192.0.2.9")
    links.on().add(hand)
    path = tmp_path / "state.json"
    text = service().replace(
        "reconcile_interval = 5.0", "reconcile_interval = 5.0\nflush_on_stop = true"
    )
    director = director_for(text, links, Network(), path)
    async with running(director):
        await trio.sleep(1.1)
        assert links.on() == {ADDRESS, hand}
    await director.stop()
    assert links.on() == {hand}
    assert statefile.load(path).vips == set()


async def test_stop_leaves_the_vips_in_place_by_default(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links = Links()
    director = director_for(service(), links, Network())
    async with running(director):
        await trio.sleep(1.1)
    await director.stop()
    assert links.on() == {ADDRESS}


async def test_a_reload_says_what_it_did_to_the_vips(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from director.control.handler import reload_data, reload_text

    links = Links()
    director = director_for(service(), links, Network())
    async with running(director):
        await trio.sleep(1.1)
        config = parse_config("[daemon]\nreconcile_interval = 5.0\n", "t.toml", NO_MODULES)
        summary = await director.exclusive(lambda: director.reload(config))
    removal = {
        "what": "vip",
        "op": "remove_address",
        "address": f"{ADDRESS}/32",
        "dev": "director0",
    }
    assert summary.others == (removal,)
    assert f"> vip remove_address address={ADDRESS}/32 dev=director0\n" in reload_text(summary)
    assert reload_data(summary)["others"] == [removal]


def test_unchecked_servers_with_initial_up_count_for_the_quorum() -> None:
    vs = vs_of(service(quorum=2, servers=3).replace("fall = 1 }", 'fall = 1, initial = "up" }'))
    assert vs.real_servers[0].check.timing.initial == "up"
    assert receives_traffic(vs, views(vs, UP, UNKNOWN, DOWN), maintenance=False) is True
    assert receives_traffic(vs, {}, maintenance=False) is True
    assert receives_traffic(vs, views(vs, DOWN, UNKNOWN, DOWN), maintenance=False) is False
