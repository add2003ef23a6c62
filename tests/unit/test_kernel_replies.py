"""Every kernel answer handled: the error tree, values from a newer kernel,
bad replies, interrupted dumps, lost acknowledgements and socket errors.

The socket-level cases drive NetlinkBackend over a scripted socket that
replays the datagrams a kernel sends (an interrupted dump cannot be provoked
on demand on a real one); what the real kernel answers is in
tests/kernel/test_kernel_answers.py.
"""

from __future__ import annotations

import contextlib
import errno
import struct
import threading
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from director.ipvs import errors, genl, netlink, ops
from director.ipvs.errors import (
    AcknowledgementsLost,
    BatchError,
    DumpInterrupted,
    InvalidOperation,
    IPVSError,
    IPVSUnavailable,
    KernelError,
    KernelReplyError,
    NoSuchDestination,
    TransientKernelError,
    UnrepresentableEntry,
)
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import (
    AF_INET,
    AF_INET6,
    TIMEOUT_MAX,
    Destination,
    Forward,
    Protocol,
    Service,
    ServiceEntry,
    ServiceFlags,
    ServiceKey,
    Timeouts,
    TunnelFlags,
)
from director.ipvs.netlink import NetlinkBackend
from director.kernel import INLINE_OPERATIONS, READ_ATTEMPTS, KernelTable

FAMILY = 0x20
V4 = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
V6 = ServiceKey.inet(Protocol.UDP, "2001:db8::1", 53)


# --- the tree -----------------------------------------------------------------


def test_one_root_for_everything_the_seam_raises() -> None:
    for cls in (
        IPVSError,
        IPVSUnavailable,
        errors.ServiceExists,
        errors.NoSuchService,
        errors.DestinationExists,
        NoSuchDestination,
        errors.SchedulerNotFound,
        errors.DaemonError,
        TransientKernelError,
        DumpInterrupted,
        AcknowledgementsLost,
        InvalidOperation,
        KernelReplyError,
        UnrepresentableEntry,
        BatchError,
        netlink.NetlinkBatchError,
    ):
        assert issubclass(cls, KernelError), cls
    assert issubclass(DumpInterrupted, TransientKernelError)
    assert issubclass(AcknowledgementsLost, TransientKernelError)
    assert not issubclass(AcknowledgementsLost, IPVSError)
    assert genl.InvalidOperation is InvalidOperation
    assert netlink.AcknowledgementsLost is AcknowledgementsLost


def test_every_kernel_error_has_a_message_for_an_operator() -> None:
    samples: list[KernelError] = [
        errors.error_for(errno.ENOENT, "DeleteDestination"),
        IPVSUnavailable(),
        DumpInterrupted("GetService"),
        AcknowledgementsLost(3, 9),
        InvalidOperation("weight -1"),
        KernelReplyError("service reply: attribute 6 missing"),
        BatchError(0, ops.Flush(), errors.error_for(errno.EPERM, None)),
    ]
    for error in samples:
        assert error.message and str(error) == error.message
    assert samples[0].message == "No such destination"
    assert isinstance(samples[0], NoSuchDestination)
    assert "the table changed while it was read" in samples[2].message
    assert "0..3" not in samples[3].message and "3..9" in samples[3].message


# --- values from a newer kernel -------------------------------------------------


def service_message(*attrs: bytes, seq: int = 1, flags: int = genl.NLM_F_MULTI) -> bytes:
    body = genl.genl_body(genl.CMD_NEW_SERVICE, genl.nested(genl.CMD_ATTR_SERVICE, *attrs))
    return genl.frame(FAMILY, flags, seq, body)


def service_attrs(service: Service) -> dict[int, bytes]:
    nest = genl.parse_attrs(genl.service_nest(service))[genl.CMD_ATTR_SERVICE]
    return genl.parse_attrs(nest)


