"""The kernel's IPVS table over generic netlink: a blocking Backend.

Requests are marshalled by director.ipvs.genl; this module owns the socket.
apply() and apply_each() send operations in chunks, many netlink messages per
send(), each with NLM_F_ACK and its own sequence number, then read and check
every acknowledgement of the chunk before sending the next one.

Every method raises only director.ipvs.errors.KernelError: an OSError from
the socket becomes a TransientKernelError (ENOBUFS, EAGAIN, ENOMEM: a dump
becomes DumpInterrupted, an acknowledgement read AcknowledgementsLost) or an
IPVSError with its errno (anything else); EINTR is retried where it happens.
A receive waits at most RECV_TIMEOUT seconds: the kernel answers a request
during the send() itself, so silence means a lost message.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import socket
import struct
from collections.abc import Collection, Iterator, Sequence
from types import TracebackType

from director.ipvs import genl
from director.ipvs.conntable import parse_connections
from director.ipvs.errors import AcknowledgementsLost as AcknowledgementsLost
from director.ipvs.errors import (
    BatchError,
    DumpInterrupted,
    InvalidOperation,
    IPVSUnavailable,
    KernelError,
    KernelReplyError,
    TransientKernelError,
    UnrepresentableEntry,
    error_for,
)
from director.ipvs.model import (
    Connection,
    DestinationEntry,
    Info,
    ServiceEntry,
    ServiceKey,
    SyncDaemon,
    Timeouts,
)
from director.ipvs.ops import Operation
from director.ipvs.servicetable import (
    TableKey,
    _service_key,
    exact_destinations,
    parse_service_table,
    table_key,
)

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

CONN_TABLE = "/proc/thread-self/net/ip_vs_conn"
SERVICE_TABLE = "/proc/thread-self/net/ip_vs"

# The kernel charges each acknowledgement (a small skb of its own) about 768
# bytes of receive buffer; 1024 leaves a margin. A chunk never has more
# operations in flight than the receive buffer holds acknowledgements.
ACK_CHARGE = 1024
RECV_SIZE = 64 * 1024
RECV_TIMEOUT = 10.0  # seconds
SEQ_LIMIT = 0x7FFFFFFF

# The tail of a destination line of /proc/net/ip_vs that holds its two
# connection counts (ip_vs_info_seq_show: "... %-6d %-10d %-10d\n" for the
# weight, active and inactive connections; a count never has more than 10
# characters, and one that had would only make its service look changed).
_COUNTS_WIDTH = 22

# Socket errors that say nothing about the request: the same call may succeed again.
TRANSIENT_ERRNOS = frozenset((errno.ENOBUFS, errno.EAGAIN, errno.ENOMEM))


class NetlinkBatchError(BatchError):
    """Operation `index` failed. Every operation before it was applied.

    Operations are sent in chunks; the kernel carries on with the rest of a
    chunk after a failure, so operations `index+1 .. attempted-1` also
    reached the kernel: those not listed in `failures` were applied. Nothing
    from `attempted` on was sent (where sending failed, `attempted` is
    `index` and `error` the send's TransientKernelError or IPVSError).
    """

    def __init__(
        self,
        index: int,
        operation: Operation,
        error: KernelError,
        attempted: int,
        failures: tuple[tuple[int, KernelError], ...],
    ) -> None:
        super().__init__(index, operation, error)
        self.attempted = attempted
        self.failures = failures


class _AcksLost(Exception):
    def __init__(self, err: int) -> None:
        self.errno = err


def _socket_error(exc: OSError, what: str) -> KernelError:
    """The KernelError for an OSError from the socket while doing `what`."""
    err = exc.errno or errno.EIO
    if err in TRANSIENT_ERRNOS:
        return TransientKernelError(err, f"netlink {what}: {os.strerror(err)}")
    return error_for(err, None)


class NetlinkBackend:
    """The IPVS table of the network namespace current at construction.

    Calls block. One instance is used by one thread at a time (it owns one
    socket and its sequence numbers); give each thread its own, or serialise.
    Two instances in one process are independent (two sockets). Use it as a
    context manager, or call close(). Construction raises IPVSUnavailable
    without ip_vs, another IPVSError where the socket cannot be made.

    `skipped` lists the entries the last services() left out because the
    model cannot hold them (UnrepresentableEntry: an unknown address family).
    """

    def __init__(self, *, chunk_bytes: int = 128 * 1024, buffer_bytes: int = 8 << 20) -> None:
        self._chunk_bytes = chunk_bytes
        self._seq = 1
        self._open_dump: int | None = None
        self.skipped: list[UnrepresentableEntry] = []
        try:
            self._sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC
            )
        except OSError as exc:
            raise _socket_error(exc, "socket") from exc
        try:
            self._sock.bind((0, 0))
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self._set_buffer(SO_SNDBUFFORCE, socket.SO_SNDBUF, max(buffer_bytes, 2 * chunk_bytes))
            self._set_buffer(SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer_bytes)
            seconds = int(RECV_TIMEOUT)
            micros = int((RECV_TIMEOUT - seconds) * 1e6)
            self._sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", seconds, micros)
            )
            rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            self._max_in_flight = max(1, rcvbuf // ACK_CHARGE)
            self._family = self._resolve_family()
        except OSError as exc:
            self._sock.close()
            raise _socket_error(exc, "setup") from exc
        except BaseException:
            self._sock.close()
            raise

    @classmethod
    def over(
        cls,
        sock: socket.socket,
        family: int,
        *,
        chunk_bytes: int = 128 * 1024,
        max_in_flight: int = 1000,
    ) -> NetlinkBackend:
        """A backend over an open netlink socket whose IPVS family id is
        known: no socket opened, no family looked up (tests and benches
        replay a kernel's answers through a socket of their own)."""
        backend = object.__new__(cls)
        backend._sock = sock
        backend._chunk_bytes = chunk_bytes
        backend._seq = 1
        backend._open_dump = None
        backend._max_in_flight = max_in_flight
        backend._family = family
        backend.skipped = []
        return backend

    def _set_buffer(self, forced: int, plain: int, size: int) -> None:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, forced, size)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, plain, size)

    def __enter__(self) -> NetlinkBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    # --- plumbing ---------------------------------------------------------------

    def _take_seq(self, count: int = 1) -> int:
        if self._seq + count > SEQ_LIMIT:
            self._seq = 1
        first = self._seq
        self._seq += count
        return first

    def _send(self, data: bytes | bytearray, what: str) -> None:
        while True:
            try:
                self._sock.send(data)
                return
            except InterruptedError:
                continue
            except OSError as exc:
                raise _socket_error(exc, f"send ({what})") from exc

    def _recv(self) -> bytes:
        """One datagram; OSError (EAGAIN after RECV_TIMEOUT) for the caller
        to classify."""
        while True:
            try:
                return self._sock.recv(RECV_SIZE)
            except InterruptedError:
                continue

    def _resolve_family(self) -> int:
        seq = self._take_seq()
        self._send(genl.getfamily_request(seq), "family lookup")
        reply = self._reply(seq, None)
        if reply is None:
            raise IPVSUnavailable()
        return genl.family_id(reply)

    def _reply(self, seq: int, operation: str | None) -> genl.Message | None:
        """The single reply to request `seq`; None if the kernel answered
        ENOENT to a family lookup."""
        while True:
            try:
                data = self._recv()
            except OSError as exc:
                raise _socket_error(exc, f"reply to {operation or 'family lookup'}") from exc
            for message in genl.messages(data):
                if message.seq != seq:
                    continue
                if message.type == genl.NLMSG_ERROR:
                    err = genl.error_code(message)
                    if err == 0:
                        continue
                    if operation is None and err == errno.ENOENT:
                        return None
                    raise error_for(err, operation)
                if message.type < genl.NLMSG_MIN_TYPE:
                    continue
                return message

    def _request(self, body: bytes, operation: str) -> genl.Message:
        self._drain_open_dump()
        seq = self._take_seq()
        self._send(genl.frame(self._family, genl.NLM_F_REQUEST, seq, body), operation)
        reply = self._reply(seq, operation)
        if reply is None:  # pragma: no cover - None only answers a family lookup
            raise KernelReplyError(f"no reply to {operation}")
        return reply

    def _drain_open_dump(self) -> None:
        """Read what is left of a dump abandoned by an error: the kernel
        refuses a new dump on this socket (EBUSY) while one is running, and
        it only runs on as its replies are read."""
        seq, self._open_dump = self._open_dump, None
        while seq is not None:
            try:
                data = self._recv()
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue
                return  # EAGAIN: nothing is coming, the dump is over
            for message in genl.messages(data):
                if message.seq == seq and message.type in (genl.NLMSG_DONE, genl.NLMSG_ERROR):
                    return

    def _dump(self, body: bytes, operation: str) -> list[genl.Message]:
        """Every message of a dump. DumpInterrupted when one carries
        NLM_F_DUMP_INTR or messages were lost (ENOBUFS): the dump is read to
        its end first, so the socket is ready for the next request."""
        self._drain_open_dump()
        seq = self._take_seq()
        self._send(
            genl.frame(self._family, genl.NLM_F_REQUEST | genl.NLM_F_DUMP, seq, body), operation
        )
        self._open_dump = seq
        out: list[genl.Message] = []
        interrupted = 0
        while True:
            try:
                data = self._recv()
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    interrupted = errno.ENOBUFS
                    continue
                raise _socket_error(exc, f"dump ({operation})") from exc
            for message in genl.messages(data):
                if message.seq != seq:
                    continue
                if message.flags & genl.NLM_F_DUMP_INTR and not interrupted:
                    interrupted = errno.EINTR
                if message.type == genl.NLMSG_DONE:
                    self._open_dump = None
                    err = genl.error_code(message) if len(message.payload) >= 4 else 0
                    if err:
                        raise error_for(err, operation)
                    if interrupted:
                        raise DumpInterrupted(operation, interrupted)
                    return out
                if message.type == genl.NLMSG_ERROR:
                    err = genl.error_code(message)
                    if err:
                        self._open_dump = None
                        raise error_for(err, operation)
                    continue
                if message.type >= genl.NLMSG_MIN_TYPE:
                    out.append(message)

    # --- reading ----------------------------------------------------------------

    def info(self) -> Info:
        return genl.parse_info(self._request(genl.genl_body(genl.CMD_GET_INFO), "GetInfo"))

    def services(
        self,
        only: Collection[ServiceKey] | None = None,
        *,
        brief: bool = False,
        counters: bool = True,
    ) -> list[ServiceEntry]:
        """See Backend.services. Without `counters`, no stats and no
        connection counts are decoded from the dumps (they read as zero; a
        brief read's destinations from /proc/net/ip_vs keep theirs): what a
        reconcile pass reads, for less CPU. An entry the model cannot hold
        is left out and kept in `skipped`."""
        skipped: list[UnrepresentableEntry] = []
        services = []
        for message in self._dump(genl.genl_body(genl.CMD_GET_SERVICE), "GetService"):
            try:
                services.append(genl.parse_service(message, stats=counters and not brief))
            except UnrepresentableEntry as exc:
                skipped.append(exc)
        brief_table = self._brief_destinations() if brief else {}
        entries = []
        for entry in services:
            key = entry.service.key
            if only is not None and key not in only:
                continue
            dests = brief_table.get(table_key(key))
            if dests is None:
                dests = []
                for message in self._dump(genl.get_dests_body(key), "GetDestinations"):
                    try:
                        dests.append(genl.parse_destination(message, key.family, counters))
                    except UnrepresentableEntry as exc:
                        skipped.append(exc)
            entries.append(ServiceEntry(entry.service, tuple(dests), entry.stats))
        self.skipped = skipped
        return entries

    def _brief_destinations(self) -> dict[TableKey, list[DestinationEntry]]:
        """The destinations one read of the service table (/proc/net/ip_vs)
        gives exactly; the other services are dumped. Where the file cannot
        be read or parsed, everything is dumped."""
        try:
            with open(SERVICE_TABLE) as table:
                return exact_destinations(parse_service_table(table.read(), SERVICE_TABLE))
        except (OSError, ValueError):
            return {}

    def settled_digests(self, keys: Collection[ServiceKey]) -> dict[ServiceKey, bytes]:
        """For each of `keys` in the table, a hash (16 bytes) of its
        GET_SERVICE reply and its destinations' GET_DEST replies without
        their stats and connection counts (genl.settled_bytes): equal for
        two reads when nothing a read in full decodes changed, thresholds,
        tunnel settings, scheduler flags and persistence engine included.
        The dumps of a read in full, and no decoding of the destinations."""
        wanted = set(keys)
        digests: dict[ServiceKey, bytes] = {}
        for message in self._dump(genl.genl_body(genl.CMD_GET_SERVICE), "GetService"):
            try:
                key = genl.parse_service(message, stats=False).service.key
            except UnrepresentableEntry:
                continue
            if key not in wanted:
                continue
            digest = hashlib.blake2b(genl.settled_bytes(message), digest_size=16)
            for reply in self._dump(genl.get_dests_body(key), "GetDestinations"):
                digest.update(genl.settled_bytes(reply))
            digests[key] = digest.digest()
        return digests

    def service_digests(self) -> dict[TableKey, str] | None:
        """table_digests of one read of the service table (/proc/net/ip_vs):
        what changed in each service since an earlier read, for the cost of
        one read of the file and no decoding of its destinations. None when
        the file cannot be read or parsed."""
        try:
            with open(SERVICE_TABLE) as table:
                return table_digests(table.read())
        except (OSError, ValueError):
            return None

    def timeouts(self) -> Timeouts:
        return genl.parse_timeouts(
            self._request(genl.genl_body(genl.CMD_GET_CONFIG), "GetTimeouts")
        )

    def daemons(self) -> list[SyncDaemon]:
        replies = self._dump(genl.genl_body(genl.CMD_GET_DAEMON), "GetDaemons")
        return [genl.parse_daemon(m) for m in replies]

    def connections(self) -> list[Connection]:
        """/proc/net/ip_vs_conn: IPVSUnavailable without it, IPVSError where
        it cannot be read, KernelReplyError where it cannot be parsed."""
        try:
            with open(CONN_TABLE) as table:
                text = table.read()
        except FileNotFoundError:
            raise IPVSUnavailable() from None
        except OSError as exc:
            raise error_for(exc.errno or errno.EIO, None) from exc
        except ValueError as exc:
            raise KernelReplyError(f"{CONN_TABLE}: {exc}") from exc
        try:
            return parse_connections(text, CONN_TABLE)
        except ValueError as exc:
            raise KernelReplyError(str(exc)) from exc

    # --- writing ----------------------------------------------------------------

    def apply(self, operations: Sequence[Operation]) -> None:
        """Apply `operations` in order, stopping at the first failure.

        Every operation is encoded (and so validated) before anything is
        sent: bad input raises InvalidOperation naming the operation and
        changes nothing. Then chunks of operations (up to chunk_bytes of
        messages, and never more than the receive buffer can acknowledge)
        go out one send() each; all acknowledgements of a chunk are read and
        checked before the next chunk is sent. The first chunk with a
        failure ends the batch with NetlinkBatchError (see there for what
        was applied); lost acknowledgements raise AcknowledgementsLost.
        """
        bodies = []
        for index, operation in enumerate(operations):
            try:
                bodies.append(genl.operation_body(operation))
            except InvalidOperation as exc:
                raise InvalidOperation(f"operation {index}: {exc}") from exc
        for start, end in self._chunks(bodies):
            try:
                first_seq = self._send_chunk(bodies, start, end)
            except KernelError as error:
                raise NetlinkBatchError(
                    start, operations[start], error, start, ((start, error),)
                ) from error
            try:
                failures = self._acknowledgements(first_seq, end - start)
            except _AcksLost as lost:
                raise AcknowledgementsLost(start, end - 1, err=lost.errno) from None
            if failures:
                errors: tuple[tuple[int, KernelError], ...] = tuple(
                    (start + offset, error_for(err, type(operations[start + offset]).__name__))
                    for offset, err in failures
                )
                index, first_error = errors[0]
                raise NetlinkBatchError(index, operations[index], first_error, end, errors)

    def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        """Send every operation, in order and chunked as apply() does; a
        failure does not stop the later ones. Returns each operation's
        outcome in order: None (applied), the InvalidOperation of one the
        encoder refuses (not sent), the kernel's IPVSError, or the
        TransientKernelError/IPVSError of a send that failed (that operation
        and every later one were not sent). Raises AcknowledgementsLost only
        when outcomes are unknown (its `known` holds those before `first`).
        """
        outcomes: list[KernelError | None] = [None] * len(operations)
        indexes: list[int] = []
        bodies: list[bytes] = []
        for index, operation in enumerate(operations):
            try:
                bodies.append(genl.operation_body(operation))
            except InvalidOperation as exc:
                outcomes[index] = exc
                continue
            indexes.append(index)
        for start, end in self._chunks(bodies):
            try:
                first_seq = self._send_chunk(bodies, start, end)
            except KernelError as error:
                for position in range(start, len(bodies)):
                    outcomes[indexes[position]] = error
                break
            try:
                failures = self._acknowledgements(first_seq, end - start)
            except _AcksLost as lost:
                first = indexes[start]
                raise AcknowledgementsLost(
                    first, indexes[end - 1], tuple(outcomes[:first]), lost.errno
                ) from None
            for offset, err in failures:
                index = indexes[start + offset]
                outcomes[index] = error_for(err, type(operations[index]).__name__)
        return outcomes

    def _chunks(self, bodies: Sequence[bytes]) -> Iterator[tuple[int, int]]:
        """(start, end) of each chunk: up to chunk_bytes of messages, never
        more than the receive buffer can acknowledge."""
        start, total = 0, len(bodies)
        while start < total:
            end, size = start, 0
            limit = min(total, start + self._max_in_flight)
            while end < limit and (
                end == start or size + len(bodies[end]) + 16 <= self._chunk_bytes
            ):
                size += len(bodies[end]) + 16
                end += 1
            yield start, end
            start = end

    def _send_chunk(self, bodies: Sequence[bytes], start: int, end: int) -> int:
        """Send bodies[start:end] in one send(); the first sequence number."""
        self._drain_open_dump()
        flags = genl.NLM_F_REQUEST | genl.NLM_F_ACK
        header = genl.NLMSG_HEADER
        family = self._family
        first_seq = self._take_seq(end - start)
        chunk = bytearray()
        for offset in range(end - start):
            body = bodies[start + offset]
            chunk += header.pack(16 + len(body), family, flags, first_seq + offset, 0)
            chunk += body
        self._send(chunk, "operations")
        return first_seq

    def _acknowledgements(self, first_seq: int, count: int) -> list[tuple[int, int]]:
        """Read the acknowledgements of `count` requests from first_seq;
        return (offset, errno) of each failure. _AcksLost where they cannot
        all be read (ENOBUFS: dropped; EAGAIN: none came in time)."""
        pending = count
        last_seq = first_seq + count
        failures: list[tuple[int, int]] = []
        while pending:
            try:
                data = self._recv()
            except OSError as exc:
                raise _AcksLost(exc.errno or errno.EIO) from exc
            for message in genl.messages(data):
                if message.type != genl.NLMSG_ERROR or not first_seq <= message.seq < last_seq:
                    continue
                pending -= 1
                err = genl.error_code(message)
                if err:
                    failures.append((message.seq - first_seq, err))
        failures.sort()
        return failures


