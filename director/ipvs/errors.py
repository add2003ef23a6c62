"""Kernel IPVS errors as typed exceptions carrying ipvsadm's wording.

ipvsadm turns (operation, errno) into a message with the table in
libipvs/libipvs.c:ipvs_strerror(); the same table is kept here so that
`directorctl` prints what `ipvsadm` prints for the same failure.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

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


class IPVSError(Exception):
    """The kernel refused an IPVS request. str() is ipvsadm's message."""

    def __init__(self, err: int, operation: str | None = None) -> None:
        self.errno = err
        self.operation = operation
        self.message = ipvsadm_message(operation, err)
        super().__init__(self.message)


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
    """The IPVS generic-netlink family is missing (ip_vs not loaded)."""

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


class BatchError(Exception):
    """Operation number `index` of a batch failed; those before it were applied."""

    def __init__(self, index: int, operation: Operation, error: IPVSError) -> None:
        self.index = index
        self.operation = operation
        self.error = error
        super().__init__(f"operation {index} ({operation!r}) failed: {error.message}")
