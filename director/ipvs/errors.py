"""Everything the kernel seam raises, as one tree, with ipvsadm's wording.

    KernelError                  any failure of a call to the kernel's IPVS table
    ├── IPVSError                the kernel refused a request (`.errno`); str() is
    │   │                        ipvsadm's message (libipvs/libipvs.c:ipvs_strerror)
    │   ├── ServiceExists, NoSuchService, DestinationExists,
    │   │   NoSuchDestination, SchedulerNotFound, DaemonError
    │   └── IPVSUnavailable      no IPVS generic-netlink family (ip_vs not loaded)
    ├── TransientKernelError     worth retrying as it is (`.errno`: ENOBUFS, EAGAIN, ...)
    │   ├── DumpInterrupted      a dump changed under the reader (NLM_F_DUMP_INTR),
    │   │                        or lost messages (ENOBUFS): read again
    │   └── AcknowledgementsLost acknowledgements of a write were lost: whether
    │                            those operations were applied is unknown (read back)
    ├── InvalidOperation         the encoder refuses a value no attribute can carry;
    │                            nothing of that operation was sent
    ├── KernelReplyError         a reply the codec cannot read (truncated, malformed,
    │   │                        a required attribute missing)
    │   └── UnrepresentableEntry an entry the model cannot hold (an unknown
    │                            address family): left out of a listing, not raised
    └── BatchError               operation `.index` of apply() failed with `.error`
                                 (a KernelError); the ones before it were applied

A seam catches KernelError (or a branch: TransientKernelError to retry) and lets
nothing else out: OSError from the socket and ValueError from the codec are
translated where they arise (director.ipvs.netlink, director.ipvs.genl).
ipvsadm turns (operation, errno) into a message with the table in
libipvs/libipvs.c:ipvs_strerror(); the same table is kept here so that
`directorctl` prints what `ipvsadm` prints for the same failure.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from director.ipvs.oplog import describe_operation

if TYPE_CHECKING:
    from director.ipvs.ops import Operation


# Keys are the operation class names of director.ipvs.ops (ipvsadm's libipvs
# function in the comment); None matches any operation.
_MESSAGES: dict[tuple[str | None, int], str] = {
    ("AddService", errno.EEXIST): "Service already exists",
    ("AddService", errno.ENOENT): "Scheduler or persistence engine not found",
    ("EditService", errno.ESRCH): "No such service",
    ("EditService", errno.ENOENT): "Scheduler or persistence engine not found",
    ("DeleteService", errno.ESRCH): "No such service",
    ("Zero", errno.ESRCH): "No such service",
    ("GetService", errno.ESRCH): "No such service",
    ("AddDestination", errno.ESRCH): "Service not defined",
    ("AddDestination", errno.EEXIST): "Destination already exists",
    ("EditDestination", errno.ESRCH): "Service not defined",
    ("EditDestination", errno.ENOENT): "No such destination",
    ("DeleteDestination", errno.ESRCH): "Service not defined",
    ("DeleteDestination", errno.ENOENT): "No such destination",
    ("StartDaemon", errno.EEXIST): "Daemon has already run",
    ("StopDaemon", errno.ESRCH): "No daemon is running",
    (None, errno.EPERM): "Permission denied (you must be root)",
    (
        None,
        errno.EINVAL,
    ): "Invalid operation.  Possibly wrong module version, address not unicast, ...",
    (None, errno.ENOPROTOOPT): "Protocol not available",
    (None, errno.ENOMEM): "Memory allocation problem",
    (None, errno.EOPNOTSUPP): "Operation not supported with IPv6",
    (None, errno.EAFNOSUPPORT): "Operation not supported with specified address family",
    (None, errno.EMSGSIZE): "Module is wrong version",
}


def ipvsadm_message(operation: str | None, err: int) -> str:
    """ipvsadm's text for errno `err` from `operation` (an ops class name)."""
    for key in ((operation, err), (None, err)):
        if key in _MESSAGES:
            return _MESSAGES[key]
    return os.strerror(err)