def as_message(attrs: dict[int, bytes], cmd: int, nest: int) -> genl.Message:
    raw = b"".join(genl.attr(k, v) for k, v in attrs.items())
    return genl.Message(FAMILY, genl.NLM_F_MULTI, 1, genl.genl_body(cmd, genl.attr(nest, raw)))


def dest_attrs(key: ServiceKey, dest: Destination) -> dict[int, bytes]:
    return genl.parse_attrs(genl.parse_attrs(genl.destination_nest(key, dest))[genl.CMD_ATTR_DEST])


def test_an_unknown_protocol_decodes_to_a_pseudo_member() -> None:
    attrs = service_attrs(Service(V4, "rr"))
    attrs[genl.SVC_ATTR_PROTOCOL] = struct.pack("=H", 47)
    entry = genl.parse_service(as_message(attrs, genl.CMD_NEW_SERVICE, genl.CMD_ATTR_SERVICE))
    protocol = entry.service.key.protocol
    assert protocol == 47 and isinstance(protocol, Protocol)
    assert protocol.name == "UNKNOWN_47"
    assert protocol not in list(Protocol)  # never offered as a choice
    assert Protocol(47) is protocol


def test_unknown_forwarding_method_tunnel_type_and_flags_decode() -> None:
    attrs = dest_attrs(V4, Destination(IPv4Address("10.0.0.2"), 80))
    attrs[genl.DEST_ATTR_FWD_METHOD] = struct.pack("=I", 5)
    attrs[genl.DEST_ATTR_TUN_TYPE] = b"\x07"
    attrs[genl.DEST_ATTR_TUN_FLAGS] = struct.pack("=H", 0x8 | 0x1)
    entry = genl.parse_destination(
        as_message(attrs, genl.CMD_NEW_DEST, genl.CMD_ATTR_DEST), AF_INET
    )
    d = entry.destination
    assert (d.forward, d.forward.name) == (5, "UNKNOWN_5")
    assert (d.tun_type, d.tun_type.name) == (7, "UNKNOWN_7")
    assert int(d.tun_flags) == 9 and d.tun_flags & TunnelFlags.CSUM


def test_the_forwarding_method_is_read_under_the_kernels_mask() -> None:
    attrs = dest_attrs(V4, Destination(IPv4Address("10.0.0.2"), 80))
    attrs[genl.DEST_ATTR_FWD_METHOD] = struct.pack("=I", 0x100 | 2)  # IP_VS_CONN_F_FWD_MASK is 7
    entry = genl.parse_destination(
        as_message(attrs, genl.CMD_NEW_DEST, genl.CMD_ATTR_DEST), AF_INET
    )
    assert entry.destination.forward is Forward.TUNNEL


def test_unknown_flag_bits_and_attributes_are_ignored() -> None:
    attrs = service_attrs(Service(V4, "rr", ServiceFlags.ONEPACKET))
    attrs[genl.SVC_ATTR_FLAGS] = struct.pack("=II", 0x4 | 0x2 | 0x10000, 0xFFFFFFFF)
    attrs[99] = b"from a newer kernel"
    entry = genl.parse_service(as_message(attrs, genl.CMD_NEW_SERVICE, genl.CMD_ATTR_SERVICE))
    assert entry.service.flags == ServiceFlags.ONEPACKET
    assert entry.service.scheduler == "rr"


def test_a_fwmark_service_in_an_unknown_family_decodes() -> None:
    attrs = service_attrs(Service(ServiceKey.mark(7), "rr"))
    attrs[genl.SVC_ATTR_AF] = struct.pack("=H", 99)
    entry = genl.parse_service(as_message(attrs, genl.CMD_NEW_SERVICE, genl.CMD_ATTR_SERVICE))
    assert (entry.service.key.family, entry.service.key.fwmark) == (99, 7)


