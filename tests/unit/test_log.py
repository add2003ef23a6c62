"""director.log: a log call never waits for the stream; what cannot be queued is
counted and reported; everything queued is written at exit."""

import datetime
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import structlog.testing
import trio

from director import log
from director.log import QueuedSink, RateLimit


@pytest.fixture(autouse=True)
def unconfigure() -> Iterator[None]:
    yield
    log.close(timeout=5)
    structlog.reset_defaults()


class GatedStream(io.StringIO):
    """A stream whose writes wait until `gate` is set; `entered` is set while one waits."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.gate.wait()
        return super().write(text)

    def isatty(self) -> bool:
        return False


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


async def test_a_writer_blocked_on_a_full_pipe_does_not_block_a_task_that_logs() -> None:
    read_end, write_end = os.pipe()
    fill(write_end)  # nobody reads: the writer thread's first write blocks
    stream = os.fdopen(write_end, "w", buffering=1)  # line-buffered: its first line blocks
    received: list[bytes] = []
    reader = threading.Thread(target=drain, args=(read_end, received))
    try:
        log.configure("info", stream=stream, json=True, max_queued=100)
        logger = log.get("test")
        total = 5000

        async def chatty() -> None:
            for number in range(total):
                logger.info("filler", number=number)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(chatty)
        assert log.dropped() > 0  # lines were dropped while the writer was blocked
        reader.start()
        assert await trio.to_thread.run_sync(log.flush)
        logger.info("after")
        assert log.close()
    finally:
        # Whatever failed, the pipe is drained so that nothing stays blocked on it.
        if reader.ident is None:
            reader.start()
        log.close()
        stream.close()
        await trio.to_thread.run_sync(reader.join)
    written = events(b"".join(received).decode())
    fillers = [e["number"] for e in written if e["event"] == "filler"]
    reports = [e for e in written if e["event"] == "log_lines_dropped"]
    assert fillers == sorted(fillers)
    # (the writer may still be taking its first batch while the queue overflows)
    assert {e["level"] for e in reports} == {"warning"}
    assert len(fillers) + sum(e["dropped"] for e in reports) == total
    assert [e["event"] for e in written[-2:]] == ["log_lines_dropped", "after"]


def fill(fd: int) -> None:
    """Fill a pipe with newlines until a write would block."""
    os.set_blocking(fd, False)
    try:
        while True:
            os.write(fd, b"\n" * 4096)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)


def drain(fd: int, into: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read1(65536):
            into.append(chunk)


def test_lines_that_find_the_queue_full_are_counted_and_reported_once_there_is_room() -> None:
    stream = GatedStream()
    log.configure("info", stream=stream, json=True, max_queued=10)
    logger = log.get("test")
    logger.info("first")
    assert stream.entered.wait(5)  # the writer holds "first" and waits on the stream
    for number in range(25):
        logger.info("queued", number=number)
    assert log.dropped() == 15
    stream.gate.set()
    assert log.flush()
    logger.warning("room again")
    assert log.flush()
    written = events(stream.getvalue())
    assert [(e["event"], e.get("number"), e.get("dropped")) for e in written] == [
        ("first", None, None),
        *(("queued", n, None) for n in range(10)),
        ("log_lines_dropped", None, 15),
        ("room again", None, None),
    ]
    assert log.dropped() == 0


def test_capture_logs_still_captures_and_the_stream_gets_nothing() -> None:
    stream = GatedStream()
    stream.gate.set()
    log.configure("info", stream=stream, json=True)
    with structlog.testing.capture_logs() as captured:
        log.get("test").info("seen", figure=3)
    assert captured == [{"event": "seen", "figure": 3, "log_level": "info"}]
    assert log.flush()
    assert stream.getvalue() == ""


def test_a_logger_bound_before_follows_a_new_stream_and_a_capture() -> None:
    """log.get's logger binds once per configuration (structlog's lazy proxy
    binds at every call): one used before a configure() writes to the new
    stream, and one used before capture_logs is captured."""
    first, second = GatedStream(), GatedStream()
    first.gate.set()
    second.gate.set()
    log.configure("info", stream=first, json=True)
    logger = log.get("test")
    logger.info("one")
    log.configure("info", stream=second, json=True)
    logger.info("two")
    with structlog.testing.capture_logs() as captured:
        logger.info("three", figure=3)
    logger.info("four")
    assert log.flush()
    assert [e["event"] for e in events(first.getvalue())] == ["one"]
    assert [e["event"] for e in events(second.getvalue())] == ["two", "four"]
    assert captured == [{"event": "three", "figure": 3, "log_level": "info"}]


def test_level_filter_and_rendering() -> None:
    stream = GatedStream()
    stream.gate.set()
    log.configure("warning", stream=stream, json=True)
    logger = log.get("test")
    logger.info("hidden")
    logger.warning("shown", vs="TCP 10.0.0.1:80")
    assert log.flush()
    [shown] = events(stream.getvalue())
    assert shown["event"] == "shown"
    assert shown["level"] == "warning"
    assert shown["vs"] == "TCP 10.0.0.1:80"
    assert shown["timestamp"].endswith("Z")


def test_a_line_is_the_one_structlog_own_stamper_and_renderer_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cached date and time of day, and the one encoder, change the cost
    of a line, not its text: the same line as TimeStamper(fmt="iso",
    utc=True) and JSONRenderer() give, at a second's edges and within one
    (but for a whole second's ".000000"), a value JSON has no type for
    shown as its repr."""
    stream = GatedStream()
    stream.gate.set()
    log.configure("info", stream=stream, json=True)
    logger = log.get("test")
    fields = {"vs": "TCP 10.0.0.1:80", "weight": 1, "up": True, "none": None, "odd": {1, 2} - {1}}
    instants = [1_764_684_281.0, 1_764_684_281.273532, 1_764_684_281.999999, 1_764_684_282.5]
    for instant in instants:
        monkeypatch.setattr(log.time, "time", lambda instant=instant: instant)
        logger.info("ipvs_op", **fields)
    assert log.flush()
    # TimeStamper(fmt="iso", utc=True)'s own expression (structlog/processors.py).
    stamps = [
        datetime.datetime.fromtimestamp(instant, tz=datetime.UTC).isoformat().replace("+00:00", "Z")
        for instant in instants
    ]
    # A whole second: datetime leaves the fraction out, directord writes it.
    assert stamps[0] == "2025-12-02T14:04:41Z"
    stamps[0] = "2025-12-02T14:04:41.000000Z"
    render = structlog.processors.JSONRenderer()
    expected = [
        render(None, "info", {**fields, "event": "ipvs_op", "level": "info", "timestamp": stamp})
        for stamp in stamps
    ]
    assert stream.getvalue().splitlines() == expected
    assert stamps[1:] == [
        "2025-12-02T14:04:41.273532Z",
        "2025-12-02T14:04:41.999999Z",
        "2025-12-02T14:04:42.500000Z",
    ]