class KernelError(Exception):
    """The root of everything the kernel seam raises. `message` is the text
    for an operator (what directorctl prints, what a log line carries)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class IPVSError(KernelError):
    """The kernel refused an IPVS request with `errno`. str() is ipvsadm's
    message; `operation` is the ops class name (None: any)."""

    def __init__(self, err: int, operation: str | None = None) -> None:
        super().__init__(ipvsadm_message(operation, err))
        self.errno = err
        self.operation = operation


class ServiceExists(IPVSError):
    pass


class NoSuchService(IPVSError):
    pass


class DestinationExists(IPVSError):
    pass


class NoSuchDestination(IPVSError):
    pass


class SchedulerNotFound(IPVSError):
    pass


class DaemonError(IPVSError):
    pass


class IPVSUnavailable(IPVSError):
    """The IPVS generic-netlink family is missing (ip_vs not loaded), or its
    /proc files are."""

    def __init__(self) -> None:
        super().__init__(errno.ENOENT, None)
        self.message = "Can't initialize ipvs: Protocol not available (is the ip_vs module loaded?)"
        self.args = (self.message,)


def error_for(err: int, operation: str | None) -> IPVSError:
    """The most specific IPVSError for errno `err` returned to `operation`."""
    message = ipvsadm_message(operation, err)
    cls: type[IPVSError] = {
        "Service already exists": ServiceExists,
        "No such service": NoSuchService,
        "Service not defined": NoSuchService,
        "Destination already exists": DestinationExists,
        "No such destination": NoSuchDestination,
        "Scheduler or persistence engine not found": SchedulerNotFound,
        "Daemon has already run": DaemonError,
        "No daemon is running": DaemonError,
    }.get(message, IPVSError)
    return cls(err, operation)


class TransientKernelError(KernelError):
    """A failure that says nothing about the request itself (`errno`: ENOBUFS,
    EAGAIN, ENOMEM, ... from the socket): the same call may well succeed if
    made again."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


class DumpInterrupted(TransientKernelError):
    """A dump is not a consistent snapshot: the table changed while the
    kernel was sending it (a message carried NLM_F_DUMP_INTR, see
    netlink's nl_dump_check_consistent), or messages were lost (ENOBUFS).
    Nothing was written; read again."""

    def __init__(self, what: str, err: int = errno.EINTR) -> None:
        reason = (
            "the table changed while it was read"
            if err == errno.EINTR
            else f"messages were lost ({os.strerror(err)})"
        )
        super().__init__(err, f"dump of {what} interrupted: {reason}")
        self.what = what


class AcknowledgementsLost(TransientKernelError):
    """The kernel dropped acknowledgements (receive buffer overflow, ENOBUFS,
    or none came in time, EAGAIN): whether operations first..last were
    applied is unknown; dump the table. `known` holds the outcomes of the
    operations before `first` (None: applied), where the caller collects
    them (apply_each)."""

    def __init__(
        self,
        first: int,
        last: int,
        known: tuple[KernelError | None, ...] = (),
        err: int = errno.ENOBUFS,
    ) -> None:
        super().__init__(
            err,
            f"netlink acknowledgements of operations {first}..{last} were lost "
            f"({os.strerror(err)}): their outcome is unknown (dump the table)",
        )
        self.first = first
        self.last = last
        self.known = known


class InvalidOperation(KernelError, ValueError):
    """An operation cannot be expressed to the kernel: a value its attribute
    cannot carry (out of a u16/u32 range, a name too long), an address of the
    wrong family. Raised by director.ipvs.genl before anything is sent."""


class KernelReplyError(KernelError):
    """A reply the codec cannot read: truncated, malformed, an attribute
    missing, or an entry that cannot be represented (see
    director.ipvs.genl)."""


class UnrepresentableEntry(KernelReplyError):
    """A dumped entry the model cannot hold: an address in a family that is
    neither AF_INET nor AF_INET6 (a kernel newer than this code). A backend
    leaves such an entry out of a listing and keeps this error in its
    `skipped` list rather than fail the whole read: the daemon never wrote
    it, so it never manages it."""


class BatchError(KernelError):
    """Operation number `index` of a batch failed with `error`; those before
    it were applied."""

    def __init__(self, index: int, operation: Operation, error: KernelError) -> None:
        fields = describe_operation(operation)
        what = " ".join([str(fields.pop("op")), *(f"{k}={v}" for k, v in fields.items())])
        super().__init__(f"operation {index} ({what}) failed: {error.message}")
        self.index = index
        self.operation = operation
        self.error = error
