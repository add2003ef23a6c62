"""Config errors about an entry of an array of tables name it (operator
trial: `directord --check` of a converted keepalived.conf said
`virtual_server[17]` and nothing else to find it by): after the path, the
service (address and protocol, or fwmark) and the real server. `errors`
keeps the bare paths; `named_errors`, str() and every place that prints
them (directord --check, directorctl check-config, the control socket's
check-config and reload, the reload_rejected log line) name the entries,
each line after the file's name (ConfigError.lines), the same in all of them,
with the line of the key that is wrong, or of the entry's header when the
error is the entry's (operator trial at 10,000 real servers: a path alone
leaves thousands of [[virtual_server.real_server]] tables to count),
all in file order and one mistake repeated as two lines. Exact lines of
each kind: test_config_lines.py; the order, the grouping and the cap:
test_config_errors.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import structlog
import trio.testing
from test_config_errors import ALIKE
from test_handler import rig

from director import daemon
from director.config import ConfigError, parse_config
from director.config.model import NO_SERVICE
from director.control.messages import Response
from director.ipvs.facts import NO_MODULES

SERVICES = "".join(
    f'[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.{i}:80"\n'
    f'[[virtual_server.real_server]]\naddress = "10.0.1.{i}:80"\n'
    for i in range(1, 18)
)
BAD = (
    SERVICES
    + '[[virtual_server]]\nprotocol = "udp"\naddress = "10.0.0.1:53"\nscheduler = "nosuch"\n'
    + '[[virtual_server]]\nfwmark = 7\n[[virtual_server.real_server]]\naddress = "10.0.2.1:80"\n'
    + "weight = -1\n"
    + '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n'
    + "[[virtual_server]]\nscheduler = 3\n"
)
NAMED = [
    "virtual_server[17].scheduler (10.0.0.1:53 udp, line 89): unknown scheduler",
    "virtual_server[18].real_server[0].weight (fwmark 7, 10.0.2.1:80, line 94): must be between",
    "virtual_server[19] (10.0.0.1:80 tcp, line 95): duplicate virtual service TCP 10.0.0.1:80 "
    "(first at virtual_server[0], line 1)",
    # nothing to name it by but its line
    "virtual_server[20].address (line 98): required",
    "virtual_server[20].protocol (line 98): required",
    "virtual_server[20].scheduler (line 99): expected a string",
]
# What ALIKE's 502 errors print as (test_config_errors.py)
ALIKE_NAMED = [
    "virtual_server[0].real_server[0].forward (10.0.0.1:80 tcp, 10.1.0.1:80, line 6): "
    'must be one of route, masq, tunnel (for "nat" write "masq"): "nat"',
    "... and 499 more alike: virtual_server[0].real_server[1..499].forward "
    "(lines 9, 12, 15, 18, 21, ..., 1504)",
    "virtual_server[0].real_server[300].weight (10.0.0.1:80 tcp, 10.1.1.51:80, line 907): "
    "must be between 0 and 65535: 70000",
    'daemon.log_level (line 1506): must be one of debug, info, warning, error: "loud"',
]


def errors(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "d.toml", NO_MODULES)
    return caught.value


def test_errors_name_the_entries_they_are_in() -> None:
    error = errors(BAD)
    for start, named in zip(NAMED, error.named_errors, strict=True):
        assert named.startswith(start), (start, error.named_errors)
    assert error.errors[0].startswith("virtual_server[17].scheduler: unknown scheduler")
    # the same messages, but for the first one's line in a duplicate's
    assert [e.partition(": ")[2] for e in error.errors] == [
        e.partition(": ")[2].replace("virtual_server[0], line 1)", "virtual_server[0])")
        for e in error.named_errors
    ]
    assert error.errors[2] == "virtual_server[19]: duplicate virtual service TCP 10.0.0.1:80 " + (
        "(first at virtual_server[0])"
    )
    assert str(error).splitlines() == [
        "d.toml: 6 errors:",
        *(f"d.toml: {named}" for named in error.named_errors),
    ]


def test_lines_stay_right_past_inline_entries_quoted_headers_and_long_strings() -> None:
    """Real servers written inline, a header with quotes, a multi-line
    string holding a header's text: each error keeps its own line."""
    inline = BAD.replace(
        '[[virtual_server.real_server]]\naddress = "10.0.2.1:80"\nweight = -1\n',
        'real_server = [{ address = "10.0.2.1:80", weight = -1 }]\n',
    )
    named = errors(inline).named_errors
    assert named[1].startswith(
        "virtual_server[18].real_server[0].weight (fwmark 7, 10.0.2.1:80, line 92): must be"
    )
    assert named[3].startswith("virtual_server[20].address (line 96): required")
    quoted = BAD.replace("[[virtual_server]]\nscheduler = 3", '[["virtual_server"]]\nscheduler = 3')
    assert errors(quoted).named_errors[3:] == [
        "virtual_server[20].address (line 98): required (or fwmark instead of protocol and address)",
        "virtual_server[20].protocol (line 98): required (tcp, udp, sctp), or fwmark instead",
        "virtual_server[20].scheduler (line 99): expected a string, got an integer: 3",
    ]
    long = '"""\n[[virtual_server]]\n"""'
    named = errors(f'[daemon]\nlog_level = "info"\n[control]\nsocket = {long}\n' + BAD).named_errors
    assert named[0] == 'control.socket (line 4): must be an absolute path: "[[virtual_server]]\\n"'
    assert named[1].startswith("virtual_server[17].scheduler (10.0.0.1:53 udp, line 95): unknown")


