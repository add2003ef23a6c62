"""The IPVS service table as the kernel prints it in /proc/net/ip_vs
(net/netfilter/ipvs/ip_vs_ctl.c, ip_vs_info_seq_show), parsed without I/O.

    IP Virtual Server version 1.2.1 (size=4096)
    Prot LocalAddress:Port Scheduler Flags
      -> RemoteAddress:Port Forward Weight ActiveConn InActConn
    TCP  0A010001:0050 wrr
      -> 0A020001:0050      Masq    1      0          0
    UDP  [2001:0db8:0000:0000:0000:0000:0000:0001]:0035 rr ops persistent 300 FFFFFF00
    FWM  00000007 sh
      -> [2001:0db8:0000:0000:0000:0000:0000:0002]:0000      Tunnel  1      0          0

One read gives every destination's address, port, forwarding method, weight
and connection counts, where netlink needs a dump per service. It has no
thresholds, persistent-connection counts, stats or tunnel types, and it
names a firewall-mark service without its family.
"""

from __future__ import annotations

from collections.abc import Collection
from ipaddress import IPv4Address, IPv6Address

from director.ipvs.facts import KERNEL_PROTOCOLS
from director.ipvs.model import (
    AF_INET,
    AF_INET6,
    Destination,
    DestinationEntry,
    Forward,
    IPAddress,
    ServiceKey,
)

_PROTOCOLS = KERNEL_PROTOCOLS
_FORWARDS = {
    "Masq": Forward.MASQ,
    "Local": Forward.LOCAL,
    "Tunnel": Forward.TUNNEL,
    "Route": Forward.ROUTE,
}

_FORWARD_NAMES = {forward: name for name, forward in _FORWARDS.items()}
_FORWARD_TEXT = tuple(_FORWARD_NAMES[Forward(value)] for value in range(len(_FORWARD_NAMES)))

# What a service line is known by: its ServiceKey, or ("FWM", mark) for a
# firewall-mark service, whose family the file does not show.
TableKey = ServiceKey | tuple[str, int]


def _endpoint(text: str) -> tuple[IPAddress, int]:
    """'0A000001:0050' or '[2001:0db8:...]:0050'."""
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        return IPv6Address(host[1:-1]), int(port, 16)
    return IPv4Address(int(host, 16)), int(port, 16)


def proc_destination(destination: Destination) -> str:
    """A destination's line as the file shows it, without its connection
    counts and column padding: '-> 0A020001:0050 Masq 1'."""
    address, port = destination.address, destination.port
    if isinstance(address, IPv6Address):
        endpoint = f"[{address.exploded}]:{port:04X}"
    else:
        endpoint = f"{int(address):08X}:{port:04X}"
    forward = int(destination.forward)  # (an enum member's hash is a Python call)
    name = _FORWARD_TEXT[forward] if 0 <= forward < len(_FORWARD_TEXT) else str(forward)
    return f"-> {endpoint} {name} {destination.weight}"


def _service_key(fields: list[str]) -> TableKey:
    if fields[0] == "FWM":
        return ("FWM", int(fields[1], 16))
    protocol = _PROTOCOLS.get(fields[0])
    if protocol is None:
        raise ValueError(f"unknown protocol {fields[0]!r}")
    address, port = _endpoint(fields[1])
    family = AF_INET6 if address.version == 6 else AF_INET
    return ServiceKey(family, protocol, address, port, 0)


def _destination(fields: list[str]) -> DestinationEntry:
    try:
        _, endpoint, forward_name, weight, active, inactive = fields
    except ValueError:
        raise ValueError(
            f"expected '-> ADDRESS:PORT FORWARD WEIGHT ACTIVE INACTIVE', got {fields}"
        ) from None
    forward = _FORWARDS.get(forward_name)
    if forward is None:
        raise ValueError(f"unknown forwarding method {forward_name!r}")
    address, port = _endpoint(endpoint)
    return DestinationEntry(
        Destination(address, port, forward, int(weight)), int(active), int(inactive)
    )


def parse_service_table(
    text: str, source: str = "/proc/net/ip_vs"
) -> list[tuple[TableKey, list[DestinationEntry]]]:
    """Each service's key and destinations, in the kernel's order. The
    destinations carry no thresholds, stats or tunnel type (a tunnel
    destination reads as ipip with no flags)."""
    lines = text.splitlines()
    if len(lines) < 3 or not lines[0].startswith("IP Virtual Server version"):
        raise ValueError(f"{source}: not an IPVS service table: {lines[:1]!r}")
    table: list[tuple[TableKey, list[DestinationEntry]]] = []
    for number, line in enumerate(lines[3:], start=4):
        fields = line.split()
        try:
            if not fields:
                continue
            if fields[0] != "->":
                table.append((_service_key(fields), []))
            elif table:
                table[-1][1].append(_destination(fields))
            else:
                raise ValueError("a destination before any service")
        except (ValueError, IndexError) as exc:
            raise ValueError(f"{source} line {number}: {exc}: {line!r}") from exc
    return table


def table_key(key: ServiceKey) -> TableKey:
    """What the file knows `key` by."""
    return ("FWM", key.fwmark) if key.fwmark else key


def exact_destinations(
    table: list[tuple[TableKey, list[DestinationEntry]]],
) -> dict[TableKey, list[DestinationEntry]]:
    """The services whose destinations the file gives as a plain listing or
    -S shows them. Left out: a service with a tunnel destination (the file
    has no tunnel type) and a firewall mark used in both families (the file
    cannot tell the two apart)."""
    out: dict[TableKey, list[DestinationEntry]] = {}
    ambiguous = set()
    for key, dests in table:
        if key in out:
            ambiguous.add(key)
        out[key] = dests
    return {
        key: dests
        for key, dests in out.items()
        if key not in ambiguous and all(d.destination.forward is not Forward.TUNNEL for d in dests)
    }


def digest_shows(digest: str, earlier: str, destinations: Collection[Destination]) -> bool:
    """Whether `digest`, one service's text in the table without connection
    counts (director.ipvs.netlink.table_digests, director.kernel.entry_digest),
    has the service line of `earlier` (an older digest of the same service)
    and exactly `destinations`: their addresses, ports, forwarding methods
    and weights, in any order. False for anything else, a firewall mark's
    two families in one digest included: the caller reads the service."""
    lines = digest.split("\n")
    if lines[0] != earlier.split("\n", 1)[0] or lines[-1] or len(lines) - 2 != len(destinations):
        return False
    # The lines as proc_destination writes them, their padding aside: a
    # string each, where reading each line back makes an address object
    # (a drift check under churn reads every service a pass has touched).
    if sorted(" ".join(line.split()) for line in lines[1:-1]) == sorted(
        map(proc_destination, destinations)
    ):
        return True
    want = {(d.address, d.port): (d.forward, d.weight) for d in destinations}
    for line in lines[1:-1]:
        fields = line.split()
        if len(fields) != 4 or fields[0] != "->":
            return False
        try:
            forward, weight = want.pop(_endpoint(fields[1]))
            shown = _FORWARDS.get(fields[2])
            # The kernel keeps a local address as Local whatever was asked
            # (ip_vs_ctl.c, __ip_vs_update_dest), as reconcile takes it.
            if int(fields[3]) != weight or (shown != forward and shown is not Forward.LOCAL):
                return False
        except (KeyError, ValueError):
            return False
    return not want
