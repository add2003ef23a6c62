"""The IPVS connection table as the kernel prints it in /proc/net/ip_vs_conn
(net/netfilter/ipvs/ip_vs_conn.c, ip_vs_conn_seq_show), parsed without I/O.

    Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
    TCP 0A000001 C350 0A000064 0050 0A000002 0050 ESTABLISHED     899

IPv4 addresses are 8 hex digits, IPv6 ones colon-separated; ports are 4 hex
digits; the persistence-engine columns appear only on connections that have one.
"""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address

from director.ipvs.model import Connection, IPAddress


def _address(text: str) -> IPAddress:
    if ":" in text:
        return ip_address(text)
    return IPv4Address(int(text, 16))


def parse_connection(line: str) -> Connection:
    fields = line.split()
    if len(fields) < 9:
        raise ValueError(f"expected at least 9 fields, got {len(fields)}")
    proto, caddr, cport, vaddr, vport, daddr, dport, state, expires, *pe = fields
    return Connection(
        protocol=proto,
        client=_address(caddr),
        client_port=int(cport, 16),
        virtual=_address(vaddr),
        virtual_port=int(vport, 16),
        destination=_address(daddr),
        destination_port=int(dport, 16),
        state=state,
        expires=int(expires),
        pe_name=pe[0] if pe else "",
        pe_data=" ".join(pe[1:]),
    )


def parse_connections(text: str, source: str = "/proc/net/ip_vs_conn") -> list[Connection]:
    """Every connection in the table's text (its first line is the header)."""
    out = []
    for number, line in enumerate(text.splitlines()[1:], start=2):
        if not line.strip():
            continue
        try:
            out.append(parse_connection(line))
        except ValueError as exc:
            raise ValueError(f"{source} line {number}: {exc}: {line!r}") from exc
    return out
