"""The one place logging is configured: structlog, JSON lines when not on a
terminal (journald, files), human-readable on a terminal. Every state change
is one event with its reason and figures.

A log call never blocks on the output. Events are rendered in the calling
thread (so a line holds the context of the moment it was logged) and handed to
a bounded queue that one writer thread drains into the stream. journald can
stall and stderr can be a pipe nobody reads: then the queue fills, further lines
are dropped and counted, and once there is room again a `log_lines_dropped`
event says how many were lost. Queued lines are written out at exit (atexit)
and by `flush()`, each within a timeout, so a stalled stream cannot hold up the
exit either.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from director.lazyimport import standing_in

# structlog imports asyncio for async loggers directord does not use: it gets
# a stand-in that imports asyncio only if used (1.5 MiB of RSS, issue 8).
with standing_in("asyncio"):
    import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

MAX_QUEUED_LINES = 10_000
# After each write the writer thread waits this long (s) before it looks at
# the queue again, so that a burst of lines costs a few wake-ups, not one
# per line: every wake-up of a thread waiting on the queue made the loop's
# thread hand over the GIL (in the VM at 10,000 servers, 20,000 lines at
# start held probes back for minutes). Lines queue meanwhile.
WRITER_PAUSE = 0.02
LINES_PER_WRITE = 4096  # at most, so that one write stays bounded (about 1 MiB)
FLUSH_TIMEOUT = 5.0  # seconds; at exit and in flush()


def configure(
    level: str = "info",
    stream: TextIO | None = None,
    json: bool | None = None,
    *,
    max_queued: int = MAX_QUEUED_LINES,
) -> None:
    """Log events at `level` ("debug" .. "error") and above to `stream`
    (stderr by default), as JSON lines unless `json` is False or, when it is
    None, the stream is a terminal. At most `max_queued` lines wait for the
    stream; more are dropped and counted. Replaces an earlier configuration
    (its queued lines are flushed first)."""
    global _sink
    out = stream or sys.stderr
    as_json = not out.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    # (No structlog.contextvars.merge_contextvars: nothing binds any, and
    # it copied the task's whole context at every line.)
    processors: list[Any] = [
        structlog.processors.add_log_level,
        _stamp_iso_utc,
        structlog.processors.format_exc_info,
        renderer,
    ]
    with _sink_lock:
        previous, _sink = _sink, QueuedSink(out, _renderer_of(processors), max_queued)
    if previous is not None:
        previous.close(FLUSH_TIMEOUT)
    _set_debugging(LEVELS.get(level, logging.INFO))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=_sink.logger,
        cache_logger_on_first_use=False,
    )


def set_level(level: str) -> None:
    """Log events at `level` ("debug" .. "error") and above from now on, keeping the
    stream and the rendering (a reload's [daemon] log_level). ValueError names an
    unknown level."""
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: one of {', '.join(LEVELS)}")
    _set_debugging(LEVELS[level])
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]))


_debugging = False


def debugging() -> bool:
    """Whether debug events are written: a caller that would log one for
    every probe (10,000 a second) asks first, rather than build the
    event's fields for a filter to drop."""
    return _debugging


def _set_debugging(level: int) -> None:
    global _debugging
    _debugging = level <= logging.DEBUG


def get(name: str) -> Any:
    """The logger `name`: structlog's, bound once for each configuration."""
    return _Logger(name)


class _Logger:
    """structlog's lazy proxy binds a new logger at every call, a third of
    a line's cost (10,000 real_server_up lines at a start): this one binds
    again only when structlog's processors, wrapper (the level) or logger
    factory (the sink) are others than it was bound with (configure,
    set_level, structlog.reset_defaults). structlog.testing.capture_logs
    changes the processors' list in place, which the bound logger holds."""

    __slots__ = ("_bound", "_name", "_under")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None
        self._under: tuple[object, object, object] = (None, None, None)

    def __getattr__(self, method: str) -> Any:
        config = structlog.get_config()
        processors, wrapper, factory = self._under
        if (
            config["processors"] is not processors
            or config["wrapper_class"] is not wrapper
            or config["logger_factory"] is not factory
        ):
            self._bound = structlog.get_logger(self._name).bind()
            self._under = (config["processors"], config["wrapper_class"], config["logger_factory"])
        return getattr(self._bound, method)


def flush(timeout: float = FLUSH_TIMEOUT) -> bool:
    """Wait until every line logged so far is written (True), or `timeout`
    seconds pass (False: the stream is stalled; the lines stay queued)."""
    sink = _sink
    return True if sink is None else sink.flush(timeout)


def close(timeout: float = FLUSH_TIMEOUT) -> bool:
    """On a clean stop: write out what is queued and stop the writer thread (each
    step within `timeout` s); False when the stream stalled and lines were left.
    Lines logged afterwards are dropped until the next `configure()`."""
    global _sink
    with _sink_lock:
        sink, _sink = _sink, None
    return True if sink is None else sink.close(timeout)


def dropped() -> int:
    """Lines dropped since the last `log_lines_dropped` report (0 when none)."""
    sink = _sink
    return 0 if sink is None else sink.dropped


# One encoder for every line: json.dumps with keyword arguments (structlog's
# default and sort_keys) builds a new JSONEncoder at each call, a third of
# the rendering of a line.
_ENCODER = json.JSONEncoder(default=repr)


def _json_line(event: dict[str, Any], **_structlog_kw: object) -> str:
    """JSONRenderer's serializer: json.dumps' text, keys in the order logged,
    a value JSON has no type for as its repr()."""
    return _ENCODER.encode(event)


_second_stamp: tuple[int, str] = (-1, "")  # one tuple: threads swap it whole


def _stamp_iso_utc(_logger: object, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog's TimeStamper(fmt="iso", utc=True) ("2026-12-02T14:24:41.273532Z"),
    the date and time of day formatted once a second, not at every line: a
    start that logs 10,000 operations spent an eighth of each line's time
    there. Always six digits of microseconds, where datetime's isoformat()
    leaves out a fraction of 0: a whole second reads ".000000Z"."""
    global _second_stamp
    now = time.time()
    second = int(now)
    micro = round((now - second) * 1e6)  # half to even, as datetime rounds
    if micro == 1_000_000:
        second, micro = second + 1, 0
    cached, text = _second_stamp
    if second != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_stamp = (second, text)
    event["timestamp"] = f"{text}.{micro:06d}Z"
    return event


def _renderer_of(processors: Sequence[Any]) -> Callable[[str, dict[str, Any]], str]:
    def render(method: str, event: dict[str, Any]) -> str:
        value: Any = event
        for processor in processors:
            value = processor(None, method, value)
        return str(value)

    return render


class _Flushed:
    """Queued behind the lines to wait for; the writer sets it once it gets there."""

    def __init__(self) -> None:
        self.done = threading.Event()


class _Stop:
    pass


class QueuedSink:
    """A bounded queue of rendered lines and the thread that writes them to `stream`.

    `put` never blocks: a line that finds the queue full is dropped and counted,
    and the next line that finds room for two is preceded by a
    `log_lines_dropped` event (rendered with `render`) carrying the count.
    A `put` costs an append to a deque; the writer is woken only when it
    waits for lines (a queue.Queue woke it through a condition at every
    line, a GIL handover each time).
    """

    def __init__(
        self,
        stream: TextIO,
        render: Callable[[str, dict[str, Any]], str],
        max_queued: int,
        *,
        pause: Callable[[], object] = lambda: time.sleep(WRITER_PAUSE),
    ) -> None:
        """`pause` is called by the writer thread after each write (by default
        it sleeps WRITER_PAUSE seconds)."""
        if max_queued < 2:
            raise ValueError(f"max_queued must be at least 2, not {max_queued}")
        self._stream = stream
        self._render = render
        self._items: deque[str | _Flushed | _Stop] = deque()
        self._max = max_queued
        self._pause = pause
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = False  # the writer waits for `_wake`
        self.dropped = 0
        self.write_errors = 0
        self._thread = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._thread.start()

    def logger(self, *_args: object) -> QueuedLogger:
        """structlog's logger_factory."""
        return QueuedLogger(self)

    def put(self, line: str) -> None:
        items = self._items
        with self._lock:
            if self.dropped and len(items) <= self._max - 2:
                items.append(
                    self._render("warning", {"event": "log_lines_dropped", "dropped": self.dropped})
                )
                self.dropped = 0
            if len(items) >= self._max:
                self.dropped += 1
                return
            items.append(line)
        if self._idle:
            self._wake.set()

    def flush(self, timeout: float) -> bool:
        marker = _Flushed()
        self._control(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float) -> bool:
        """Flush, then stop the writer thread (each step within `timeout`); False
        when the stream stalled."""
        if not self.flush(timeout):
            return False
        self._control(_Stop())
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _control(self, item: _Flushed | _Stop) -> None:
        self._items.append(item)
        self._wake.set()

    def _write(self) -> None:
        items = self._items
        while True:
            if not items:
                self._idle = True
                if not items:  # again, now that a put will wake us
                    self._wake.wait()
                self._wake.clear()
                self._idle = False
                continue
            waiting: list[_Flushed] = []
            stop = False
            lines: list[str] = []
            # Everything already queued goes out in one write and one flush.
            while items and not stop and len(lines) < LINES_PER_WRITE:
                item = items.popleft()
                if isinstance(item, _Flushed):
                    waiting.append(item)
                elif isinstance(item, _Stop):
                    stop = True
                else:
                    lines.append(item)
            if lines:
                self._emit("\n".join(lines) + "\n")
            for marker in waiting:
                marker.done.set()
            if stop:
                return
            if lines:
                self._pause()

    def _emit(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or broken stream (journald gone): nothing left to tell.
            self.write_errors += 1


class QueuedLogger:
    """What structlog calls with a rendered line, for every level."""

    def __init__(self, sink: QueuedSink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink.put(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


@dataclass
class RateLimit:
    """At most one log line per `interval` seconds for an event that can recur
    without end (a failing accept, a probe bug). Owned by one task.

    `allow(now)` (now in seconds, any monotonic clock) is the number of
    occurrences suppressed since the last line when this one may be logged,
    or None when it must not.
    """

    interval: float
    _last: float | None = None
    _suppressed: int = 0

    def allow(self, now: float) -> int | None:
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return None
        suppressed, self._suppressed, self._last = self._suppressed, 0, now
        return suppressed


_sink: QueuedSink | None = None
_sink_lock = threading.Lock()


@atexit.register
def _flush_at_exit() -> None:
    flush(FLUSH_TIMEOUT)
