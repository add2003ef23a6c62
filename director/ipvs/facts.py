"""What the kernel's IPVS takes, in one place: the names of protocols,
schedulers and persistence engines, the bounds of its numbers, and which
addresses it refuses. Every other module imports these instead of repeating
them, and each one names its source.

Pure, except `kernel_modules`, which lists the modules of the running kernel.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Network
from pathlib import Path
from types import MappingProxyType
from typing import Final

from director.ipvs.model import IPAddress, Protocol

# -- protocols --------------------------------------------------------------------

PROTOCOL_NAMES: Final[Mapping[Protocol, str]] = MappingProxyType(
    {Protocol.TCP: "tcp", Protocol.UDP: "udp", Protocol.SCTP: "sctp"}
)
"""Lower-case names, as ipvsadm, getservbyname(3) and the config spell them."""

PROTOCOLS: Final[Mapping[str, Protocol]] = MappingProxyType(
    {name: protocol for protocol, name in PROTOCOL_NAMES.items()}
)
"""The reverse of PROTOCOL_NAMES."""

KERNEL_PROTOCOLS: Final[Mapping[str, Protocol]] = MappingProxyType(
    {name.upper(): protocol for protocol, name in PROTOCOL_NAMES.items()}
)
"""As the kernel prints them in /proc/net/ip_vs and /proc/net/ip_vs_conn
(ip_vs_proto_name() in net/netfilter/ipvs/ip_vs_core.c)."""

# -- schedulers and persistence engines ---------------------------------------------

SCHEDULERS: Final = (
    "rr",
    "wrr",
    "lc",
    "wlc",
    "lblc",
    "lblcr",
    "dh",
    "sh",
    "sed",
    "nq",
    "fo",
    "ovf",
    "mh",
    "twos",
)
"""The schedulers of mainline Linux (net/netfilter/ipvs/ip_vs_<name>.c);
`twos` only in kernels newer than 6.1 (Debian 12's lacks it), so a kernel may
lack some of them."""

NO_SCHEDULER: Final = "none"
"""ip_vs_add_service and ip_vs_edit_service (net/netfilter/ipvs/ip_vs_ctl.c)
bind no scheduler for this name instead of loading a module."""

KNOWN_SCHEDULERS: Final = (*SCHEDULERS, NO_SCHEDULER)

PERSISTENCE_ENGINES: Final = ("sip",)
"""The persistence engines of mainline Linux (ip_vs_pe_<name>.c)."""

IP_VS_SCHEDNAME_MAXLEN: Final = 16
"""include/uapi/linux/ip_vs.h, with the terminating NUL: names up to 15 bytes."""

IP_VS_PENAME_MAXLEN: Final = 32
"""include/uapi/linux/ip_vs.h, with the terminating NUL: names up to 31 bytes."""

# A module name, as request_module("ip_vs_%s") and modprobe use it.
_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+")
# Modules in net/netfilter/ipvs/ that are neither schedulers nor engines.
_NOT_SCHEDULERS = frozenset({"ftp"})  # ip_vs_ftp: an application helper
_MODULE_SUFFIX = re.compile(r"\.ko(?:\.[a-z0-9]+)?$")


@dataclass(frozen=True)
class KernelModules:
    """The IPVS schedulers and persistence engines a kernel has, as
    modules or built in (names without the ip_vs_ / ip_vs_pe_ prefix)."""

    schedulers: frozenset[str] = frozenset()
    persistence_engines: frozenset[str] = frozenset()


NO_MODULES: Final = KernelModules()


def modules_named(paths: Iterable[str]) -> KernelModules:
    """The schedulers and engines among module paths or file names such as
    'kernel/net/netfilter/ipvs/ip_vs_rr.ko' or 'ip_vs_pe_sip.ko.xz'."""
    schedulers: set[str] = set()
    engines: set[str] = set()
    for path in paths:
        name = _MODULE_SUFFIX.sub("", path.strip().rsplit("/", 1)[-1]).replace("-", "_")
        if name.startswith("ip_vs_pe_"):
            engines.add(name.removeprefix("ip_vs_pe_"))
        elif name.startswith("ip_vs_"):
            scheduler = name.removeprefix("ip_vs_")
            if scheduler not in _NOT_SCHEDULERS:
                schedulers.add(scheduler)
    return KernelModules(
        frozenset(s for s in schedulers if _MODULE_NAME.fullmatch(s)),
        frozenset(e for e in engines if _MODULE_NAME.fullmatch(e)),
    )


def kernel_modules(release: str | None = None, root: Path = Path("/lib/modules")) -> KernelModules:
    """What `<root>/<release>/` holds (release: the running kernel's by
    default): the built-in ones listed in modules.builtin and the files
    kernel/net/netfilter/ipvs/*.ko*. Blocking; never raises: what cannot
    be read counts as absent."""
    directory = root / (release or os.uname().release)
    paths: list[str] = []
    with contextlib.suppress(OSError, UnicodeDecodeError):
        paths += (directory / "modules.builtin").read_text(encoding="utf-8").splitlines()
    with contextlib.suppress(OSError):
        paths += [entry.name for entry in (directory / "kernel/net/netfilter/ipvs").iterdir()]
    return modules_named(paths)


def _name_problem(name: str, maxlen: int, constant: str, what: str) -> str | None:
    if not _MODULE_NAME.fullmatch(name):
        return f'not a {what} name (letters, digits and "_")'
    if len(name) > maxlen - 1:
        return f"longer than {maxlen - 1} characters ({constant})"
    return None


def _unknown(what: str, known: Collection[str], available: Collection[str]) -> str:
    found = " ".join(sorted(available)) if available else "none found"
    return f"unknown {what} (known: {' '.join(known)}; this kernel's modules: {found})"


def scheduler_problem(name: str, available: Collection[str] = ()) -> str | None:
    """Why the kernel would refuse the scheduler `name` (ENOENT, or EINVAL
    for a name longer than IP_VS_SCHEDNAME_MAXLEN allows); None when it is
    known or among `available` (KernelModules.schedulers)."""
    if name in KNOWN_SCHEDULERS or name in available:
        return None
    return scheduler_name_problem(name) or _unknown("scheduler", KNOWN_SCHEDULERS, available)


def scheduler_name_problem(name: str) -> str | None:
    """Why `name` cannot be a scheduler's name at all, known or not (its
    characters, IP_VS_SCHEDNAME_MAXLEN); None when it can be."""
    return _name_problem(name, IP_VS_SCHEDNAME_MAXLEN, "IP_VS_SCHEDNAME_MAXLEN", "scheduler")


def persistence_engine_name_problem(name: str) -> str | None:
    """As scheduler_name_problem, for a persistence engine (IP_VS_PENAME_MAXLEN)."""
    return _name_problem(name, IP_VS_PENAME_MAXLEN, "IP_VS_PENAME_MAXLEN", "persistence engine")


def persistence_engine_problem(name: str, available: Collection[str] = ()) -> str | None:
    """As scheduler_problem, for a persistence engine (IP_VS_PENAME_MAXLEN)."""
    if name in PERSISTENCE_ENGINES or name in available:
        return None
    problem = persistence_engine_name_problem(name)
    return problem or _unknown("persistence engine", PERSISTENCE_ENGINES, available)


# -- numbers ----------------------------------------------------------------------

PORT_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFFFFFF
INT_MAX: Final = 0x7FFFFFFF

MAX_WEIGHT: Final = 65535
"""ipvsadm(8): "The valid values of weight are 0 through to 65535". (The
kernel takes 0..INT_MAX: ip_vs_add_dest refuses a negative one with ERANGE.)"""

THRESHOLD_MAX: Final = INT_MAX
"""ipvsadm's bound for -x and -y (string_to_number(optarg, 0, INT_MAX)); the
kernel's attributes are u32, so a larger one could not be restored by
`ipvsadm -R` from `ipvsadm -S`."""

PERSISTENCE_TIMEOUT_MAX: Final = 86400 * 31
"""ipvsadm's MAX_TIMEOUT for -p, in seconds. The kernel stores the timeout
times HZ in an unsigned int (ip_vs_add_service: svc->timeout = u->timeout *
HZ), so it would wrap above U32_MAX // HZ; ipvsadm's bound is below that
for every HZ up to 1000."""

FWMARK_MAX: Final = U32_MAX
"""IPVS_SVC_ATTR_FWMARK is a u32; 0 means "not a firewall-mark service"."""

IPV6_PREFIX_RANGE: Final = range(1, 129)
"""ip_vs_add_service and ip_vs_edit_service refuse an IPv6 persistence
netmask (a prefix length) outside 1..128 with EINVAL."""

# -- addresses --------------------------------------------------------------------

_UNSPECIFIED = IPv4Address("0.0.0.0")
_BROADCAST = IPv4Address("255.255.255.255")
_LINK_LOCAL_V6 = IPv6Network("fe80::/10")
_MAPPED_V6 = IPv6Network("::ffff:0:0/96")


def unicast_problem(address: IPAddress) -> str | None:
    """Why `address` cannot be one host's address (a virtual service's, a
    real server's or a probe's); None when it can be.

    IPv4: 0.0.0.0 and 255.255.255.255 (inet_addr_type() says
    RTN_BROADCAST), 224.0.0.0/4 (RTN_MULTICAST). The rest of 0.0.0.0/8 is
    taken since Linux 5.3 made it a valid range (measured: the 6.1 kernel
    and ipvsadm take 0.1.2.3 as a real server). IPv6: :: and ff00::/8
    (ipv6_addr_type() sets no IPV6_ADDR_UNICAST)."""
    if address.version == 4:
        if address == _BROADCAST:
            return "the broadcast address, not a host's"
        if address == _UNSPECIFIED:
            return "the unspecified address, not a host's"
    elif address.is_unspecified:
        return "the unspecified address, not a host's"
    if address.is_multicast:
        return "a multicast address, not a host's"
    return None


def destination_problem(address: IPAddress) -> str | None:
    """Why the kernel refuses `address` as a real server with EINVAL
    (ip_vs_new_dest in net/netfilter/ipvs/ip_vs_ctl.c); None when it takes it.

    On top of unicast_problem: an IPv6 address that ipv6_addr_type() does
    not call unicast (IPv4-mapped ::ffff:0:0/96) or calls link-local
    (fe80::/10) is taken only when it is one of the director's own
    addresses, which is never what a real server is."""
    problem = unicast_problem(address)
    if problem is not None or address.version == 4:
        return problem
    if address in _LINK_LOCAL_V6:
        return "a link-local address: the kernel takes none as a real server unless it is local"
    if address in _MAPPED_V6:
        return (
            "an IPv4-mapped address: the kernel takes none as a real server (use the IPv4 address)"
        )
    return None