def table_digests(text: str, source: str = SERVICE_TABLE) -> dict[TableKey, str]:
    """Each service's text in the service table (net/netfilter/ipvs/
    ip_vs_ctl.c, ip_vs_info_seq_show), by what the file knows it by
    (servicetable.table_key): its line (protocol, address, port, scheduler,
    one-packet, persistence timeout and netmask) and its destinations' lines
    (address, port, forwarding method, weight, in the kernel's order) without
    their connection counts. Equal digests: nothing the file shows changed;
    thresholds, tunnel settings, scheduler flags and persistence engines
    are not in it. The two services of a firewall mark used in both families
    share one digest; a service of a protocol this code does not know is
    left out. ValueError when `text` is no service table."""
    lines = text.split("\n")
    if len(lines) < 3 or not lines[0].startswith("IP Virtual Server version"):
        raise ValueError(f"{source}: not an IPVS service table: {lines[:1]!r}")
    digests: dict[TableKey, str] = {}
    key: TableKey | None = None
    parts: list[str] = []
    for line in itertools.chain(lines[3:], ("",)):
        if line.startswith("  ->"):
            parts.append(line[:-_COUNTS_WIDTH])
            continue
        if key is not None:
            digests[key] = digests.get(key, "") + "\n".join(parts) + "\n"
        key, parts = None, [line]
        if line:
            try:
                key = _service_key(line.split())
            except (ValueError, IndexError):
                continue  # a protocol this code does not know: not one of ours
    return digests
