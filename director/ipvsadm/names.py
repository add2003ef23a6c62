"""Host and service name lookups, the only I/O ipvsadm's parser and
formatter need. The pure code takes a `Names`; NUMERIC answers nothing (as if
no name resolved), SystemNames asks the C library like ipvsadm does."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address
from typing import Protocol

from director.ipvs.model import IPAddress


class Names(Protocol):
    def host_address(self, name: str) -> IPv4Address | None:
        """gethostbyname(): the first IPv4 address of a host name."""

    def service_port(self, name: str, protocol: str) -> int | None:
        """getservbyname(); protocol is "tcp", "udp" or "sctp"."""

    def host_name(self, address: IPAddress) -> str | None:
        """gethostbyaddr()"""

    def service_name(self, port: int, protocol: str) -> str | None:
        """getservbyport()"""


class NumericNames:
    def host_address(self, name: str) -> IPv4Address | None:
        return None

    def service_port(self, name: str, protocol: str) -> int | None:
        return None

    def host_name(self, address: IPAddress) -> str | None:
        return None

    def service_name(self, port: int, protocol: str) -> str | None:
        return None


NUMERIC: Names = NumericNames()


class SystemNames:
    """Blocking lookups through the C library (/etc/hosts, DNS, /etc/services)."""

    def host_address(self, name: str) -> IPv4Address | None:
        try:
            return IPv4Address(socket.gethostbyname(name))
        except (OSError, UnicodeError, ValueError):
            return None

    def service_port(self, name: str, protocol: str) -> int | None:
        try:
            return socket.getservbyname(name, protocol)
        except (OSError, UnicodeError, ValueError):
            return None

    def host_name(self, address: IPAddress) -> str | None:
        try:
            return socket.gethostbyaddr(str(address))[0]
        except (OSError, UnicodeError, ValueError):
            return None

    def service_name(self, port: int, protocol: str) -> str | None:
        try:
            return socket.getservbyport(port, protocol)
        except (OSError, OverflowError):
            return None