def test_an_address_in_an_unknown_family_is_unrepresentable() -> None:
    attrs = service_attrs(Service(V4, "rr"))
    attrs[genl.SVC_ATTR_AF] = struct.pack("=H", 99)
    with pytest.raises(UnrepresentableEntry, match="address family 99"):
        genl.parse_service(as_message(attrs, genl.CMD_NEW_SERVICE, genl.CMD_ATTR_SERVICE))
    dattrs = dest_attrs(V4, Destination(IPv4Address("10.0.0.2"), 80))
    dattrs[genl.DEST_ATTR_ADDR_FAMILY] = struct.pack("=H", 99)
    with pytest.raises(UnrepresentableEntry):
        genl.parse_destination(as_message(dattrs, genl.CMD_NEW_DEST, genl.CMD_ATTR_DEST), AF_INET)


def test_a_name_that_is_not_utf8_still_decodes() -> None:
    attrs = service_attrs(Service(V4, "rr"))
    attrs[genl.SVC_ATTR_SCHED_NAME] = b"r\xffr\0"
    entry = genl.parse_service(as_message(attrs, genl.CMD_NEW_SERVICE, genl.CMD_ATTR_SERVICE))
    assert entry.service.scheduler == "r\\xffr"


# --- bad replies: only KernelReplyError ---------------------------------------


def test_a_missing_attribute_names_what_was_read() -> None:
    attrs = service_attrs(Service(V4, "rr"))
    del attrs[genl.SVC_ATTR_SCHED_NAME]
    with pytest.raises(KernelReplyError, match="service reply: attribute 6 missing"):
        genl.parse_service(as_message(attrs, genl.CMD_NEW_SERVICE, genl.CMD_ATTR_SERVICE))


def test_a_truncated_address_or_flags_is_a_reply_error() -> None:
    attrs = service_attrs(Service(V6, "rr"))
    attrs[genl.SVC_ATTR_ADDR] = b"\x20\x01"
    with pytest.raises(KernelReplyError, match="service reply"):
        genl.parse_service(as_message(attrs, genl.CMD_NEW_SERVICE, genl.CMD_ATTR_SERVICE))
    attrs = service_attrs(Service(V4, "rr"))
    attrs[genl.SVC_ATTR_FLAGS] = b"\x01\x00"
    with pytest.raises(KernelReplyError, match="service reply"):
        genl.parse_service(as_message(attrs, genl.CMD_NEW_SERVICE, genl.CMD_ATTR_SERVICE))


def test_a_short_error_message_is_a_reply_error() -> None:
    with pytest.raises(KernelReplyError, match="netlink error message"):
        genl.error_code(genl.Message(genl.NLMSG_ERROR, 0, 1, b"\x01"))


DECODERS: list[Callable[[genl.Message], object]] = [
    genl.parse_service,
    lambda m: genl.parse_destination(m, AF_INET),
    lambda m: genl.parse_destination(m, AF_INET6),
    genl.parse_daemon,
    genl.parse_timeouts,
    genl.parse_info,
    genl.family_id,
    genl.error_code,
    genl.acked_seq,
]


@given(st.binary(max_size=300), st.sampled_from(range(len(DECODERS))))
def test_arbitrary_bytes_give_a_value_or_a_reply_error(data: bytes, which: int) -> None:
    with contextlib.suppress(KernelReplyError):
        for message in genl.messages(data):
            DECODERS[which](message)
    with contextlib.suppress(KernelReplyError):
        DECODERS[which](genl.Message(FAMILY, 0, 1, data))


@given(st.data())
def test_damaged_real_replies_give_a_value_or_a_reply_error(data: st.DataObject) -> None:
    good = genl.genl_body(
        genl.CMD_NEW_DEST,
        genl.destination_nest(V6, Destination(IPv6Address("2001:db8::2"), 53, Forward.TUNNEL)),
    )
    cut = data.draw(st.integers(0, len(good)))
    flip = data.draw(st.integers(0, len(good) - 1))
    damaged = (
        bytearray(good[:cut] + good[cut + 1 :]) if data.draw(st.booleans()) else bytearray(good)
    )
    if flip < len(damaged):
        damaged[flip] ^= data.draw(st.integers(1, 255))
    for decode in DECODERS:
        with contextlib.suppress(KernelReplyError):
            decode(genl.Message(FAMILY, genl.NLM_F_MULTI, 1, bytes(damaged)))


