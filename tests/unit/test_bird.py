"""director/bird.py without a BIRD running: its log lines into our levels,
the config file written (0600, atomic), a stale BIRD of ours found by its
pid file and stopped (and nobody else's), and birdc's own refusal read
back. BIRD running for real is in tests/kernel/test_bgp.py."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from ipaddress import ip_address
from pathlib import Path

import pytest
import structlog.testing
import trio

from director import bird
from director.bgp import SpeakerError
from director.bird import Bird, bird_log_level, paths, stop_stale, write_config
from director.config.model import BgpPeer, BgpSettings

# -- BIRD's log lines ------------------------------------------------------------------------

# Lines of BIRD 2.0.12's stderr (log stderr, debug { states }) with a config
# from director.bgp.render, captured on this project's host.
CAPTURED = [
    (
        "2026-12-01 02:13:38.141 <TRACE> peer_10_77_0_1: Initializing",
        ("debug", "peer_10_77_0_1: Initializing"),
    ),
    (
        "2026-12-01 02:13:38.141 <TRACE> peer_10_77_0_1: State changed to start",
        ("info", "peer_10_77_0_1: State changed to start"),
    ),
    (
        "2026-12-01 02:13:39.074 <TRACE> peer_10_77_0_1: State changed to up",
        ("info", "peer_10_77_0_1: State changed to up"),
    ),
    ("2026-12-01 02:13:38.141 <INFO> Started", ("info", "Started")),
    ("2026-12-01 02:13:42.138 <INFO> Reconfiguring", ("info", "Reconfiguring")),
    (
        "2026-12-01 02:13:42.138 <TRACE> peer_10_77_0_1: Reconfigured",
        ("debug", "peer_10_77_0_1: Reconfigured"),
    ),
    (
        "2026-12-01 02:13:42.138 <WARN> peer_10_77_0_1: Start delay time option is deprecated, "
        "use connect delay time",
        (
            "warning",
            "peer_10_77_0_1: Start delay time option is deprecated, use connect delay time",
        ),
    ),
    (
        "2026-12-01 02:13:42.145 <RMT> peer_fd00_77__1: Received: Administrative shutdown",
        ("warning", "peer_fd00_77__1: Received: Administrative shutdown"),
    ),
    ("2026-12-01 02:13:44.150 <INFO> Shutting down", ("info", "Shutting down")),
    (
        "2026-12-01 02:13:44.150 <TRACE> peer_10_77_0_1: Shutting down",
        ("debug", "peer_10_77_0_1: Shutting down"),
    ),
    # Said on reading the config, before BIRD's log is set up: no time, no class.
    (
        "bird: peer_10_77_0_1: Start delay time option is deprecated, use connect delay time",
        (
            "info",
            "bird: peer_10_77_0_1: Start delay time option is deprecated, use connect delay time",
        ),
    ),
    (
        "bird: /run/director/bgp/bird.conf:30:1 Neighbor must be configured",
        ("info", "bird: /run/director/bgp/bird.conf:30:1 Neighbor must be configured"),
    ),
]


@pytest.mark.parametrize(("line", "expected"), CAPTURED)
def test_bird_log_lines_captured(line: str, expected: tuple[str, str]) -> None:
    assert bird_log_level(line) == expected


@pytest.mark.parametrize(
    ("klass", "level"),
    [
        ("TRACE", "debug"),
        ("DBG", "debug"),
        ("INFO", "info"),
        ("RMT", "warning"),
        ("WARN", "warning"),
        ("ERR", "error"),
        ("AUTH", "error"),
        ("BUG", "error"),
        ("SOMETHING", "info"),  # a class this module does not know: kept, at info
    ],
)
def test_each_bird_log_class_has_a_level(klass: str, level: str) -> None:
    line = f"2026-12-01 02:13:38.141 <{klass}> peer_10_9_0_1: a message"
    assert bird_log_level(line) == (level, "peer_10_9_0_1: a message")


def test_a_clean_shutdown_is_not_an_error() -> None:
    # BIRD logs the end of every clean stop in its FATAL class (so that it
    # is always shown); directord stops BIRD at each of its own clean stops
    # and at each change of runtime_dir: that is no error.
    level, message = bird_log_level("2026-12-01 02:13:44.151 <FATAL> Shutdown completed")
    assert message == "Shutdown completed"
    assert level == "info"


def test_a_fatal_error_stays_an_error() -> None:
    line = "2026-12-01 02:13:44.151 <FATAL> Cannot create control socket: Address in use"
    assert bird_log_level(line) == ("error", "Cannot create control socket: Address in use")


def test_lines_without_a_class_are_kept_whole() -> None:
    assert bird_log_level("") == ("info", "")
    assert bird_log_level("something <odd") == ("info", "something <odd")
    assert bird_log_level("x <y>z") == ("info", "x <y>z")


# -- the config file -----------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_config_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    conf = tmp_path / "bird.conf"
    old = os.umask(0)
    try:
        write_config(conf, "router id 10.9.0.11;\n")
    finally:
        os.umask(old)
    assert conf.read_text() == "router id 10.9.0.11;\n"
    assert mode(conf) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bird.conf"]


def test_write_config_replaces_the_file_at_once(tmp_path: Path) -> None:
    conf = tmp_path / "bird.conf"
    conf.write_text("old\n")
    conf.chmod(0o644)
    before = conf.stat().st_ino
    with conf.open() as reader:  # BIRD reading the old one meanwhile
        write_config(conf, "new\n")
        assert reader.read() == "old\n"  # never a half-written file
    assert conf.read_text() == "new\n"
    assert conf.stat().st_ino != before  # a new file renamed over the old one
    assert mode(conf) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bird.conf"]


def test_write_config_is_0600_even_over_a_leftover_temporary_file(tmp_path: Path) -> None:
    # A directord killed between the open and the rename leaves bird.conf.new
    # behind; the next write must not inherit its mode (a peer's password is
    # in the file).
    conf = tmp_path / "bird.conf"
    leftover = tmp_path / "bird.conf.new"
    leftover.write_text("half")
    leftover.chmod(0o644)
    write_config(conf, 'protocol bgp p { password "s3cret"; }\n')
    assert conf.read_text() == 'protocol bgp p { password "s3cret"; }\n'
    assert mode(conf) == 0o600


def test_a_failed_write_leaves_the_old_config(tmp_path: Path) -> None:
    conf = tmp_path / "bird.conf"
    write_config(conf, "old\n")
    (tmp_path / "bird.conf.new").mkdir()  # the temporary file cannot be opened
    with pytest.raises(OSError):
        write_config(conf, "new\n")
    assert conf.read_text() == "old\n"


def test_paths_are_in_the_runtime_dir() -> None:
    settings = BgpSettings(65001, (BgpPeer(ip_address("10.9.0.1"), 65000),), runtime_dir="/run/x")
    assert paths(settings) == (
        Path("/run/x/bird.conf"),
        Path("/run/x/bird.ctl"),
        Path("/run/x/bird.pid"),
    )


# -- a stale BIRD ------------------------------------------------------------------------------


@contextmanager
def process(*args: str, ignore_term: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """A python child sleeping 60 s with `args` on its command line (where
    BIRD has `-c CONF`), reaped by a thread as soon as it ends (as init
    reaps a BIRD whose directord died); killed at the end of the block."""
    code = "import signal, sys, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(60)\n"
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)
    reaper = threading.Thread(target=child.wait, daemon=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"  # its signal handling is set
        reaper.start()
        yield child
    finally:
        if child.returncode is None:
            with suppress(ProcessLookupError):
                child.kill()
        if reaper.is_alive():
            reaper.join(10)
        else:
            child.wait(10)
        assert child.stdout is not None
        child.stdout.close()


def alive(child: subprocess.Popen[bytes]) -> bool:
    return Path(f"/proc/{child.pid}").exists() and child.returncode is None


def test_a_stale_bird_of_this_runtime_dir_is_stopped(tmp_path: Path) -> None:
    conf, pidfile = tmp_path / "bird.conf", tmp_path / "bird.pid"
    with process("-f", "-c", str(conf), "-s", str(tmp_path / "bird.ctl")) as child:
        pidfile.write_text(f"{child.pid}\n")
        stop_stale(pidfile, conf)
        assert not alive(child)
        assert child.wait(5) == -signal.SIGTERM


def test_a_stale_bird_deaf_to_sigterm_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bird, "STOP_GRACE", 0.2)
    conf, pidfile = tmp_path / "bird.conf", tmp_path / "bird.pid"
    with process("-c", str(conf), ignore_term=True) as child:
        pidfile.write_text(f"{child.pid}\n")
        stop_stale(pidfile, conf)
        assert not alive(child)
        # /proc/PID goes at the reap, a moment before Popen records the status
        assert child.wait(5) == -signal.SIGKILL


@pytest.mark.parametrize(
    "args",
    [
        ("-c", "/run/other/bird.conf"),  # another BIRD
        ("-c", "{conf}.old"),  # a path that only begins like ours
        ("--config={conf}",),  # our path inside another word
        (),
    ],
    ids=["other-conf", "prefix", "inside-a-word", "no-args"],
)
def test_a_process_not_naming_the_conf_is_left_alone(tmp_path: Path, args: tuple[str]) -> None:
    # The pid file is old, and the pid now someone else's.
    conf, pidfile = tmp_path / "bird.conf", tmp_path / "bird.pid"
    with process(*(a.format(conf=conf) for a in args)) as child:
        pidfile.write_text(f"{child.pid}\n")
        stop_stale(pidfile, conf)
        assert alive(child)


@pytest.mark.parametrize(
    "content", [None, "", "not a pid\n", "-1\n", "99999999\n", "0x10\n"], ids=repr
)
def test_no_stale_bird_without_a_usable_pid_file(tmp_path: Path, content: str | None) -> None:
    conf, pidfile = tmp_path / "bird.conf", tmp_path / "bird.pid"
    if content is not None:
        pidfile.write_text(content)
    with process("-c", str(conf)) as bystander:
        stop_stale(pidfile, conf)  # returns, raises nothing
        assert alive(bystander)


# -- birdc ------------------------------------------------------------------------------------

BIRDC = shutil.which("birdc")


def settings_in(runtime_dir: Path, birdc: str = "birdc") -> BgpSettings:
    return BgpSettings(
        65001,
        (BgpPeer(ip_address("10.9.0.1"), 65000),),
        birdc=birdc,
        runtime_dir=str(runtime_dir),
    )


@pytest.mark.skipif(BIRDC is None, reason="birdc (Debian's bird2) is not installed")
async def test_birdc_without_a_bird_says_why_in_its_words(tmp_path: Path) -> None:
    assert BIRDC is not None
    with pytest.raises(SpeakerError) as info:
        await Bird().protocols(settings_in(tmp_path, BIRDC))
    assert str(info.value) == (
        f"birdc show protocols: Unable to connect to server control socket "
        f"({tmp_path}/bird.ctl): No such file or directory"
    )
    with pytest.raises(SpeakerError) as info:
        await Bird().configure(settings_in(tmp_path, BIRDC), "router id 10.9.0.11;\n")
    assert str(info.value).startswith("birdc configure: Unable to connect")
    assert (tmp_path / "bird.conf").read_text() == "router id 10.9.0.11;\n"  # written first
    assert mode(tmp_path / "bird.conf") == 0o600


async def test_a_missing_birdc_is_a_speaker_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-birdc")
    with pytest.raises(SpeakerError) as info:
        await Bird().protocols(settings_in(tmp_path, missing))
    assert str(info.value) == f"cannot run {missing}: No such file or directory"


async def test_a_config_that_cannot_be_written_is_a_speaker_error(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    with pytest.raises(SpeakerError) as info:
        await Bird().configure(settings_in(gone), "x\n")
    assert str(info.value) == f"{gone}/bird.conf: No such file or directory"


# -- Bird.run with a stand-in for BIRD ----------------------------------------------------------

FAKE_BIRD = """#!{python}
# A stand-in for `bird -f -c CONF -s SOCKET -P PIDFILE`: {what}
import os, signal, socket, sys

