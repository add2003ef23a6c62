"""director.rtnl's translation between VipOperations and pyroute2's IPRoute
calls, and of pyroute2's NetlinkError into AddressError, over a fake
IPRoute (what the kernel answers is in tests/kernel/test_vips.py)."""

from __future__ import annotations

import errno
from ipaddress import ip_address
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from director.rtnl import IFA_F_NODAD, Rtnl
from director.vips import AddAddress, AddressError, CreateInterface, RemoveAddress, Vip


class Message(dict[str, Any]):
    """An rtnetlink message as pyroute2 gives it: header fields by key,
    attributes through get_attr."""

    def __init__(self, attrs: dict[str, object], **fields: object) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> object:
        return self.attrs.get(name)


class FakeIPRoute:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, object]]] = []
        self.refuse: int | None = None
        self.closed = False

    def get_links(self) -> tuple[Message, ...]:
        return (
            Message({"IFLA_IFNAME": "lo"}, index=1),
            Message({"IFLA_IFNAME": "director0"}, index=7),
        )

    def get_addr(self) -> tuple[Message, ...]:
        return (
            Message({"IFA_LOCAL": "127.0.0.1", "IFA_ADDRESS": "127.0.0.1"}, index=1),
            # point-to-point: IFA_ADDRESS is the peer's, IFA_LOCAL the address.
            Message({"IFA_LOCAL": "10.0.0.1", "IFA_ADDRESS": "10.0.0.99"}, index=7),
            Message({"IFA_ADDRESS": "2001:db8::1"}, index=7),
            Message({"IFA_ADDRESS": "2001:db8::2"}, index=42),  # a link gone meanwhile
        )

    def link_lookup(self, ifname: str) -> list[int]:
        return {"lo": [1], "director0": [7]}.get(ifname, [])

    def link(self, command: str, **kwargs: object) -> None:
        self._call("link", command, kwargs)

    def addr(self, command: str, **kwargs: object) -> None:
        self._call("addr", command, kwargs)

    def _call(self, kind: str, command: str, kwargs: dict[str, object]) -> None:
        if self.refuse is not None:
            raise NetlinkError(self.refuse)
        self.calls.append((kind, command, kwargs))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake() -> FakeIPRoute:
    return FakeIPRoute()


async def test_present_names_every_address_by_interface(fake: FakeIPRoute) -> None:
    rtnl = Rtnl(lambda: fake)  # type: ignore[arg-type, return-value]
    present = await rtnl.present()
    assert present.interfaces == {"lo", "director0"}
    assert present.addresses == {
        ip_address("127.0.0.1"): {"lo"},
        ip_address("10.0.0.1"): {"director0"},
        ip_address("2001:db8::1"): {"director0"},
    }
    rtnl.close()
    assert fake.closed


async def test_operations_become_ip_link_and_ip_addr_requests(fake: FakeIPRoute) -> None:
    rtnl = Rtnl(lambda: fake)  # type: ignore[arg-type, return-value]
    four = Vip("director0", ip_address("10.0.0.5"))
    six = Vip("director0", ip_address("2001:db8::5"))
    await rtnl.apply(CreateInterface("director0"))
    await rtnl.apply(AddAddress(four))
    await rtnl.apply(AddAddress(six))
    await rtnl.apply(RemoveAddress(six))
    assert fake.calls == [
        ("link", "add", {"ifname": "director0", "kind": "dummy"}),
        ("link", "set", {"index": 7, "state": "up"}),
        ("addr", "add", {"index": 7, "address": "10.0.0.5", "prefixlen": 32, "flags": 0}),
        (
            "addr",
            "add",
            {"index": 7, "address": "2001:db8::5", "prefixlen": 128, "flags": IFA_F_NODAD},
        ),
        ("addr", "del", {"index": 7, "address": "2001:db8::5", "prefixlen": 128, "flags": 0}),
    ]


async def test_the_kernels_refusal_comes_back_in_its_words(fake: FakeIPRoute) -> None:
    rtnl = Rtnl(lambda: fake)  # type: ignore[arg-type, return-value]
    fake.refuse = errno.EPERM
    with pytest.raises(AddressError) as info:
        await rtnl.apply(AddAddress(Vip("director0", ip_address("10.0.0.5"))))
    assert (str(info.value), info.value.errno) == ("Operation not permitted", errno.EPERM)


async def test_a_missing_interface_is_enodev_with_ips_words(fake: FakeIPRoute) -> None:
    rtnl = Rtnl(lambda: fake)  # type: ignore[arg-type, return-value]
    with pytest.raises(AddressError) as info:
        await rtnl.apply(AddAddress(Vip("nosuch0", ip_address("10.0.0.5"))))
    assert (str(info.value), info.value.errno) == ('Cannot find device "nosuch0"', errno.ENODEV)
    assert fake.calls == []
