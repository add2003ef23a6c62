"""The VIPs' seam to the kernel: rtnetlink through pyroute2's IPRoute.

pyroute2 does rtnetlink (addresses, links) only; the IPVS family stays on
the project's own codec (director.ipvs). IPRoute is synchronous: every call
runs in a worker thread, one at a time (a CapacityLimiter of 1), through one
socket opened on first use. Its NetlinkError becomes
director.vips.AddressError with the kernel's errno and words (strerror, as
`ip` prints them: "File exists", "Operation not permitted").
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from director.ipvs.model import IPAddress
from director.oserror import strerror
from director.vips import (
    AddAddress,
    AddressError,
    CreateInterface,
    Present,
    RemoveAddress,
    VipOperation,
)

if TYPE_CHECKING:
    from pyroute2 import IPRoute

T = TypeVar("T")
# An IPv6 VIP skips duplicate address detection (IFA_F_NODAD, <linux/if_addr.h>):
# a VIP announced by several directors on one link must not end "dadfailed".
IFA_F_NODAD = 0x02


class Rtnl:
    """director.vips.AddressBackend over pyroute2's IPRoute."""

    def __init__(self, factory: Callable[[], IPRoute] | None = None) -> None:
        """`factory` makes the IPRoute (tests: a fake); by default
        pyroute2's, imported at first use (it takes 0.1-0.2 s)."""
        self._ipr: IPRoute | None = None
        self._factory = factory
        self._limiter = trio.CapacityLimiter(1)

    async def present(self) -> Present:
        return await self._run(self._present)

    async def apply(self, op: VipOperation) -> None:
        await self._run(lambda: self._apply(op))

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(self._translated, fn, limiter=self._limiter)

    def _translated(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except AddressError:
            raise
        except OSError as error:
            raise AddressError(strerror(error), error.errno) from None
        except Exception as error:
            # pyroute2's NetlinkError (not an OSError) carries the kernel's errno.
            code = getattr(error, "code", None)
            if not isinstance(code, int):
                raise
            raise AddressError(os.strerror(code), code) from None

    def _route(self) -> IPRoute:
        if self._ipr is None:
            if self._factory is None:
                from pyroute2 import IPRoute

                self._factory = IPRoute
            self._ipr = self._factory()
        return self._ipr

    def _present(self) -> Present:
        ipr = self._route()
        names: dict[int, str] = {}
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if isinstance(name, str):
                names[link["index"]] = name
        addresses: dict[IPAddress, set[str]] = {}
        for message in ipr.get_addr():
            # IFA_LOCAL is an IPv4 address's own (IFA_ADDRESS is the peer's
            # on a point-to-point link); IPv6 has IFA_ADDRESS only.
            text = message.get_attr("IFA_LOCAL") or message.get_attr("IFA_ADDRESS")
            name = names.get(message["index"])
            if not isinstance(text, str) or name is None:
                continue
            addresses.setdefault(ip_address(text), set()).add(name)
        return Present(frozenset(names.values()), {a: frozenset(n) for a, n in addresses.items()})

    def _apply(self, op: VipOperation) -> None:
        ipr = self._route()
        if isinstance(op, CreateInterface):
            ipr.link("add", ifname=op.name, kind="dummy")
            ipr.link("set", index=self._index(ipr, op.name), state="up")
            return
        vip = op.vip
        index = self._index(ipr, vip.interface)
        command = "add" if isinstance(op, AddAddress) else "del"
        assert isinstance(op, AddAddress | RemoveAddress)
        flags = IFA_F_NODAD if vip.address.version == 6 and command == "add" else 0
        ipr.addr(
            command, index=index, address=str(vip.address), prefixlen=vip.prefixlen, flags=flags
        )

    @staticmethod
    def _index(ipr: Any, name: str) -> int:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise AddressError(f'Cannot find device "{name}"', errno.ENODEV)
        return int(found[0])