args = sys.argv[1:]
conf, path, pidfile = (args[args.index(flag) + 1] for flag in ("-c", "-s", "-P"))
def say(text):
    print(text, file=sys.stderr, flush=True)
if {refuse}:
    say("bird: " + conf + ":3:1 syntax error, unexpected '%'")
    sys.exit(1)
def stop(signum, frame):
    say("2026-12-01 02:13:44.150 <INFO> Shutting down")
    say("2026-12-01 02:13:44.151 <FATAL> Shutdown completed")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
with open(pidfile, "w") as f:
    f.write(str(os.getpid()) + "\\n")
if os.path.exists(path):  # as BIRD does: a socket left by an earlier one
    os.unlink(path)
server = socket.socket(socket.AF_UNIX)
server.bind(path)
server.listen()
say("2026-12-01 02:13:38.141 <TRACE> peer_10_9_0_1: Initializing")
say("2026-12-01 02:13:38.141 <INFO> Started")
while True:
    connection, _ = server.accept()
    connection.sendall(b"0001 BIRD 2.0.12 ready.\\n")
    connection.close()
    if {exit_after_start}:
        say("2026-12-01 02:13:39.000 <ERR> out of memory")
        sys.exit(3)
"""


def fake_bird(tmp_path: Path, *, refuse: bool = False, exit_after_start: bool = False) -> str:
    script = tmp_path / "fake-bird"
    script.write_text(
        FAKE_BIRD.format(
            python=sys.executable,
            what=(refuse and "refuses its config")
            or (exit_after_start and "exits once it has answered")
            or "runs until SIGTERM",
            refuse=refuse,
            exit_after_start=exit_after_start,
        )
    )
    script.chmod(0o755)
    return str(script)


def cmdline_of(pid: int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None


def bird_settings(tmp_path: Path, bird_path: str) -> BgpSettings:
    return BgpSettings(
        65001,
        (BgpPeer(ip_address("10.9.0.1"), 65000),),
        bird=bird_path,
        runtime_dir=str(tmp_path / "run" / "bgp"),
    )


async def test_a_bird_refusing_its_config_is_an_error_in_its_words(tmp_path: Path) -> None:
    settings = bird_settings(tmp_path, fake_bird(tmp_path, refuse=True))
    conf = tmp_path / "run" / "bgp" / "bird.conf"
    with pytest.raises(SpeakerError) as info:
        await Bird().run(settings, 'protocol bgp p { password "x"; }\n')
    assert str(info.value) == (
        f"BIRD exited at start (status 1): bird: {conf}:3:1 syntax error, unexpected '%'"
    )
    assert conf.read_text() == 'protocol bgp p { password "x"; }\n'
    assert mode(conf) == 0o600
    assert mode(conf.parent) == 0o700


async def test_a_missing_bird_is_an_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-bird")
    with pytest.raises(SpeakerError) as info:
        await Bird().run(bird_settings(tmp_path, missing), "x\n")
    assert str(info.value).startswith("BIRD exited at start (status ")
    assert missing in str(info.value)  # setpriv's own words name it


async def test_bird_runs_until_cancelled_and_is_stopped_with_sigterm(tmp_path: Path) -> None:
    settings = bird_settings(tmp_path, fake_bird(tmp_path))
    conf, _, pidfile = paths(settings)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            pid = await nursery.start(Bird().run, settings, "x\n")
            # setpriv exec'd BIRD: the pid is BIRD's, its command line names
            # the config (what stop_stale looks for), and so does its pid file.
            assert os.fsencode(conf) in (cmdline_of(pid) or [])
            assert pidfile.read_text() == f"{pid}\n"
            nursery.cancel_scope.cancel()
    assert cmdline_of(pid) is None  # stopped and reaped
    bird_lines = [(e["log_level"], e["message"]) for e in logs if e["event"] == "bird"]
    assert ("debug", "peer_10_9_0_1: Initializing") in bird_lines
    assert ("info", "Started") in bird_lines


async def test_a_bird_that_exits_returns_its_status_and_last_words(tmp_path: Path) -> None:
    settings = bird_settings(tmp_path, fake_bird(tmp_path, exit_after_start=True))
    code, words = await Bird().run(settings, "x\n")
    assert code == 3
    assert words.endswith("<ERR> out of memory")
    assert "<INFO> Started" in words