# --- the encoder lets the kernel decide ----------------------------------------


def test_what_the_attribute_carries_goes_to_the_kernel() -> None:
    # ipvsadm --set 2500000 120 300: Debian's kernel (HZ=250) takes it.
    body = genl.operation_body(ops.SetTimeouts(Timeouts(2500000, 120, 300)))
    attrs = genl.parse_attrs(body, genl.GENL_HEADER.size)
    assert attrs[genl.CMD_ATTR_TIMEOUT_TCP] == struct.pack("=I", 2500000)
    genl.operation_body(ops.SetTimeouts(Timeouts(2**32 - 1, 0, 0)))
    genl.operation_body(ops.AddService(Service(V6, netmask=0)))  # the kernel: EINVAL
    genl.operation_body(ops.AddDestination(V4, Destination(IPv4Address("224.0.0.1"), 80)))
    genl.operation_body(
        ops.AddDestination(V4, Destination(IPv4Address("10.0.0.2"), 80, weight=2**31))
    )
    genl.operation_body(ops.AddService(Service(ServiceKey.mark(2**32 - 1), "rr")))
    assert TIMEOUT_MAX == 2**31 // 1000 == 2147483


def test_what_no_attribute_carries_is_refused() -> None:
    with pytest.raises(InvalidOperation, match="fwmark 4294967296"):
        genl.operation_body(ops.AddService(Service(ServiceKey.mark(2**32), "rr")))
    with pytest.raises(InvalidOperation, match="tunnel flags 65536"):
        genl.operation_body(
            ops.AddDestination(
                V4, Destination(IPv4Address("10.0.0.2"), 80, tun_flags=TunnelFlags(65536))
            )
        )


# --- NetlinkBackend over a scripted socket ---------------------------------------

Reply = bytes | OSError


class ScriptedSocket:
    """Answers each send() with what `answer` returns for it: datagrams to
    read, or an OSError that recv() raises in their place."""

    def __init__(self, answer: Callable[[int, int, bytes], list[Reply]]) -> None:
        self.answer = answer
        self.queue: list[Reply] = []
        self.sent: list[bytes] = []
        self.send_error: OSError | None = None

    def send(self, data: bytes) -> int:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(bytes(data))
        for message in genl.messages(bytes(data)):
            cmd = message.payload[0]
            self.queue += self.answer(cmd, message.seq, message.payload)
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def close(self) -> None:
        pass


def scripted(
    answer: Callable[[int, int, bytes], list[Reply]],
) -> tuple[NetlinkBackend, ScriptedSocket]:
    sock = ScriptedSocket(answer)
    return NetlinkBackend.over(sock, FAMILY), sock  # type: ignore[arg-type]


def done(seq: int, flags: int = genl.NLM_F_MULTI) -> bytes:
    return genl.frame(genl.NLMSG_DONE, flags, seq, struct.pack("=i", 0))


def ack(seq: int, err: int = 0) -> bytes:
    return genl.frame(genl.NLMSG_ERROR, 0, seq, struct.pack("=i", -err) + b"\0" * 16)


def services_answer(
    services: list[Service], intr_at: int | None = None
) -> Callable[[int, int, bytes], list[Reply]]:
    def answer(cmd: int, seq: int, payload: bytes) -> list[Reply]:
        if cmd == genl.CMD_GET_SERVICE:
            out: list[Reply] = []
            for n, service in enumerate(services):
                flags = genl.NLM_F_MULTI | (genl.NLM_F_DUMP_INTR if n == intr_at else 0)
                nest = genl.parse_attrs(genl.service_nest(service))[genl.CMD_ATTR_SERVICE]
                out.append(service_message(nest, seq=seq, flags=flags))
            return [*out, done(seq)]
        if cmd == genl.CMD_GET_DEST:
            return [done(seq)]
        return [ack(seq, errno.EOPNOTSUPP)]

    return answer


