"""[bgp] and [[bgp.peer]]: what director.bird tells BIRD 2 to announce, and
to whom. The ranges are BGP's (RFC 4271: hold time 0 or 3..65535 s; RFC
6793: 4-byte AS numbers) and BIRD's (multihop TTL 1..255); whatever is
written into BIRD's config file is checked here first, so that a value
BIRD would refuse is an error that names the key, not a refused
`birdc configure` at run time."""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Address, IPv6Address, ip_address

from director.config.model import (
    SUN_PATH_MAX,
    BgpPeer,
    BgpSettings,
    VirtualServer,
)
from director.config.reader import Table
from director.ipvs.model import IPAddress

AS_MAX = 2**32 - 1  # RFC 6793
ATTRIBUTE_MAX = 2**32 - 1  # MED and LOCAL_PREF are 4 octets (RFC 4271 5.1.4, 5.1.5)
HOLD_TIME_MAX = 65535
TTL_MAX = 255
PORT_MAX = 65535
CONTROL_SOCKET = "bird.ctl"  # in runtime_dir
# A command name or path as the shell would run it, and a password BIRD's
# config grammar takes between quotes: nothing that would need escaping.
_COMMAND = re.compile(r"[A-Za-z0-9_./+-]+")
_PASSWORD = re.compile(r"[\x21\x23-\x5b\x5d-\x7e ]{1,80}")


def parse_bgp(table: Table | None) -> BgpSettings | None:
    """[bgp]; None when absent or wrong (each problem reported on `table`)."""
    if table is None:
        return None
    local_as = table.integer("local_as", 1, AS_MAX)
    if "local_as" not in table:
        table.error("local_as", "required: this director's AS number")
    router_id = _address(table, "router_id")
    if router_id is not None and not isinstance(router_id, IPv4Address):
        table.error(
            "router_id", "must be an IPv4 address (a BGP identifier is 4 octets)", str(router_id)
        )
        router_id = None
    next_hop = _address(table, "next_hop")
    if next_hop is not None and (problem := _unicast_problem(next_hop)) is not None:
        table.error("next_hop", problem, str(next_hop))
        next_hop = None
    hold_time = table.integer("hold_time", 0, HOLD_TIME_MAX)
    if hold_time in (1, 2):
        table.error("hold_time", "must be 0 (no keepalives) or at least 3 seconds", hold_time)
        hold_time = None
    med = table.integer("med", 0, ATTRIBUTE_MAX)
    local_pref = table.integer("local_pref", 0, ATTRIBUTE_MAX)
    bird = _command(table, "bird", BgpSettings.bird)
    birdc = _command(table, "birdc", BgpSettings.birdc)
    runtime_dir = table.string("runtime_dir")
    if runtime_dir is None:
        runtime_dir = BgpSettings.runtime_dir
    elif not runtime_dir.startswith("/"):
        table.error("runtime_dir", "must be an absolute path", runtime_dir)
    elif len(os.fsencode(os.path.join(runtime_dir, CONTROL_SOCKET))) > SUN_PATH_MAX:
        table.error(
            "runtime_dir",
            f"too long for BIRD's control socket in it ({SUN_PATH_MAX} bytes of socket path)",
            runtime_dir,
        )
    peers = _peers(table)
    if "peer" not in table:
        table.error("peer", "required: at least one [[bgp.peer]] (address, as)")
    families = {peer.address.version for peer in peers}
    if next_hop is not None and peers and next_hop.version not in families:
        table.error("next_hop", f"no [[bgp.peer]] is IPv{next_hop.version}", str(next_hop))
    if local_pref is not None and peers and all(p.as_number != local_as for p in peers):
        table.error(
            "local_pref",
            "only iBGP peers (as = local_as) receive LOCAL_PREF, and none is: use med",
            local_pref,
        )
    table.close()
    if local_as is None or not peers:
        return None
    return BgpSettings(
        local_as=local_as,
        peers=tuple(peers),
        router_id=router_id,
        next_hop=next_hop,
        hold_time=BgpSettings.hold_time if hold_time is None else hold_time,
        med=med,
        local_pref=local_pref,
        bird=bird,
        birdc=birdc,
        runtime_dir=runtime_dir,
    )


def _peers(table: Table) -> list[BgpPeer]:
    peers: list[BgpPeer] = []
    seen: dict[IPAddress, str] = {}
    for peer_table in table.tables("peer"):
        address = _address(peer_table, "address")
        if "address" not in peer_table:
            peer_table.error("address", "required: the neighbour's IP address")
        elif address is not None and address.is_link_local:
            peer_table.error(
                "address", "a link-local neighbour needs an interface: not supported", str(address)
            )
            address = None
        elif address is not None and (problem := _unicast_problem(address)) is not None:
            peer_table.error("address", problem, str(address))
            address = None
        as_number = peer_table.integer("as", 1, AS_MAX)
        if "as" not in peer_table:
            peer_table.error("as", "required: the neighbour's AS number")
        port = peer_table.integer("port", 1, PORT_MAX)
        multihop = peer_table.integer("multihop", 1, TTL_MAX)
        password = peer_table.string("password")
        if password is not None and not _PASSWORD.fullmatch(password):
            peer_table.error(
                "password", '1 to 80 printable ASCII characters, without " or \\', "(hidden)"
            )
            password = None
        if address is not None and address in seen:
            first = seen[address]
            peer_table.problems.add(
                peer_table.where("address"),
                f"a second peer at this address (first at {first})",
                first=first,
            )
            address = None
        peer_table.close()
        if address is None or as_number is None:
            continue
        seen[address] = peer_table.path
        peers.append(BgpPeer(address, as_number, port or BgpPeer.port, multihop, password))
    return peers


def _address(table: Table, key: str) -> IPAddress | None:
    text = table.string(key)
    if text is None:
        return None
    try:
        return ip_address(text)
    except ValueError:
        table.error(key, "not an IP address", text)
        return None


def _unicast_problem(address: IPAddress) -> str | None:
    """Why BIRD would refuse `address` as a neighbour or a next hop."""
    if address.is_unspecified or address.is_multicast:
        return "not a unicast address"
    if isinstance(address, IPv6Address) and address.scope_id:
        return "a zone (%...) is not taken here"
    return None


def _command(table: Table, key: str, default: str) -> str:
    text = table.string(key)
    if text is None:
        return default
    if not _COMMAND.fullmatch(text):
        table.error(key, "expected a command name or path (letters, digits, _ . / + -)", text)
        return default
    return text


def bgp_service_problem(vs: VirtualServer, bgp: BgpSettings | None) -> str | None:
    """Why a service's `bgp = true` cannot be honoured, or None."""
    if bgp is None:
        return "needs a [bgp] section (local_as and at least one [[bgp.peer]])"
    if vs.key.address is None:
        return "a fwmark service has no address to announce"
    if isinstance(vs.key.address, IPv6Address) and vs.key.address.scope_id:
        return f"{vs.key.address} has a zone (%...): not an address to announce"
    if vs.key.address.version not in bgp.families:
        return f"no [[bgp.peer]] is IPv{vs.key.address.version} to announce {vs.key.address} to"
    return None
