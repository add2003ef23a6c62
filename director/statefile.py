"""The daemon's state on disk: the runtime layer (the operator's changes over
the config) and the services the daemon owns in the kernel, as versioned
JSON written atomically.

The owned services are what lets a restart delete a service the config no
longer has: without them, a service dropped from the config between two runs
would stay in the kernel, unchecked, for good. The owned sync daemons
("sync_daemons", director.sync: each with the settings last asked of the
kernel) do the same for [ipvs.sync]; an optional key of version 2, so that
a daemon of an earlier release still reads the file (and drops the key).
The owned VIPs ("owned_vips", director.vips: interface and address) and the
maintenance flag ("maintenance") are optional keys of version 2 too.

`encode`/`decode` are pure; `save` writes a temporary file in the same
directory, fsyncs it, renames it over the state file and fsyncs the
directory, so a crash leaves either the old state or the new one. `load`
never raises for a bad file: a corrupt state file is moved aside to
`<path>.corrupt` and the daemon starts from the config file alone.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from ipaddress import ip_address
from json.encoder import encode_basestring_ascii as _string
from pathlib import Path
from typing import Generic, TypeVar

from director.config import RealServerId
from director.desired import AdminState
from director.ipvs.facts import (
    FWMARK_MAX,
    INT_MAX,
    PERSISTENCE_TIMEOUT_MAX,
    THRESHOLD_MAX,
    U32_MAX,
    persistence_engine_name_problem,
    scheduler_name_problem,
)
from director.ipvs.model import (
    AF_INET,
    AF_INET6,
    TIMEOUT_ANY_KERNEL,
    Destination,
    Forward,
    IPAddress,
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
from director.oserror import strerror
from director.reconcile import service_sort_key
from director.runtime import EMPTY, RuntimeLayer
from director.sync import interface_problem
from director.vips import Vip, vip_sort_key

FORMAT_VERSION = 2  # 2 added "owned_services"; version 1 files still load
_FAMILIES: dict[int, str] = {AF_INET: "ipv4", AF_INET6: "ipv6"}
_SYNC_STATES: dict[SyncState, str] = {SyncState.MASTER: "master", SyncState.BACKUP: "backup"}
T = TypeVar("T")


class StateFileError(Exception):
    """The state file cannot be read back; the message names where."""


# -- encoding -------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    """The state file's content (`decode`): the runtime layer, what the daemon owns
    in the kernel (services, sync daemons, VIPs), and the maintenance flag."""

    layer: RuntimeLayer = EMPTY
    owned: frozenset[ServiceKey] = frozenset()  # services the daemon made or manages
    sync: Mapping[SyncState, SyncDaemon] = field(default_factory=dict)  # owned sync daemons
    vips: frozenset[Vip] = frozenset()  # addresses the daemon added (director.vips)
    maintenance: bool = False  # directorctl maintenance on


def encode(
    layer: RuntimeLayer,
    owned: Set[ServiceKey] = frozenset(),
    sync: Mapping[SyncState, SyncDaemon] | None = None,
    *,
    vips: Set[Vip] = frozenset(),
    maintenance: bool = False,
) -> str:
    """The file's text: JSON with one record per line, readable. Each
    record is written by json's C encoder, the parts that thousands of
    records share (a service's key, a real server's settings) once each
    (`indent=` would make json use its Python encoder, and json.dumps of
    each of 4,000 real servers' records was 30 ms of a -R's commit)."""
    return _layout(
        {
            "version": json.dumps(FORMAT_VERSION),
            "owned_services": _OWNED.texts(owned),
            "sync_daemons": [json.dumps(_sync_daemon(d)) for _, d in sorted((sync or {}).items())],
            "owned_vips": [
                json.dumps({"interface": v.interface, "address": str(v.address)})
                for v in sorted(vips, key=vip_sort_key)
            ],
            "maintenance": json.dumps(maintenance),
            "services": _SERVICES.texts(layer.services),
            "deleted_services": [_key_text(k) for k in sorted(layer.deleted_services, key=str)],
            "real_servers": _REAL_SERVERS.texts(layer.real_servers),
            "deleted_real_servers": [
                json.dumps(_rid(r)) for r in sorted(layer.deleted_real_servers, key=str)
            ],
            "admin": [
                json.dumps({**_rid(rid), "state": state.value})
                for rid, state in layer.admin.items()
            ],
            "timeouts": json.dumps(
                None
                if layer.timeouts is None
                else {
                    "tcp": layer.timeouts.tcp,
                    "tcp_fin": layer.timeouts.tcp_fin,
                    "udp": layer.timeouts.udp,
                }
            ),
        }
    )


K = TypeVar("K")
V = TypeVar("V")


class _Records(Generic[K, V]):
    """The records of one field of the last encode, by key, each with the
    value it was made of: the next encode makes again only the records of
    values it has not seen (a layer keeps its objects from one save to the
    next, so a change to one real server of thousands encodes one record).
    A record's text depends only on its key and value. Safe from several
    threads: each encode reads one memo and puts a whole new one."""

    def __init__(self, record: Callable[[K, V], str]) -> None:
        self._record = record
        self._memo: dict[K, tuple[V, str]] = {}

    def texts(self, items: Mapping[K, V]) -> list[str]:
        before, memo, texts = self._memo, {}, []
        record = self._record
        for key, value in items.items():
            entry = before.get(key)
            if entry is None or entry[0] is not value:
                entry = (value, record(key, value))
            memo[key] = entry
            texts.append(entry[1])
        self._memo = memo
        return texts


class _Owned:
    """The owned services' records, in service_sort_key's order, kept for
    the next encode of the same set."""

    def __init__(self) -> None:
        self._memo: tuple[frozenset[ServiceKey], list[str]] = (frozenset(), [])

    def texts(self, owned: Set[ServiceKey]) -> list[str]:
        keys, texts = self._memo
        if owned != keys:
            keys = frozenset(owned)
            texts = [_key_text(k) for k in sorted(keys, key=service_sort_key)]
            self._memo = (keys, texts)
        return texts.copy()


def _layout(fields: Mapping[str, str | list[str]]) -> str:
    """The document from each field's JSON text, or its records' texts: a
    list of them one per line."""
    parts = []
    for name, value in fields.items():
        if isinstance(value, str):
            parts.append(f' "{name}": {value}')
        elif value:
            records = ",\n  ".join(value)
            parts.append(f' "{name}": [\n  {records}\n ]')
        else:
            parts.append(f' "{name}": []')
    return "{\n" + ",\n".join(parts) + "\n}\n"


@functools.lru_cache(maxsize=1024)
def _key(key: ServiceKey) -> dict[str, object]:
    # Cached: every real server's record names its service; the dicts are
    # only ever read (by json).
    return {
        "family": _FAMILIES[key.family],
        "protocol": key.protocol.name.lower() if key.protocol is not None else None,
        "address": str(key.address) if key.address is not None else None,
        "port": key.port,
        "fwmark": key.fwmark,
    }


@functools.lru_cache(maxsize=1024)
def _key_text(key: ServiceKey) -> str:
    return json.dumps(_key(key))


def _service_text(service: Service) -> str:
    settings = _service_settings(
        service.scheduler, service.flags, service.timeout, service.netmask, service.pe_name
    )
    return f'{{"key": {_key_text(service.key)}, {settings}}}'


@functools.lru_cache(maxsize=256, typed=True)
def _service_settings(
    scheduler: str, flags: ServiceFlags, timeout: int, netmask: int, pe_name: str
) -> str:
    """A service record's fields after its key, as JSON text without the
    braces: shared by the services with the same settings."""
    text = json.dumps(
        {
            "scheduler": scheduler,
            "flags": int(flags & ~ServiceFlags.HASHED),
            "timeout": timeout,
            "netmask": netmask,
            "pe_name": pe_name,
        }
    )
    return text[1:-1]


def _real_server_text(rid: RealServerId, d: Destination) -> str:
    settings = _destination_settings(
        d.forward, d.weight, d.u_threshold, d.l_threshold, d.tun_type, d.tun_port, d.tun_flags
    )
    port = rid.port
    return (
        f'{{"service": {_key_text(rid.service)}, "address": {_string(str(rid.address))},'
        f' "port": {port if type(port) is int else json.dumps(port)}, {settings}}}'
    )


_OWNED = _Owned()
_SERVICES: _Records[ServiceKey, Service] = _Records(lambda _, service: _service_text(service))
_REAL_SERVERS: _Records[RealServerId, Destination] = _Records(_real_server_text)


@functools.lru_cache(maxsize=256, typed=True)
def _destination_settings(
    forward: Forward,
    weight: int,
    u_threshold: int,
    l_threshold: int,
    tun_type: TunnelType,
    tun_port: int,
    tun_flags: TunnelFlags,
) -> str:
    """A real server record's fields after its port, as JSON text without
    the braces: shared by the real servers with the same settings."""
    text = json.dumps(
        {
            "forward": forward.name.lower(),
            "weight": weight,
            "u_threshold": u_threshold,
            "l_threshold": l_threshold,
            "tun_type": tun_type.name.lower(),
            "tun_port": tun_port,
            "tun_flags": int(tun_flags),
        }
    )
    return text[1:-1]


def _sync_daemon(daemon: SyncDaemon) -> dict[str, object]:
    return {
        "state": _SYNC_STATES[daemon.state],
        "mcast_ifn": daemon.mcast_ifn,
        "syncid": daemon.syncid,
        "sync_maxlen": daemon.sync_maxlen,
        "mcast_group": None if daemon.mcast_group is None else str(daemon.mcast_group),
        "mcast_port": daemon.mcast_port,
        "mcast_ttl": daemon.mcast_ttl,
    }


def _rid(rid: RealServerId) -> dict[str, object]:
    return {"service": _key(rid.service), "address": str(rid.address), "port": rid.port}


# -- decoding -------------------------------------------------------------------


@dataclass(frozen=True)
class _Reader:
    """A JSON object at a path, with typed getters that fail naming it."""

    data: Mapping[str, object]
    path: str

    def get(self, key: str, kind: type[T], *, optional: bool = False) -> T:
        if key not in self.data:
            if optional:
                return None  # type: ignore[return-value]
            raise StateFileError(f"{self.path}.{key}: missing")
        value = self.data[key]
        if optional and value is None:
            return None  # type: ignore[return-value]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise StateFileError(
                f"{self.path}.{key}: expected {_JSON_TYPES[kind]}, got {_json_type(value)}"
            )
        if isinstance(value, str) and not _encodes(value):
            # JSON's \ud800 decodes to a lone surrogate, which no name,
            # address or netlink attribute can carry (UTF-8 refuses it).
            raise StateFileError(f"{self.path}.{key}: {json.dumps(value)} holds a lone surrogate")
        return value

    def number(self, key: str, high: int = U32_MAX) -> int:
        """An integer in 0..high: the range its netlink attribute carries
        (director.ipvs.facts), so a saved value can never be one the
        encoder refuses at the next pass."""
        value = self.get(key, int)
        if not 0 <= value <= high:
            raise StateFileError(f"{self.path}.{key}: {value} is not in 0..{high}")
        return value

    def choice(self, key: str, options: Mapping[str, T]) -> T:
        value = self.get(key, str)
        if value not in options:
            choices = ", ".join(json.dumps(option) for option in sorted(options))
            raise StateFileError(f"{self.path}.{key}: {json.dumps(value)} is not one of {choices}")
        return options[value]

    def name(
        self, key: str, problem_of: Callable[[str], str | None], *, empty: bool = False
    ) -> str:
        """A scheduler's or persistence engine's name: one the encoder can send
        (director.ipvs.facts), "" too with `empty`."""
        value = self.get(key, str)
        problem = None if empty and value == "" else problem_of(value)
        if problem is not None:
            raise StateFileError(f"{self.path}.{key}: {json.dumps(value)}: {problem}")
        return value

    def address(self, key: str) -> IPAddress:
        text = self.get(key, str)
        try:
            return ip_address(text)
        except ValueError:
            raise StateFileError(
                f"{self.path}.{key}: {json.dumps(text)} is not an IP address"
            ) from None

    def objects(self, key: str) -> list[_Reader]:
        items = self.get(key, list)
        result = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise StateFileError(
                    f"{self.path}.{key}[{i}]: expected an object, got {_json_type(item)}"
                )
            result.append(_Reader(item, f"{self.path}.{key}[{i}]"))
        return result

    def reader(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict), f"{self.path}.{key}")

    def wrap(self, build: Callable[[], T]) -> T:
        try:
            return build()
        except (ValueError, TypeError) as error:
            raise StateFileError(f"{self.path}: {error}") from None


# JSON's names of its types: the file is JSON, its errors say what JSON has.
_JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
}


def _json_type(value: object) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def decode(text: str) -> Saved:
    try:
        data = json.loads(text)
    except ValueError as error:
        if "int_max_str_digits" in str(error):  # Python's bound on a number's digits
            raise StateFileError(
                "not JSON this daemon can read: a number of over 4300 digits"
            ) from None
        raise StateFileError(f"not JSON: {error}") from None
    except RecursionError:
        raise StateFileError("not JSON this daemon can read: nested too deeply") from None
    if not isinstance(data, dict):
        raise StateFileError(f"expected a JSON object at the top, got {_json_type(data)}")
    root = _Reader(data, "state")
    version = root.get("version", int)
    if version not in (1, FORMAT_VERSION):
        raise StateFileError(f"state.version: {version} is not a supported version (1, 2)")
    owned = (
        frozenset(_read_key(r) for r in root.objects("owned_services"))
        if version >= 2
        else frozenset()
    )
    services = {s.key: s for s in (_read_service(r) for r in root.objects("services"))}
    real_servers = {_read_rid(r): _read_destination(r) for r in root.objects("real_servers")}
    admin = {
        _read_rid(r): r.choice("state", {a.value: a for a in AdminState})
        for r in root.objects("admin")
    }
    timeouts = None
    if root.get("timeouts", dict, optional=True) is not None:
        t = root.reader("timeouts")
        timeouts = Timeouts(*(t.number(k, TIMEOUT_ANY_KERNEL) for k in ("tcp", "tcp_fin", "udp")))
    layer = RuntimeLayer(
        services=services,
        deleted_services=frozenset(_read_key(r) for r in root.objects("deleted_services")),
        real_servers=real_servers,
        deleted_real_servers=frozenset(_read_rid(r) for r in root.objects("deleted_real_servers")),
        admin=admin,
        timeouts=timeouts,
    )
    sync = {}
    if version >= 2 and root.get("sync_daemons", list, optional=True) is not None:
        for r in root.objects("sync_daemons"):
            daemon = _read_sync_daemon(r)
            if daemon.state in sync:
                raise StateFileError(f"{r.path}.state: a second {r.get('state', str)} daemon")
            sync[daemon.state] = daemon
    vips = set()
    if version >= 2 and root.get("owned_vips", list, optional=True) is not None:
        vips = {_read_vip(r) for r in root.objects("owned_vips")}
    maintenance = version >= 2 and bool(root.get("maintenance", bool, optional=True))
    return Saved(layer, owned, sync, frozenset(vips), maintenance)


def _read_vip(r: _Reader) -> Vip:
    name = r.get("interface", str)
    if interface_problem(name) is not None:
        raise StateFileError(f"{r.path}.interface: {json.dumps(name)} is not an interface name")
    return Vip(name, r.address("address"))


def _read_key(r: _Reader) -> ServiceKey:
    family = r.choice("family", {v: k for k, v in _FAMILIES.items()})
    fwmark = r.number("fwmark", FWMARK_MAX)
    if fwmark:
        return ServiceKey.mark(fwmark, family)
    protocol = r.choice("protocol", {p.name.lower(): p for p in Protocol})
    address = r.address("address")
    port = _port(r, "port")
    if address.version != (6 if family == AF_INET6 else 4):
        raise StateFileError(f"{r.path}.address: not an {_FAMILIES[family]} address")
    return ServiceKey.inet(protocol, address, port)


def _read_sync_daemon(r: _Reader) -> SyncDaemon:
    """Ranges as daemon_nest encodes them (director.ipvs.genl), so that a
    saved daemon is never one the encoder refuses."""
    group = None if r.get("mcast_group", str, optional=True) is None else r.address("mcast_group")
    name = r.get("mcast_ifn", str)
    if interface_problem(name) is not None:
        raise StateFileError(f"{r.path}.mcast_ifn: {json.dumps(name)} is not an interface name")
    return SyncDaemon(
        r.choice("state", {v: k for k, v in _SYNC_STATES.items()}),
        name,
        r.number("syncid", 255),
        r.number("sync_maxlen", 0xFFFF),
        group,
        _port(r, "mcast_port"),
        r.number("mcast_ttl", 255),
    )


def _port(r: _Reader, key: str) -> int:
    port = r.get(key, int)
    if not 0 <= port <= 65535:
        raise StateFileError(f"{r.path}.{key}: {port} is not a port")
    return port


def _read_service(r: _Reader) -> Service:
    key = _read_key(r.reader("key"))
    return r.wrap(
        lambda: Service(
            key,
            r.name("scheduler", scheduler_name_problem),
            ServiceFlags(r.number("flags")),
            r.number("timeout", PERSISTENCE_TIMEOUT_MAX),
            r.number("netmask"),
            r.name("pe_name", persistence_engine_name_problem, empty=True),
        )
    )


def _read_rid(r: _Reader) -> RealServerId:
    service = _read_key(r.reader("service"))
    return RealServerId(service, r.address("address"), _port(r, "port"))


def _read_destination(r: _Reader) -> Destination:
    return r.wrap(
        lambda: Destination(
            r.address("address"),
            _port(r, "port"),
            r.choice("forward", {f.name.lower(): f for f in Forward}),
            r.number("weight", INT_MAX),
            r.number("u_threshold", THRESHOLD_MAX),
            r.number("l_threshold", THRESHOLD_MAX),
            r.choice("tun_type", {t.name.lower(): t for t in TunnelType}),
            _port(r, "tun_port"),
            TunnelFlags(r.number("tun_flags", 0xFFFF)),
        )
    )


# -- files ------------------------------------------------------------------------


def save(
    path: str | Path,
    layer: RuntimeLayer,
    owned: Set[ServiceKey] = frozenset(),
    sync: Mapping[SyncState, SyncDaemon] | None = None,
    *,
    vips: Set[Vip] = frozenset(),
    maintenance: bool = False,
) -> None:
    """Replace the state file atomically (blocking: run it in a thread).
    Raises OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(encode(layer, owned, sync, vips=vips, maintenance=maintenance))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass(frozen=True)