def test_a_dump_marked_interrupted_raises_dump_interrupted_after_reading_it_all() -> None:
    services = [
        Service(ServiceKey.inet(Protocol.TCP, f"10.0.0.{n}", 80), "rr") for n in range(1, 5)
    ]
    backend, sock = scripted(services_answer(services, intr_at=2))
    with pytest.raises(DumpInterrupted) as caught:
        backend.services()
    assert caught.value.errno == errno.EINTR
    assert isinstance(caught.value, TransientKernelError)
    assert sock.queue == []  # read to its end: the socket is ready for the next request
    sock.answer = services_answer(services)
    assert [e.service for e in backend.services()] == services


def test_enobufs_while_reading_a_dump_is_dump_interrupted() -> None:
    services = [Service(V4, "rr")]
    answer = services_answer(services)

    def lossy(cmd: int, seq: int, payload: bytes) -> list[Reply]:
        return [OSError(errno.ENOBUFS, "No buffer space available"), *answer(cmd, seq, payload)]

    backend, sock = scripted(lossy)
    with pytest.raises(DumpInterrupted) as caught:
        backend.services()
    assert caught.value.errno == errno.ENOBUFS
    assert sock.queue == []


def test_a_dump_left_unfinished_is_drained_before_the_next_request() -> None:
    services = [Service(V4, "rr"), Service(V6, "wlc")]
    answer = services_answer(services)
    stalled = [True]

    def stall_once(cmd: int, seq: int, payload: bytes) -> list[Reply]:
        replies = answer(cmd, seq, payload)
        if stalled[0]:
            stalled[0] = False
            # the first part, then silence (the rest comes only after a timeout)
            return [replies[0], OSError(errno.EAGAIN, "timed out"), *replies[1:]]
        return replies

    backend, _ = scripted(stall_once)
    with pytest.raises(TransientKernelError) as caught:
        backend.services()
    assert caught.value.errno == errno.EAGAIN and not isinstance(caught.value, IPVSError)
    assert [e.service for e in backend.services()] == services


def test_socket_errors_become_kernel_errors() -> None:
    backend, sock = scripted(services_answer([]))
    sock.send_error = OSError(errno.EBADF, "Bad file descriptor")
    with pytest.raises(IPVSError) as refused:
        backend.timeouts()
    assert refused.value.errno == errno.EBADF
    sock.send_error = OSError(errno.ENOBUFS, "No buffer space available")
    with pytest.raises(TransientKernelError) as busy:
        backend.services()
    assert busy.value.errno == errno.ENOBUFS


def test_interrupted_sends_are_retried() -> None:
    backend, sock = scripted(services_answer([Service(V4, "rr")]))
    real_send = sock.send
    interrupts = [2]

    def send(data: bytes) -> int:
        if interrupts[0]:
            interrupts[0] -= 1
            raise InterruptedError(errno.EINTR, "Interrupted system call")
        return real_send(data)

    sock.send = send  # type: ignore[method-assign]
    assert len(backend.services()) == 1


def test_an_unrepresentable_service_is_left_out_and_kept_in_skipped() -> None:
    good = Service(V4, "rr")
    attrs = service_attrs(Service(ServiceKey.inet(Protocol.TCP, "10.0.0.9", 80), "rr"))
    attrs[genl.SVC_ATTR_AF] = struct.pack("=H", 99)
    odd = b"".join(genl.attr(k, v) for k, v in attrs.items())
    answer = services_answer([good])

    def with_odd(cmd: int, seq: int, payload: bytes) -> list[Reply]:
        if cmd == genl.CMD_GET_SERVICE:
            return [service_message(odd, seq=seq), *answer(cmd, seq, payload)]
        return answer(cmd, seq, payload)

    backend, _ = scripted(with_odd)
    assert [e.service for e in backend.services()] == [good]
    (skipped,) = backend.skipped
    assert "address family 99" in skipped.message


