"""Destination replies (issue 8): a reply laid out as the kernel writes it
(ip_vs_genl_fill_dest) is read in one unpack, any other by the attribute
walk, with the same result; a read without counters decodes none of them,
and the reconcile passes' reads ask for none."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import astuple, replace
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_kernel_replies import FAMILY, done, scripted

from director.ipvs import genl
from director.ipvs.errors import KernelReplyError, UnrepresentableEntry
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import (
    AF_INET,
    AF_INET6,
    Destination,
    DestinationEntry,
    Forward,
    Protocol,
    Service,
    ServiceEntry,
    ServiceKey,
    Stats,
    TunnelFlags,
    TunnelType,
)
from director.kernel import KernelTable

V4 = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
DEST = genl.CMD_ATTR_DEST
U16, U32, U64 = 2**16 - 1, 2**32 - 1, 2**64 - 1

# How a reply is laid out: as Linux 5.3 on writes it, as 4.1 to 5.1 do, with
# 32-bit stats only (before 4.1), with an attribute a newer kernel might add
# at the end, with a padded STATS64 nest (architectures that align u64s),
# and in another order (the walk's).
LAYOUTS = ["kernel", "before tunnels", "stats32 only", "newer", "padded stats", "shuffled"]
FAST = {"kernel", "before tunnels", "stats32 only", "newer", "padded stats"}


@st.composite
def entries(draw: st.DrawFn) -> DestinationEntry:
    address = draw(
        st.one_of(
            st.integers(0, 2**32 - 1).map(IPv4Address),
            st.integers(0, 2**128 - 1).map(IPv6Address),
        )
    )
    destination = Destination(
        address,
        draw(st.integers(0, U16)),
        Forward(draw(st.integers(0, 7))),  # 4..7: unknown methods
        draw(st.integers(0, U32)),
        draw(st.integers(0, U32)),
        draw(st.integers(0, U32)),
        TunnelType(draw(st.integers(0, 255))),
        draw(st.integers(0, U16)),
        TunnelFlags(draw(st.integers(0, U16))),
    )
    return DestinationEntry(
        destination,
        draw(st.integers(0, U32)),
        draw(st.integers(0, U32)),
        draw(st.integers(0, U32)),
        Stats(*draw(st.lists(st.integers(0, U64), min_size=10, max_size=10))),
    )


def nest_of(items: list[tuple[int, bytes]]) -> bytes:
    return genl.attr(genl.CMD_ATTR_DEST, b"".join(genl.attr(k, v) for k, v in items))


def laid_out(entry: DestinationEntry, layout: str, seed: int = 0) -> genl.Message:
    nest = genl.destination_reply_nest(entry, tunnels=layout != "before tunnels")
    items = list(genl.parse_attrs(genl.parse_attrs(nest)[genl.CMD_ATTR_DEST]).items())
    if layout == "stats32 only":
        items = [(k, v) for k, v in items if k != genl.DEST_ATTR_STATS64]
    elif layout == "newer":
        items.append((genl.DEST_ATTR_TUN_FLAGS + 1 + seed % 50, bytes(seed % 9)))
    elif layout == "padded stats":
        stats64 = dict(items)[genl.DEST_ATTR_STATS64]
        items[-1] = (genl.DEST_ATTR_STATS64, genl.attr(11, b"") + stats64)  # IPVS_STATS_ATTR_PAD
    elif layout == "shuffled":
        random.Random(seed).shuffle(items)
    if layout not in ("kernel", "before tunnels"):
        nest = nest_of(items)
    return genl.Message(FAMILY, genl.NLM_F_MULTI, 1, genl.genl_body(genl.CMD_NEW_DEST, nest))


def expected(entry: DestinationEntry, layout: str) -> DestinationEntry:
    """What the reply says: the tunnel settings only where it has them, the
    64-bit stats where it has them (else the 32-bit ones, truncated)."""
    d = entry.destination
    if layout == "before tunnels":
        d = Destination(d.address, d.port, d.forward, d.weight, d.u_threshold, d.l_threshold)
    stats = entry.stats
    if layout == "stats32 only":  # the byte counters (3, 4) are u64 there too
        stats = Stats(*(v if i in (3, 4) else v & U32 for i, v in enumerate(astuple(stats))))
    return DestinationEntry(d, entry.active_conns, entry.inact_conns, entry.persist_conns, stats)


@given(entries(), st.sampled_from(LAYOUTS), st.integers(0, 1000))
def test_the_fast_path_and_the_walk_read_the_same(
    entry: DestinationEntry, layout: str, seed: int
) -> None:
    message = laid_out(entry, layout, seed)
    for counters in (True, False):
        fast = genl._filled_destination(message.payload, AF_INET, counters)
        walked = genl._walked_destination(message, AF_INET, counters)
        assert (fast is not None) == (layout in FAST) or layout == "shuffled"
        assert genl.parse_destination(message, AF_INET, counters) == walked
        if fast is not None:
            assert fast == walked
    assert genl.parse_destination(message, AF_INET) == expected(entry, layout)
    bare = genl.parse_destination(message, AF_INET, counters=False)
    assert bare == DestinationEntry(expected(entry, layout).destination)


def test_the_kernel_layout_is_what_the_request_encoder_writes_plus_the_counters() -> None:
    # destination_nest's attributes are checked against pyroute2's reading
    # (test_genl_pyroute2); the reply carries every one of them unchanged.
    dest = Destination(IPv6Address("2001:db8::7"), 443, Forward.TUNNEL, 5, 10, 2, TunnelType.GUE)
    entry = DestinationEntry(dest, 1, 2, 3, Stats(*range(10)))
    request = genl.parse_attrs(genl.parse_attrs(genl.destination_nest(V4, dest))[DEST])
    reply = genl.parse_attrs(genl.parse_attrs(genl.destination_reply_nest(entry))[DEST])
    assert {k: reply[k] for k in request} == request
    assert list(reply)[:3] == [genl.DEST_ATTR_ADDR, genl.DEST_ATTR_PORT, genl.DEST_ATTR_FWD_METHOD]
    assert list(reply)[-2:] == [genl.DEST_ATTR_STATS, genl.DEST_ATTR_STATS64]


def test_a_fixed_attribute_repeated_after_the_fixed_part_takes_the_walk() -> None:
    # The walk keeps the last of two; so must the reader.
    entry = DestinationEntry(Destination(IPv4Address("10.1.1.1"), 80, weight=1))
    nest = genl.parse_attrs(genl.destination_reply_nest(entry))[genl.CMD_ATTR_DEST]
    raw = nest + genl.attr(genl.DEST_ATTR_WEIGHT, struct.pack("=I", 9))
    message = genl.Message(FAMILY, 0, 1, genl.genl_body(genl.CMD_NEW_DEST, genl.attr(DEST, raw)))
    assert genl._filled_destination(message.payload, AF_INET, True) is None
    assert genl.parse_destination(message, AF_INET).destination.weight == 9


def test_unknown_values_decode_to_the_enums_own_pseudo_members() -> None:
    dest = Destination(
        IPv4Address("10.1.1.2"),
        80,
        Forward(6),
        1,
        tun_type=TunnelType(77),
        tun_flags=TunnelFlags(0x13),
    )
    message = laid_out(DestinationEntry(dest), "kernel")
    read = genl.parse_destination(message, AF_INET).destination
    assert read == dest
    assert read.forward is Forward(6) and read.forward.name == "UNKNOWN_6"
    assert read.tun_type is TunnelType(77)
    assert type(read.tun_flags) is TunnelFlags and int(read.tun_flags) == 0x13


def test_an_unknown_address_family_is_unrepresentable_on_both_paths() -> None:
    entry = DestinationEntry(Destination(IPv4Address("10.1.1.3"), 80))
    for layout in ("kernel", "shuffled"):
        message = laid_out(entry, layout)
        payload = bytearray(message.payload)
        at = bytes(payload).index(genl.attr(genl.DEST_ATTR_ADDR_FAMILY, struct.pack("=H", AF_INET)))
        struct.pack_into("=H", payload, at + 4, 99)
        with pytest.raises(UnrepresentableEntry, match="address family 99"):
            genl.parse_destination(message._replace(payload=bytes(payload)), AF_INET)


def damaged(layout: str, how: str) -> genl.Message:
    entry = DestinationEntry(
        Destination(IPv6Address("2001:db8::9"), 53), 1, 2, 3, Stats(*range(10))
    )
    payload = bytearray(laid_out(entry, layout).payload)
    start = genl.GENL_HEADER.size + genl.NLA_HEADER.size  # of the nest's attributes
    if how == "an attribute runs past the end":
        at = bytes(payload).index(struct.pack("=HH", 124, genl.DEST_ATTR_STATS64))
        struct.pack_into("=H", payload, at, len(payload) - at + 4)
    elif how == "cut after the weight":
        del payload[start + 20 + 8 + 8 + 8 :]
        struct.pack_into("=H", payload, genl.GENL_HEADER.size, len(payload) - 4)
    elif how == "the nest runs past the end":
        del payload[-30:]
    elif how == "a short port":
        struct.pack_into("=H", payload, start + 20, 5)  # PORT: one byte
    return genl.Message(FAMILY, 0, 1, bytes(payload))


@pytest.mark.parametrize(
    ("layout", "how", "error"),
    [
        ("kernel", "an attribute runs past the end", "malformed netlink attribute at offset 208"),
        ("shuffled", "an attribute runs past the end", "malformed netlink attribute at offset"),
        ("kernel", "cut after the weight", "attribute 5 missing"),
        ("kernel", "the nest runs past the end", "malformed netlink attribute at offset 4"),
        ("shuffled", "the nest runs past the end", "malformed netlink attribute at offset 4"),
    ],
)
def test_a_malformed_reply_is_a_reply_error_naming_what_was_read(
    layout: str, how: str, error: str
) -> None:
    message = damaged(layout, how)
    assert genl._filled_destination(message.payload, AF_INET6, True) is None
    with pytest.raises(KernelReplyError, match=f"^destination reply: {error}"):
        genl.parse_destination(message, AF_INET6)


def test_a_short_attribute_in_the_fixed_part_takes_the_walk() -> None:
    message = damaged("kernel", "a short port")
    assert genl._filled_destination(message.payload, AF_INET6, True) is None
    # One byte of port: the walk reads what is there, as it always has.
    assert genl.parse_destination(message, AF_INET6) == genl._walked_destination(
        message, AF_INET6, True
    )


# --- the reads -----------------------------------------------------------------------


ENTRY = DestinationEntry(Destination(IPv4Address("10.1.1.4"), 8080), 7, 8, 9, Stats(*range(1, 11)))


def one_service_table(cmd: int, seq: int, payload: bytes) -> list[bytes]:
    if cmd == genl.CMD_GET_SERVICE:
        service = genl.parse_attrs(genl.service_nest(Service(V4, "rr")))[genl.CMD_ATTR_SERVICE]
        stats = b"".join(genl.attr(i + 1, struct.pack("=Q", i + 1)) for i in range(10))
        nest = genl.attr(genl.CMD_ATTR_SERVICE, service + genl.attr(genl.SVC_ATTR_STATS64, stats))
        body = genl.genl_body(genl.CMD_NEW_SERVICE, nest)
        return [genl.frame(FAMILY, genl.NLM_F_MULTI, seq, body), done(seq)]
    body = genl.genl_body(genl.CMD_NEW_DEST, genl.destination_reply_nest(ENTRY))
    return [genl.frame(FAMILY, genl.NLM_F_MULTI, seq, body), done(seq)]


async def test_a_read_without_counters_decodes_none() -> None:
    backend, _ = scripted(one_service_table)
    table = KernelTable(backend, threaded=False)
    [full] = await table.services()
    [bare] = await table.services(counters=False)
    assert full.destinations == (ENTRY,) and full.stats == Stats(*range(1, 11))
    assert bare.destinations == (DestinationEntry(ENTRY.destination),)
    assert bare.service == full.service and bare.stats == Stats()


async def test_other_backends_are_read_as_they_are() -> None:
    memory = MemoryBackend([ServiceEntry(Service(V4, "rr"), (ENTRY,))])
    [entry] = await KernelTable(memory, threaded=False).services(counters=False)
    assert entry.destinations == (ENTRY,)


def test_a_v6_destination_of_a_v4_service_reads_its_own_family() -> None:
    entry = DestinationEntry(Destination(IPv6Address("2001:db8::5"), 80))
    assert genl.parse_destination(laid_out(entry, "kernel"), AF_INET) == entry
    assert genl.parse_destination(laid_out(entry, "kernel"), AF_INET6) == entry


@pytest.mark.parametrize("layout", ["kernel", "shuffled"])
def test_forwarding_flags_beyond_the_method_are_dropped(layout: str) -> None:
    entry = DestinationEntry(Destination(IPv4Address("10.1.1.6"), 80, Forward.ROUTE))
    message = laid_out(entry, layout)
    method = genl.attr(genl.DEST_ATTR_FWD_METHOD, struct.pack("=I", Forward.ROUTE))
    flagged = genl.attr(genl.DEST_ATTR_FWD_METHOD, struct.pack("=I", 0x1000 | Forward.ROUTE))
    message = message._replace(payload=message.payload.replace(method, flagged))
    assert message.payload.count(flagged) == 1
    assert genl.parse_destination(message, AF_INET).destination.forward is Forward.ROUTE


# -- settled bytes: what a drift check's rotation compares instead of decoding ---------


def with_counters(entry: DestinationEntry, seed: int) -> DestinationEntry:
    return DestinationEntry(
        entry.destination, seed, seed + 1, seed + 2, Stats(*range(seed, seed + 10))
    )


@given(entries(), st.sampled_from(LAYOUTS[:-1]), st.integers(0, 1000))
def test_settled_bytes_leave_out_the_counters_and_stats(
    entry: DestinationEntry, layout: str, seed: int
) -> None:
    """Two reads of a destination whose traffic moved: equal settled bytes
    (any layout in the kernel's order: the shuffled one is another reply)."""
    first = genl.settled_bytes(laid_out(entry, layout, seed))
    assert first == genl.settled_bytes(laid_out(with_counters(entry, seed), layout, seed))


@pytest.mark.parametrize(
    "change",
    [
        {"weight": 3},
        {"u_threshold": 50},
        {"l_threshold": 5},
        {"forward": Forward.MASQ},
        {"tun_type": TunnelType.GUE, "tun_port": 6080},
        {"tun_flags": TunnelFlags.CSUM},
        {"port": 8081},
    ],
    ids=lambda change: ",".join(change),
)
def test_settled_bytes_change_with_every_setting(change: dict[str, object]) -> None:
    other = DestinationEntry(replace(ENTRY.destination, **change), 7, 8, 9, ENTRY.stats)
    assert genl.settled_bytes(laid_out(ENTRY, "kernel")) != genl.settled_bytes(
        laid_out(other, "kernel")
    )


def test_a_malformed_attribute_in_settled_bytes_is_a_reply_error() -> None:
    message = laid_out(ENTRY, "kernel")
    broken = message._replace(payload=message.payload[:-3])
    with pytest.raises(KernelReplyError, match="malformed netlink attribute"):
        genl.settled_bytes(broken)


def moving_table(
    scheduler: str = "rr", u_threshold: int = 0
) -> Callable[[int, int, bytes], list[bytes]]:
    """One service whose stats and connection counts move at every read."""
    reads = iter(range(1, 1000))

    def answer(cmd: int, seq: int, payload: bytes) -> list[bytes]:
        n = next(reads)
        if cmd == genl.CMD_GET_SERVICE:
            service = genl.parse_attrs(genl.service_nest(Service(V4, scheduler)))[genl.CMD_ATTR_SERVICE]  # fmt: skip
            stats = b"".join(genl.attr(i + 1, struct.pack("=Q", n + i)) for i in range(10))
            nest = genl.attr(genl.CMD_ATTR_SERVICE, service + genl.attr(genl.SVC_ATTR_STATS64, stats))  # fmt: skip
            body = genl.genl_body(genl.CMD_NEW_SERVICE, nest)
            return [genl.frame(FAMILY, genl.NLM_F_MULTI, seq, body), done(seq)]
        dest = replace(ENTRY.destination, u_threshold=u_threshold)
        body = genl.genl_body(genl.CMD_NEW_DEST, genl.destination_reply_nest(with_counters(DestinationEntry(dest), n)))  # fmt: skip
        return [genl.frame(FAMILY, genl.NLM_F_MULTI, seq, body), done(seq)]

    return answer


def test_settled_digests_stay_while_only_traffic_moves_and_change_with_a_setting() -> None:
    backend, _ = scripted(moving_table())
    first = backend.settled_digests([V4])
    assert set(first) == {V4} and len(first[V4]) == 16
    assert backend.settled_digests([V4]) == first
    assert backend.settled_digests([]) == {}
    assert scripted(moving_table(u_threshold=50))[0].settled_digests([V4]) != first
    assert scripted(moving_table(scheduler="wlc"))[0].settled_digests([V4]) != first