class Loaded:
    """What `load` read of the state file: the saved state, or the empty one with
    `problem` saying why the file was not used (and `moved_to` where a corrupt
    one was kept)."""

    layer: RuntimeLayer
    owned: frozenset[ServiceKey] = frozenset()
    sync: Mapping[SyncState, SyncDaemon] = field(default_factory=dict)  # owned sync daemons
    vips: frozenset[Vip] = frozenset()  # owned VIPs
    maintenance: bool = False
    problem: str | None = None  # why the file was not used; None when it was (or is absent)
    moved_to: Path | None = None  # where a corrupt file was kept


# Older files set aside are kept as `<path>.corrupt.1` (the one before) up to
# `.corrupt.3`, so that a second bad start does not destroy the first's evidence.
KEPT_CORRUPT = 3


def load(path: str | Path) -> Loaded:
    """The saved layer; the empty one when there is no file. A file that
    cannot be decoded is renamed to `<path>.corrupt` and reported; one
    already there moves to `<path>.corrupt.1`, and so on up to
    `.corrupt.{KEPT_CORRUPT}`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Loaded(EMPTY)
    except OSError as error:
        return _set_aside(path, f"cannot read: {strerror(error)}")
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        return _set_aside(
            path, f"not UTF-8 (as JSON must be): byte 0x{byte:02x} at offset {error.start}"
        )
    try:
        saved = decode(text)
    except StateFileError as error:
        return _set_aside(path, str(error))
    return Loaded(saved.layer, saved.owned, saved.sync, saved.vips, saved.maintenance)


def _set_aside(path: Path, problem: str) -> Loaded:
    corrupt = path.with_name(path.name + ".corrupt")
    older = [
        corrupt,
        *(corrupt.with_name(f"{corrupt.name}.{n}") for n in range(1, KEPT_CORRUPT + 1)),
    ]
    for source, target in reversed(list(itertools.pairwise(older))):
        with contextlib.suppress(OSError):  # missing, or cannot move: the newest matters most
            os.replace(source, target)
    try:
        os.replace(path, corrupt)
    except OSError as error:
        why = strerror(error)
        return Loaded(EMPTY, problem=f"{problem} (and it could not be moved aside: {why})")
    return Loaded(EMPTY, problem=problem, moved_to=corrupt)