def acks_answer(
    refuse: dict[int, int], lose: bool = False
) -> Callable[[int, int, bytes], list[Reply]]:
    """Acknowledge each request; refuse the n-th (from 0) with refuse[n]."""
    count = [0]

    def answer(cmd: int, seq: int, payload: bytes) -> list[Reply]:
        n = count[0]
        count[0] += 1
        if lose and n == 2:
            return [OSError(errno.ENOBUFS, "No buffer space available")]
        return [ack(seq, refuse.get(n, 0))]

    return answer


def dest_ops(count: int) -> list[ops.Operation]:
    return [
        ops.AddDestination(V4, Destination(IPv4Address(f"10.0.1.{n}"), 80)) for n in range(count)
    ]


def test_apply_each_gives_every_outcome_in_order() -> None:
    operations = dest_ops(5)
    operations.insert(2, ops.AddDestination(V4, Destination(IPv4Address("10.0.2.1"), 70000)))
    backend, sock = scripted(acks_answer({1: errno.EINVAL, 3: errno.ENOENT}))
    backend._max_in_flight = 2  # three chunks: a failure does not stop the next
    outcomes = backend.apply_each(operations)
    assert [type(o).__name__ for o in outcomes] == [
        "NoneType",
        "IPVSError",
        "InvalidOperation",
        "NoneType",
        "IPVSError",
        "NoneType",
    ]
    assert outcomes[1] is not None and outcomes[1].errno == errno.EINVAL  # type: ignore[attr-defined]
    assert len(sock.sent) == 3  # the refused one was never sent


def test_apply_each_raises_only_when_outcomes_are_unknown() -> None:
    backend, _ = scripted(acks_answer({0: errno.EEXIST}, lose=True))
    backend._max_in_flight = 2
    with pytest.raises(AcknowledgementsLost) as caught:
        backend.apply_each(dest_ops(6))
    lost = caught.value
    assert (lost.first, lost.last) == (2, 3)
    assert isinstance(lost.known[0], errors.DestinationExists) and lost.known[1] is None


def test_apply_each_after_a_failed_send_names_what_was_not_sent() -> None:
    backend, sock = scripted(acks_answer({}))
    backend._max_in_flight = 2
    sent = [0]
    real_send = sock.send

    def send(data: bytes) -> int:
        sent[0] += 1
        if sent[0] == 2:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return real_send(data)

    sock.send = send  # type: ignore[method-assign]
    outcomes = backend.apply_each(dest_ops(5))
    assert outcomes[:2] == [None, None]
    assert all(isinstance(o, TransientKernelError) for o in outcomes[2:])


def test_apply_still_stops_at_the_first_failed_chunk() -> None:
    backend, sock = scripted(acks_answer({1: errno.EINVAL}))
    backend._max_in_flight = 2
    with pytest.raises(netlink.NetlinkBatchError) as caught:
        backend.apply(dest_ops(6))
    assert (caught.value.index, caught.value.attempted) == (1, 2)
    assert len(sock.sent) == 1


# --- KernelTable ----------------------------------------------------------------


class FlakyBackend(MemoryBackend):
    def __init__(self, failures: int) -> None:
        super().__init__([ServiceEntry(Service(V4, "rr"))])
        self.failures = failures
        self.calls = 0

    def services(self, only: object = None, *, brief: bool = False) -> list[ServiceEntry]:
        self.calls += 1
        if self.calls <= self.failures:
            raise DumpInterrupted("GetService")
        return super().services()


async def test_an_interrupted_dump_is_read_again_after_a_short_pause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FlakyBackend(failures=READ_ATTEMPTS - 1)
    table = KernelTable(backend, threaded=False)
    start = trio.current_time()
    entries = await table.services()
    assert len(entries) == 1 and backend.calls == READ_ATTEMPTS
    assert 0 < trio.current_time() - start < 1


