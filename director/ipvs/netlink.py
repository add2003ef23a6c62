"""The kernel's IPVS table over generic netlink: a blocking Backend.

Requests are marshalled by director.ipvs.genl; this module owns the socket.
apply() sends operations in chunks, many netlink messages per send(), each
with NLM_F_ACK and its own sequence number, then reads and checks every
acknowledgement of the chunk before sending the next one.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Collection, Sequence
from types import TracebackType

from director.ipvs import genl
from director.ipvs.conntable import parse_connections
from director.ipvs.errors import BatchError, IPVSError, IPVSUnavailable, error_for
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
SEQ_LIMIT = 0x7FFFFFFF


class NetlinkBatchError(BatchError):
    """Operation `index` failed. Every operation before it was applied.

    Operations are sent in chunks; the kernel carries on with the rest of a
    chunk after a failure, so operations `index+1 .. attempted-1` also
    reached the kernel: those not listed in `failures` were applied. Nothing
    from `attempted` on was sent.
    """

    def __init__(
        self,
        index: int,
        operation: Operation,
        error: IPVSError,
        attempted: int,
        failures: tuple[tuple[int, IPVSError], ...],
    ) -> None:
        super().__init__(index, operation, error)
        self.attempted = attempted
        self.failures = failures


class AcknowledgementsLost(IPVSError):
    """The kernel dropped acknowledgements (receive buffer overflow,
    ENOBUFS): whether operations first..last were applied is unknown."""

    def __init__(self, first: int, last: int) -> None:
        super().__init__(errno.ENOBUFS, None)
        self.first = first
        self.last = last
        self.message = (
            f"netlink receive buffer overflowed: acknowledgements of operations "
            f"{first}..{last} were lost, their outcome is unknown (dump the table)"
        )
        self.args = (self.message,)


class NetlinkBackend:
    """The IPVS table of the network namespace current at construction.

    Calls block. One instance is used by one thread at a time (it owns one
    socket and its sequence numbers); give each thread its own, or serialise.
    Use it as a context manager, or call close().
    """

    def __init__(self, *, chunk_bytes: int = 128 * 1024, buffer_bytes: int = 8 << 20) -> None:
        self._chunk_bytes = chunk_bytes
        self._seq = 1
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC
        )
        try:
            self._sock.bind((0, 0))
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self._set_buffer(SO_SNDBUFFORCE, socket.SO_SNDBUF, max(buffer_bytes, 2 * chunk_bytes))
            self._set_buffer(SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer_bytes)
            rcvbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            self._max_in_flight = max(1, rcvbuf // ACK_CHARGE)
            self._family = self._resolve_family()
        except BaseException:
            self._sock.close()
            raise

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

    def _resolve_family(self) -> int:
        seq = self._take_seq()
        self._sock.send(genl.getfamily_request(seq))
        reply = self._reply(seq, None)
        if reply is None:
            raise IPVSUnavailable()
        return genl.family_id(reply)

    def _reply(self, seq: int, operation: str | None) -> genl.Message | None:
        """The single reply to request `seq`; None if the kernel answered
        ENOENT to a family lookup."""
        while True:
            for message in genl.messages(self._sock.recv(RECV_SIZE)):
                if message.seq != seq:
                    continue
                if message.type == genl.NLMSG_ERROR:
                    err = genl.error_code(message)
                    if err == 0:
                        continue
                    if operation is None and err == errno.ENOENT:
                        return None
                    raise error_for(err, operation)
                return message

    def _request(self, body: bytes, operation: str) -> genl.Message:
        seq = self._take_seq()
        self._sock.send(genl.frame(self._family, genl.NLM_F_REQUEST, seq, body))
        reply = self._reply(seq, operation)
        assert reply is not None
        return reply

    def _dump(self, body: bytes, operation: str) -> list[genl.Message]:
        seq = self._take_seq()
        self._sock.send(genl.frame(self._family, genl.NLM_F_REQUEST | genl.NLM_F_DUMP, seq, body))
        out: list[genl.Message] = []
        while True:
            for message in genl.messages(self._sock.recv(RECV_SIZE)):
                if message.seq != seq:
                    continue
                if message.type == genl.NLMSG_DONE:
                    err = genl.error_code(message) if len(message.payload) >= 4 else 0
                    if err:
                        raise error_for(err, operation)
                    return out
                if message.type == genl.NLMSG_ERROR:
                    err = genl.error_code(message)
                    if err:
                        raise error_for(err, operation)
                    continue
                out.append(message)

    # --- reading ----------------------------------------------------------------

    def info(self) -> Info:
        return genl.parse_info(self._request(genl.genl_body(genl.CMD_GET_INFO), "GetInfo"))

    def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        services = [
            genl.parse_service(m, stats=not brief)
            for m in self._dump(genl.genl_body(genl.CMD_GET_SERVICE), "GetService")
        ]
        brief_table = self._brief_destinations() if brief else {}
        entries = []
        for entry in services:
            key = entry.service.key
            if only is not None and key not in only:
                continue
            dests = brief_table.get(table_key(key))
            if dests is None:
                replies = self._dump(genl.get_dests_body(key), "GetDestinations")
                dests = [genl.parse_destination(m, key.family) for m in replies]
            entries.append(ServiceEntry(entry.service, tuple(dests), entry.stats))
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

    def timeouts(self) -> Timeouts:
        return genl.parse_timeouts(
            self._request(genl.genl_body(genl.CMD_GET_CONFIG), "GetTimeouts")
        )

    def daemons(self) -> list[SyncDaemon]:
        replies = self._dump(genl.genl_body(genl.CMD_GET_DAEMON), "GetDaemons")
        return [genl.parse_daemon(m) for m in replies]

    def connections(self) -> list[Connection]:
        try:
            with open(CONN_TABLE) as table:
                text = table.read()
        except FileNotFoundError:
            raise IPVSUnavailable() from None
        return parse_connections(text, CONN_TABLE)

    # --- writing ----------------------------------------------------------------

    def apply(self, operations: Sequence[Operation]) -> None:
        """Apply `operations` in order.

        Every operation is encoded (and so validated) before anything is
        sent: bad input raises genl.InvalidOperation naming the operation
        and changes nothing. Then chunks of operations (up to chunk_bytes of
        messages, and never more than the receive buffer can acknowledge)
        go out one send() each; all acknowledgements of a chunk are read and
        checked before the next chunk is sent. The first chunk with a
        failure ends the batch with NetlinkBatchError (see there for what
        was applied).
        """
        bodies = []
        for index, operation in enumerate(operations):
            try:
                bodies.append(genl.operation_body(operation))
            except genl.InvalidOperation as exc:
                raise genl.InvalidOperation(f"operation {index}: {exc}") from exc
        flags = genl.NLM_F_REQUEST | genl.NLM_F_ACK
        header = genl.NLMSG_HEADER
        family = self._family
        start, total = 0, len(bodies)
        while start < total:
            end, size = start, 0
            limit = min(total, start + self._max_in_flight)
            while end < limit and (
                end == start or size + len(bodies[end]) + 16 <= self._chunk_bytes
            ):
                size += len(bodies[end]) + 16
                end += 1
            first_seq = self._take_seq(end - start)
            chunk = bytearray()
            for offset in range(end - start):
                body = bodies[start + offset]
                chunk += header.pack(16 + len(body), family, flags, first_seq + offset, 0)
                chunk += body
            self._sock.send(chunk)
            failures = self._acknowledgements(first_seq, start, end)
            if failures:
                errors = tuple(
                    (index, error_for(err, type(operations[index]).__name__))
                    for index, err in failures
                )
                index, error = errors[0]
                raise NetlinkBatchError(index, operations[index], error, end, errors)
            start = end

    def _acknowledgements(self, first_seq: int, start: int, end: int) -> list[tuple[int, int]]:
        """Read the acknowledgements of operations start..end-1 (sequence
        numbers from first_seq); return (index, errno) of each failure."""
        pending = end - start
        last_seq = first_seq + pending
        failures: list[tuple[int, int]] = []
        while pending:
            try:
                data = self._sock.recv(RECV_SIZE)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise AcknowledgementsLost(start, end - 1) from exc
                raise
            for message in genl.messages(data):
                if message.type != genl.NLMSG_ERROR or not first_seq <= message.seq < last_seq:
                    continue
                pending -= 1
                err = genl.error_code(message)
                if err:
                    failures.append((start + message.seq - first_seq, err))
        failures.sort()
        return failures