def test_directord_check_prints_them_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "director.toml"
    path.write_text(BAD)
    assert daemon.main(["--config", str(path), "--check"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(NAMED)
    for start, line in zip(NAMED, lines, strict=True):
        assert line.startswith(f"{path}: {start}"), line


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`directorctl check-config PATH`, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "director.ctl", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_directorctl_check_config_prints_them_named(tmp_path: Path) -> None:
    path = tmp_path / "director.toml"
    path.write_text(BAD)
    result = check_config(path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"{path}: 6 errors:"
    for start, line in zip(NAMED, lines[1:], strict=True):
        assert line.startswith(f"{path}: {start}"), line


def test_directorctl_check_config_prints_what_directord_check_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Operator trial: `directorctl check-config` printed the errors
    indented, without the file's name that `directord --check`, the
    control socket and docs/config.md give each. The same lines now,
    after the count of errors in all."""
    path = tmp_path / "director.toml"
    for text, count in ((BAD, 6), (ALIKE, 502)):
        path.write_text(text)
        assert daemon.main(["--config", str(path), "--check"]) == 1
        checked = capsys.readouterr()
        assert checked.out == ""
        result = check_config(path)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"{path}: {count} errors:\n" + checked.err


async def test_the_control_sockets_check_config_prints_what_directord_check_prints(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new.toml"
    path.write_text(BAD)
    assert daemon.main(["--config", str(path), "--check"]) == 1
    printed = capsys.readouterr().err
    async with rig(tmp_path) as r:
        by_path = await r.command("check-config", path=str(path))
        by_text = await r.command("check-config", text=BAD, source=str(path))
    assert by_path == by_text == Response(1, "", printed)


async def test_the_control_sockets_check_config_and_reload_print_them_named(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        checked = await r.command("check-config", text=BAD, source="new.toml")
        assert checked.status == 1
        for start in NAMED:
            assert f"new.toml: {start}" in checked.stderr, checked.stderr
        (tmp_path / "director.toml").write_text(BAD)
        with structlog.testing.capture_logs() as logs:
            refused = await r.command("reload")
        assert refused.status == 1
        for start in NAMED:
            assert f"{tmp_path / 'director.toml'}: {start}" in refused.stderr, refused.stderr
        # and the log line of the refused reload
        (logged,) = [e["errors"] for e in logs if e["event"] == "reload_rejected"]
        assert len(logged) == len(NAMED)
        for start, error in zip(NAMED, logged, strict=True):
            assert error.startswith(f"{tmp_path / 'director.toml'}: {start}"), error


async def test_every_checker_warns_of_a_file_without_a_virtual_service(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Operator trial (stop 25): an empty file was `OK, 0 virtual services,
    0 real servers`, and a reload of it deleted every service."""
    path = tmp_path / "empty.toml"
    path.write_text("")
    warning = f"{path}: warning: {NO_SERVICE}\n"
    assert daemon.main(["--config", str(path), "--check"]) == 0
    assert capsys.readouterr() == (f"{path}: OK, 0 virtual services, 0 real servers\n", warning)
    result = check_config(path)
    assert (result.returncode, result.stderr) == (0, warning)
    async with rig(tmp_path) as r:
        checked = await r.command("check-config", text="", source=str(path))
        assert (checked.status, checked.stderr) == (0, warning)


def test_directord_check_warns_of_commands_this_machine_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Operator trial: `directord --check` said OK of bird = "/nonexistent/sbin/bird";
    # BIRD's absence showed only at run time. Valid all the same (exit 0): it
    # may be installed before the start.
    path = tmp_path / "director.toml"
    here = tmp_path / "check.sh"
    here.write_text("#!/bin/sh\nexit 0\n")
    here.chmod(0o755)
    path.write_text(
        '[bgp]\nlocal_as = 65001\nrouter_id = "10.9.0.2"\n'
        f'bird = "{tmp_path}/no/bird"\nbirdc = "{here}"\n'
        '[[bgp.peer]]\naddress = "10.9.0.1"\nas = 65000\n'
        '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n'
        f'check = {{ type = "exec", command = ["{tmp_path}/no/check"] }}\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.1:80"\n'
        '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.2:80"\n'
        f'check = {{ type = "exec", command = ["{here}"] }}\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.2:80"\n'
        # Operator trial (stop 25): a file there but mode 0644 read "not
        # found, or not on PATH", and a real server's own check named only
        # its service.
        '[[virtual_server.real_server]]\naddress = "10.0.1.3:80"\n'
        f'check = {{ type = "exec", command = ["{tmp_path}/notexec.sh"] }}\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.4:80"\n'
        'check = { type = "exec", command = ["no-such-check-program"] }\n'
    )
    (tmp_path / "notexec.sh").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "notexec.sh").chmod(0o644)
    assert daemon.main(["--config", str(path), "--check"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: OK, 2 virtual services, 4 real servers\n"
    assert err.splitlines() == [
        f'{path}: warning: [bgp] bird: "{tmp_path}/no/bird" cannot be run here:'
        " No such file or directory",
        f'{path}: warning: the exec check of TCP 10.0.0.1:80: "{tmp_path}/no/check" cannot be'
        " run here: No such file or directory",
        f"{path}: warning: the exec check of TCP 10.0.0.2:80 real server 10.0.1.3:80:"
        f' "{tmp_path}/notexec.sh" is not executable here (mode 0644)',
        f"{path}: warning: the exec check of TCP 10.0.0.2:80 real server 10.0.1.4:80:"
        ' "no-such-check-program" is not on PATH here',
    ]


def test_every_printer_groups_one_mistake_repeated_in_file_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """directord --check and directorctl check-config print the 4 lines of
    test_config_errors' 500 alike errors, not 502."""
    path = tmp_path / "director.toml"
    path.write_text(ALIKE)
    assert daemon.main(["--config", str(path), "--check"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"{path}: {line}" for line in ALIKE_NAMED]
    result = check_config(path)
    assert result.returncode == 1
    assert result.stderr == f"{path}: 502 errors:\n" + "".join(
        f"{path}: {e}\n" for e in ALIKE_NAMED
    )


async def test_the_control_sockets_check_config_and_reload_group_them(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        checked = await r.command("check-config", text=ALIKE, source="new.toml")
        assert checked.status == 1
        assert checked.stderr == "".join(f"new.toml: {e}\n" for e in ALIKE_NAMED)
        path = tmp_path / "director.toml"
        path.write_text(ALIKE)
        with structlog.testing.capture_logs() as logs:
            refused = await r.command("reload")
        assert refused.status == 1
        # (Operator trial: a rejected reload printed the errors alone, no
        # word of the running config nor of how many there are.)
        head = "director: reload rejected, the running config is kept (502 errors):\n"
        assert refused.stderr == head + "".join(f"{path}: {e}\n" for e in ALIKE_NAMED)
        # and the log line of the refused reload (SIGHUP's too)
        (logged,) = [e["errors"] for e in logs if e["event"] == "reload_rejected"]
        assert logged == [f"{path}: {e}" for e in ALIKE_NAMED]