async def test_a_dump_that_keeps_being_interrupted_is_raised() -> None:
    backend = FlakyBackend(failures=READ_ATTEMPTS)
    with pytest.raises(DumpInterrupted):
        await KernelTable(backend, threaded=False).services()
    assert backend.calls == READ_ATTEMPTS


async def test_kernel_table_apply_each() -> None:
    table = KernelTable(MemoryBackend([ServiceEntry(Service(V4, "rr"))]), threaded=False)
    outcomes = await table.apply_each(
        [
            ops.AddDestination(V4, Destination(IPv4Address("224.0.0.1"), 80)),
            ops.AddDestination(V4, Destination(IPv4Address("10.0.0.2"), 80)),
        ]
    )
    assert isinstance(outcomes[0], IPVSError) and outcomes[1] is None
    assert await table.apply_each([]) == []


class BlockingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def services(self, only: object = None, *, brief: bool = False) -> list[ServiceEntry]:
        self.entered.set()
        self.release.wait(30)
        return []


async def test_two_tables_over_two_backends_never_wait_for_each_other() -> None:
    slow = BlockingBackend()
    listing = KernelTable(slow)
    passes = KernelTable(MemoryBackend([ServiceEntry(Service(V4, "rr"))]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listing.services)
        await trio.to_thread.run_sync(slow.entered.wait, 30)
        assert len(await passes.services()) == 1  # while the listing is still blocked
        assert not slow.release.is_set()
        slow.release.set()


class ThreadNoting(BlockingBackend):
    """Notes the thread each apply_each ran in, and whether a read was
    running meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.applied_in: list[int] = []
        self.reading = False
        self.overlapped = False

    def services(self, only: object = None, *, brief: bool = False) -> list[ServiceEntry]:
        self.reading = True
        try:
            return super().services(only, brief=brief)
        finally:
            self.reading = False

    def apply_each(self, operations: Sequence[ops.Operation]) -> list[KernelError | None]:
        self.applied_in.append(threading.get_ident())
        self.overlapped = self.overlapped or self.reading
        return [None] * len(operations)


async def test_a_few_operations_apply_in_the_loops_thread_still_one_call_at_a_time() -> None:
    """Stop 33: a health change's operation, applied in a worker thread,
    waited for the GIL at each of its system calls while a busy loop held
    it: 40 ms from verdict to kernel at 10,000 servers, 10 ms at 10. A few
    operations are applied inline; a large batch still goes to a thread,
    and neither runs beside another call on the same backend."""
    backend = ThreadNoting()
    table = KernelTable(backend)
    few: list[ops.Operation] = [ops.AddService(Service(V4, "rr"))] * INLINE_OPERATIONS
    many = few + few
    async with trio.open_nursery() as nursery:
        nursery.start_soon(table.services)  # a read in a worker thread, held
        await trio.to_thread.run_sync(backend.entered.wait, 30)
        nursery.start_soon(table.apply_each, few)
        await trio.testing.wait_all_tasks_blocked()
        assert backend.applied_in == []  # it waits for the read
        backend.release.set()
    assert await table.apply_each(many) == [None] * len(many)
    here = threading.get_ident()
    assert backend.applied_in[0] == here and backend.applied_in[1] != here
    assert not backend.overlapped


async def test_a_few_operations_on_a_free_table_apply_without_a_checkpoint() -> None:
    """A checkpoint in a health change's pass let every busy task (the
    probe watchers) run a slice of its work before the change went on: a
    task that was ready meanwhile has not run when the apply returns."""
    backend = ThreadNoting()
    table = KernelTable(backend)
    ran = False

    async def other() -> None:
        nonlocal ran
        ran = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        assert await table.apply_each([ops.AddService(Service(V4, "rr"))]) == [None]
        assert not ran
        assert backend.applied_in == [threading.get_ident()]
