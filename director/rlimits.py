"""The process's open-file limit, which bounds how many probes can run at once
(each TCP, HTTP or UDP probe holds a socket, an exec probe a few pipes)."""

from __future__ import annotations

import resource

NR_OPEN = "/proc/sys/fs/nr_open"


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force,
    a number of descriptors (getrlimit(2), setrlimit(2)).

    systemd starts services with a soft limit of 1024 whatever LimitNOFILE's hard
    limit (systemd.exec(5), "LimitNOFILE=": for programs that still use select(),
    which a trio program never does on its own descriptors), so the hard limit is
    safe to take. A hard limit of RLIM_INFINITY stands for the most the kernel
    allows, /proc/sys/fs/nr_open (fs/file.c, sysctl_nr_open; setrlimit refuses
    more with EPERM). Never lowers the limit and never raises: when the kernel
    refuses, the soft limit stays as it was and that is returned.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open(default=soft)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _finite(soft)


def _finite(limit: int) -> int:
    return _nr_open(default=1 << 20) if limit == resource.RLIM_INFINITY else limit


def _nr_open(default: int) -> int:
    try:
        with open(NR_OPEN, encoding="ascii") as value:
            return int(value.read())
    except (OSError, ValueError):
        return default