def test_the_stamp_rounds_to_the_microsecond_as_datetime_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Across a few seconds in uneven steps (fractions a float cannot hold,
    halves, the last microsecond of a second): datetime's text each time."""
    for step in range(5000):
        instant = 1_764_684_281.0 + step * 0.000731 + (0.0000005 if step % 7 == 0 else 0.0)
        monkeypatch.setattr(log.time, "time", lambda instant=instant: instant)
        stamp = datetime.datetime.fromtimestamp(instant, tz=datetime.UTC).isoformat()
        stamp = (
            stamp.replace("+00:00", "Z") if "." in stamp else stamp.replace("+00:00", ".000000Z")
        )
        assert log._stamp_iso_utc(None, "info", {}) == {"timestamp": stamp}, instant


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_broken_stream_never_reaches_the_caller() -> None:
    sink = QueuedSink(BrokenStream(), lambda method, event: str(event), max_queued=4)
    sink.put("one")
    assert sink.flush(5)
    assert sink.write_errors == 1
    assert sink.close(5)


def test_everything_queued_is_written_at_exit() -> None:
    program = (
        "from director import log\n"
        "log.configure('info', json=True)\n"
        "logger = log.get('test')\n"
        "for n in range(3000):\n"
        "    logger.info('line', n=n)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert [e["n"] for e in events(done.stderr)] == list(range(3000))


def test_a_queue_must_hold_a_line_and_a_report() -> None:
    with pytest.raises(ValueError, match="max_queued must be at least 2, not 1"):
        QueuedSink(io.StringIO(), lambda method, event: "", max_queued=1)


def test_rate_limit_allows_one_line_per_interval_and_counts_the_rest() -> None:
    limit = RateLimit(10.0)
    verdicts = [limit.allow(now) for now in (0.0, 1.0, 9.9, 10.0, 12.0, 19.9, 25.0, 40.0)]
    assert verdicts == [0, None, None, 2, None, None, 2, 0]


def test_set_level_changes_the_filter_and_keeps_the_stream() -> None:
    stream = GatedStream()
    stream.gate.set()
    log.configure("warning", stream=stream, json=True)
    logger = log.get("test")
    logger.info("before")
    log.set_level("debug")
    logger.debug("after")
    assert log.flush()
    assert [e["event"] for e in events(stream.getvalue())] == ["after"]
    with pytest.raises(ValueError, match="unknown log level 'loud': one of debug, info"):
        log.set_level("loud")


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_a_burst_of_lines_costs_the_writer_few_writes() -> None:
    """While the writer pauses after a write, lines queue up; the next look
    at the queue writes them LINES_PER_WRITE to a write, not one wake-up per
    line."""
    stream = CountingStream()
    paused, resume = threading.Event(), threading.Event()

    def pause() -> None:
        paused.set()
        resume.wait(10)

    sink = QueuedSink(stream, lambda method, event: str(event), max_queued=20_000, pause=pause)
    sink.put("first")
    assert paused.wait(10)
    for n in range(10_000):
        sink.put(f"line {n}")
    resume.set()
    assert sink.close(10)
    assert stream.getvalue().splitlines() == ["first", *(f"line {n}" for n in range(10_000))]
    assert log.LINES_PER_WRITE == 4096
    assert stream.writes == 1 + 3  # "first", then 4,096 + 4,096 + 1,808 lines


def test_debugging_follows_the_level_set() -> None:
    """What a caller asks before building a line for every probe."""
    stream = GatedStream()
    stream.gate.set()
    log.configure("debug", stream=stream, json=True)
    assert log.debugging()
    log.set_level("info")
    assert not log.debugging()
    log.set_level("debug")
    assert log.debugging()
    log.configure("warning", stream=stream, json=True)
    assert not log.debugging()
