"""directorctl through a running directord against the real ipvsadm, on one
kernel table: listings byte for byte, errors and exit statuses, save/restore
both ways, director's own commands, many clients at once.

Services are of two kinds here (docs/runtime.md): *managed* ones (in the
daemon's config file, or added with `directorctl -A`), whose real servers
enter the kernel only once their check passes (listeners in the backend
namespace, see ctl_support), and *unmanaged* ones added with ipvsadm, which the
daemon leaves alone and directorctl changes straight in the kernel.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ctl_support import CTL, DEADLINE, Director, backends
from daemon_runner import wait_until
from tables import PER_SERVICE_FORMATS, entered, namespace, real, real_ok, same_lines

CHECK = 'check = { type = "tcp", interval = 0.5, timeout = 1.0, rise = 1, fall = 1 }'
CONFIG_SERVICES = f"""\
[[virtual_server]]
protocol = "tcp"
address = "10.9.0.1:80"
scheduler = "wrr"
{CHECK}

[[virtual_server.real_server]]
address = "10.7.0.2:80"
forward = "masq"
weight = 3
thresholds = {{ upper = 100, lower = 10 }}

[[virtual_server.real_server]]
address = "10.7.0.3:80"
forward = "masq"
"""
CONFIG_LINES = (
    "-A -t 10.9.0.1:80 -s wrr",
    "-a -t 10.9.0.1:80 -r 10.7.0.2:80 -m -w 3",
    "-a -t 10.9.0.1:80 -r 10.7.0.3:80 -m -w 1",
)
# Through directorctl: managed, each real server has a listener.
MANAGED = (
    "-A -u 10.9.0.1:53 -s sh -b sh-fallback,sh-port -o",
    "-a -u 10.9.0.1:53 -r 10.7.0.4:53 -m -w 2",
    "-A -t [fd09::1]:443 -s mh -b mh-port -p 300 -M 64",
    "-a -t [fd09::1]:443 -r [fd07::2]:443 -g -w 5",
    "-a -t [fd09::1]:443 -r [fd07::3]:443 -i --tun-type gre --tun-csum",
    "-A -f 7 -s wlc -p 60 -M 255.255.255.0",
    "-a -f 7 -r 10.7.0.5:8080 -i --tun-type gue --tun-port 6080 --tun-remcsum",
    "-a -f 7 -r 10.7.0.6:8080 -i -x 50 -y 20 -w 4",
)
LISTENERS = (
    ("10.7.0.2", 80),
    ("10.7.0.3", 80),
    ("10.7.0.4", 53),
    ("fd07::2", 443),
    ("fd07::3", 443),
    ("10.7.0.5", 8080),
    ("10.7.0.6", 8080),
)
# Through ipvsadm: unmanaged (real servers nowhere, nobody checks them).
UNMANAGED = (
    "-A -t 10.9.0.2:80 -s lblcr",
    "-a -t 10.9.0.2:80 -r 10.8.0.1:80 -g",
    "-a -t 10.9.0.2:80 -r 10.8.0.2:80 -m -w 0 -x 10 -y 5",
    "-A -u [fd09::2]:5060 -s rr -p 30 -o --pe sip",
    "-a -u [fd09::2]:5060 -r [fd08::1]:5060 -m",
    "-A -f 9 -6 -s fo",
    "-a -f 9 -6 -r fd08::3 -i --tun-type ipip",
    "-A -t 10.9.0.3:0 -p 120 -M 255.255.0.0 -s dh",
    "-A -t 10.9.0.4:8000 -s sed -p",
    "-A -t 10.9.0.5:22 -s nq",
    "-A --sctp-service 10.9.0.6:3868 -s lc",
    "-A -u 10.9.0.7:123 -s ovf",
    "-a -u 10.9.0.7:123 -r 10.8.0.7:123 -g -w 9",
    "-A -t 10.9.0.8:443 -s lblc",
)
SERVICES = (
    ("-t", "10.9.0.1:80"),
    ("-u", "10.9.0.1:53"),
    ("-t", "[fd09::1]:443"),
    ("-f", "7"),
    ("-t", "10.9.0.2:80"),
    ("-u", "[fd09::2]:5060"),
    ("-f", "9", "-6"),
    ("-t", "10.9.0.3:0"),
)


MANAGED_SERVICES = {"tcp:10.9.0.1:80", "udp:10.9.0.1:53", "tcp:[fd09::1]:443", "fwm:7"}
# The table the daemon must reach: every managed real server passed its check.
MANAGED_SAVED = (
    "-A -t 10.9.0.1:80 -s wrr",
    "-a -t 10.9.0.1:80 -r 10.7.0.2:80 -m -w 3",
    "-a -t 10.9.0.1:80 -r 10.7.0.3:80 -m -w 1",
    "-a -u 10.9.0.1:53 -r 10.7.0.4:53 -m -w 2",
    "-a -t [fd09::1]:443 -r [fd07::2]:443 -g -w 5",
    "-a -t [fd09::1]:443 -r [fd07::3]:443 -i -w 1 --tun-type gre --tun-csum",
    "-a -f 7 -r 10.7.0.5:8080 -i -w 1 --tun-type gue --tun-port 6080 --tun-remcsum",
    "-a -f 7 -r 10.7.0.6:8080 -i -w 4 --tun-type ipip",  # -S omits thresholds
)
THRESHOLDS = {"10.7.0.2:80": ["100", "10"], "10.7.0.6:8080": ["50", "20"]}
WAITED_FOR = (
    "-r 10.7.0.2:80",
    "-r 10.7.0.3:80",
    "-r 10.7.0.4:53",
    "-r [fd07::2]:443",
    "-r [fd07::3]:443",
    "-r 10.7.0.5:8080",
    "-r 10.7.0.6:8080",
)


# ipvsadm's listings (TABLE_LISTINGS in tables.py has them all; each costs
# seconds in the VM, so these are the ones issue 4 names, and a few more).
LISTINGS = (
    "-L",
    "-Ln",
    "-S",
    "-Sn",
    "-Ln --stats",
    "-L --stats",
    "-Ln --rate",
    "-Ln --thresholds",
    "-Ln --persistent-conn",
    "-Ln --exact",
    "-Ln --sort",
    "-Ln --tun-info",
    "-L --timeout",
    "-L --daemon",
    "-Lnc",
    "-L -n -t 10.9.0.1:80",
)


def words(line: str) -> list[str]:
    return line.split()


ROUND_TRIP = (
    "-A -t 10.9.0.3:0 -p 120 -M 255.255.0.0 -s dh",
    "-A -t 10.9.0.4:8000 -s sed -p",
    *CONFIG_LINES,
    *MANAGED,
)


def test_ipvsadm_save_restores_into_a_fresh_daemon(netns: str, tmp_path: Path) -> None:
    """First in the file: its daemon is alone (the module's starts later)."""
    with namespace() as source, entered(source):
        real_ok(["-R"], stdin="".join(line + "\n" for line in ROUND_TRIP))
        saved = real_ok(["-Sn"])
    with backends(netns) as listeners:
        for address, port in LISTENERS:
            listeners.listen(address, port)
        d = Director(tmp_path)
        try:
            d.start()
            d.ctl_ok("-R", stdin=saved)
            for server in WAITED_FOR:
                d.wait_saved(server)
            assert same_lines(real_ok(["-Sn"]), saved)
            status = json.loads(d.ctl_ok("status", "--json"))
            assert len(status["services"]) == 6, status
        finally:
            d.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Director]:
    """One daemon for the module (each start costs tens of seconds in the VM),
    in a namespace of the rig's, with the varied table built."""
    with namespace() as netns, backends(netns) as listeners:
        for address, port in LISTENERS:
            listeners.listen(address, port)
        d = Director(tmp_path_factory.mktemp("ctl"), CONFIG_SERVICES, netns)
        try:
            with entered(netns):
                d.start()
                for line in UNMANAGED:
                    real_ok(words(line))
                for line in MANAGED[:2]:  # one command at a time, and the rest as one -R
                    d.ctl_ok(*words(line))
                d.ctl_ok("-R", stdin="".join(line + "\n" for line in MANAGED[2:]))
                for server in WAITED_FOR:
                    d.wait_saved(server)
            yield d
        finally:
            d.close()


@pytest.fixture
def d(world: Director) -> Iterator[Director]:
    with entered(world.netns):
        yield world


def same_as_ipvsadm(d: Director, args: list[str]) -> str:
    """directorctl prints what ipvsadm prints for `args` (just before or just
    after it: counters, rates and connection timers may tick in between);
    the mismatch, or ""."""
    before = real(args)
    ours = d.ctl(*args)
    if ours == before:
        return ""
    after = real(args)
    if ours == after:
        return ""
    return f"directorctl {' '.join(args)}:\n  expected {after}\n  got      {ours}"


def test_the_daemon_built_the_table_its_checks_allow(d: Director) -> None:
    saved = real_ok(["-Sn"]).splitlines()
    missing = [line for line in MANAGED_SAVED if line not in saved]
    assert not missing, f"missing {missing} from\n" + "\n".join(saved)
    listed = real_ok(["-Ln", "--thresholds"])
    thresholds = {
        fields[1]: fields[2:4]
        for fields in map(str.split, listed.splitlines())
        if fields[:1] == ["->"] and fields[1] in THRESHOLDS
    }
    assert thresholds == THRESHOLDS, listed
    status = json.loads(d.ctl_ok("status", "--json"))  # ipvsadm's services stay unmanaged
    assert {s["service"] for s in status["services"]} == MANAGED_SERVICES, status


def test_listings_match_ipvsadm_byte_for_byte(d: Director) -> None:
    listings = [words(line) for line in LISTINGS]
    for index, service in enumerate(SERVICES):
        listings.append(["-L", *service, *PER_SERVICE_FORMATS[index % len(PER_SERVICE_FORMATS)]])
    mismatches = [m for m in (same_as_ipvsadm(d, listing) for listing in listings) if m]
    assert not mismatches, "\n\n".join(mismatches)


ERRORS = (
    # (why, command line): unmanaged services go straight to the kernel
    ("add an existing unmanaged service", "-A -t 10.9.0.2:80 -s rr"),
    ("add an existing managed service", "-A -t 10.9.0.1:80 -s rr"),
    ("delete a missing service", "-D -t 10.9.9.9:80"),
    ("add a destination to a missing service", "-a -t 10.9.9.9:80 -r 10.8.0.1:80"),
    ("add an existing destination, unmanaged", "-a -t 10.9.0.2:80 -r 10.8.0.1:80"),
    ("add an existing destination, managed", "-a -t 10.9.0.1:80 -r 10.7.0.2:80 -m"),
    ("delete a missing destination, unmanaged", "-d -t 10.9.0.2:80 -r 10.8.0.9:80"),
    ("delete a missing destination, managed", "-d -t 10.9.0.1:80 -r 10.7.0.9:80"),
    ("edit a missing destination, managed", "-e -f 7 -r 10.7.0.9:8080 -w 2"),
    ("unknown scheduler", "-A -t 10.9.9.9:80 -s nosuch"),
    ("unknown persistence engine", "-A -u 10.9.9.9:5060 -p --pe nosuch"),
    ("bad address", "-A -t 10.9.0.300:80"),
    ("bad weight", "-a -t 10.9.0.2:80 -r 10.8.0.5 -w -1"),
    ("two commands", "-A -D -t 10.9.9.9:80"),
    ("illegal option for the command", "-L -r 10.8.0.1:80"),
    ("unknown option", "-L --bogus"),
    ("no command", "-t 10.9.9.9:80"),
    ("-L of a missing service", "-L -n -t 10.9.9.9:80"),
    ("sh flags on another scheduler", "-A -t 10.9.9.9:80 -s rr -b sh-port"),
    ("lower threshold above upper", "-a -t 10.9.0.2:80 -r 10.8.0.6:80 -x 5 -y 10"),
    ("mixed families", "-a -t 10.9.0.2:80 -r [fd08::9]:80 -m"),
)


def test_errors_match_ipvsadm(d: Director) -> None:
    table = real_ok(["-Sn"])
    mismatches = []
    for why, line in ERRORS:
        ours = d.ctl(*words(line))  # first: had it wrongly succeeded, ipvsadm would differ
        theirs = real(words(line))
        if ours != theirs:
            mismatches.append(f"{why}: {line}\n  expected {theirs}\n  got      {ours}")
    assert not mismatches, "\n\n".join(mismatches)
    assert real_ok(["-Sn"]) == table


def test_directorctl_save_restores_with_ipvsadm(d: Director) -> None:
    saved = d.ctl_ok("-Sn")
    assert saved == real_ok(["-Sn"])
    symbolic = d.ctl_ok("-S")
    with namespace() as fresh, entered(fresh):
        restored = real(["-R"], stdin=saved)
        assert (restored.stderr, restored.status) == ("", 0), restored
        assert same_lines(real_ok(["-Sn"]), saved)
        real_ok(["-C"])
        restored = real(["-R"], stdin=symbolic)
        assert (restored.stderr, restored.status) == ("", 0), restored
        assert same_lines(real_ok(["-Sn"]), saved)


def test_fifty_clients_at_once_get_the_same_listing(d: Director) -> None:
    expected = real_ok(["-Ln"])
    argv = [str(CTL), "--socket", str(d.socket), "-Ln"]
    clients = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(50)
    ]
    results = [(*c.communicate(timeout=300), c.returncode) for c in clients]
    failed = [r for r in results if r != (expected, "", 0)]
    assert not failed, f"{len(failed)} of 50 differ, e.g. {failed[0]}"


def rows(d: Director) -> dict[tuple[str, str], dict[str, object]]:
    status = json.loads(d.ctl_ok("status", "--json"))
    return {
        (s["service"], rs["server"]): rs for s in status["services"] for rs in s["real_servers"]
    }


def test_status_drain_disable_enable_survive_restart_and_reload(d: Director) -> None:
    text = d.ctl_ok("status")
    for server in ("10.7.0.2:80", "10.7.0.3:80", "10.7.0.4:53", "[fd07::3]:443", "10.7.0.6:8080"):
        assert server in text, text
    # In the table is not yet judged: a server added through -a or -R may
    # be in the kernel before its first probe. Wait for every verdict, and
    # for the kernel to have it (a verdict comes before the pass applying it).
    before = wait_until(
        lambda: (
            (found := rows(d))
            and all(rs["health"] != "unknown" and rs["pending"] is None for rs in found.values())
            and found
        ),
        DEADLINE,
        "every real server judged in status, and the kernel as judged",
    )
    assert len(before) == 7, before
    for key, rs in before.items():
        assert (rs["health"], rs["admin"]) == ("up", "enabled"), (key, rs)
    assert before[("tcp:10.9.0.1:80", "10.7.0.2:80")]["current_weight"] == 3

    d.ctl_ok("drain", "tcp:10.9.0.1:80", "10.7.0.2:80")
    d.ctl_ok("disable", "tcp:10.9.0.1:80", "10.7.0.3")
    d.ctl_ok("disable", "fwm:7", "10.7.0.6:8080")
    drained = "-a -t 10.9.0.1:80 -r 10.7.0.2:80 -m -w 0"

    def admin_states_hold(after: str) -> None:
        saved = d.wait_saved("-r 10.7.0.3:80", absent=True).splitlines()
        assert drained in saved, (after, saved)
        assert not any("-r 10.7.0.6:8080" in line for line in saved), (after, saved)
        now = rows(d)
        assert now[("tcp:10.9.0.1:80", "10.7.0.2:80")]["admin"] == "drain", (after, now)
        assert now[("tcp:10.9.0.1:80", "10.7.0.3:80")]["admin"] == "disabled", (after, now)
        assert now[("fwm:7", "10.7.0.6:8080")]["current_weight"] is None, (after, now)

    admin_states_hold("at once")
    d.restart()
    admin_states_hold("after a restart")
    assert "-A -t [fd09::1]:443 -s mh -p 300 -M 64 -b mh-port" in real_ok(["-Sn"])
    d.daemon.reload()
    admin_states_hold("after SIGHUP")

    good = d.config.read_text()
    table = real_ok(["-Sn"])
    d.config.write_text(good.replace('scheduler = "wrr"', 'scheduler = "nosuch"'))
    try:
        refused = d.ctl("reload")
    finally:
        d.config.write_text(good)
    assert refused.status == 1, refused
    # (operator trial: the errors alone, no word of the running config)
    head = "director: reload rejected, the running config is kept (1 error):\n"
    assert refused.stderr.startswith(head), refused
    assert "virtual_server[0].scheduler" in refused.stderr, refused
    assert real_ok(["-Sn"]) == table

    answered = d.ctl("reload")
    assert answered.status == 0, answered
    admin_states_hold("after directorctl reload")

    for server in (("tcp:10.9.0.1:80", "10.7.0.2:80"), ("tcp:10.9.0.1:80", "10.7.0.3:80")):
        d.ctl_ok("enable", *server)
    d.ctl_ok("enable", "fwm:7", "10.7.0.6:8080")
    for line in MANAGED_SAVED:
        d.wait_saved(line)


def test_a_drained_server_saved_cleared_and_restored_stays_drained_until_enabled(
    netns: str, tmp_path: Path
) -> None:
    """Operator trial: `-Sn` while a server was drained, `-C`, `-R` of that
    save restored a hidden weight 0 that `enable` did not clear, and
    `status` said enabled. Now the -R drains it (its weight kept), status
    and the kernel agree, and enable gives the weight back. Every command
    here gives --socket after its command word (also refused before)."""

    def ctl_after(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [str(CTL), *args[:1], "--socket", str(d.socket), *args[1:]],
            input=stdin,
            capture_output=True,
            text=True,
        )
        assert (done.stderr, done.returncode) == ("", 0), (args, done, d.log())
        return done.stdout

    def server() -> dict[str, object]:
        status = json.loads(ctl_after("status", "--json"))
        (service,) = [s for s in status["services"] if s["service"] == "tcp:10.9.0.1:80"]
        (rs,) = [rs for rs in service["real_servers"] if rs["server"] == "10.7.0.2:80"]
        return rs

    with backends(netns) as listeners:
        for address, port in LISTENERS[:2]:
            listeners.listen(address, port)
        d = Director(tmp_path, CONFIG_SERVICES, netns)
        try:
            d.start()
            for line in CONFIG_LINES[1:]:
                d.wait_saved(line)
            ctl_after("drain", "tcp:10.9.0.1:80", "10.7.0.2:80")
            drained = "-a -t 10.9.0.1:80 -r 10.7.0.2:80 -m -w 0"
            saved = d.wait_saved(drained)
            ctl_after("-C")
            ctl_after("-R", stdin=saved)
            d.wait_saved(drained)
            rs = server()
            assert (rs["admin"], rs["configured_weight"], rs["current_weight"]) == ("drain", 3, 0)
            assert drained in ctl_after("-Sn")
            ctl_after("enable", "tcp:10.9.0.1:80", "10.7.0.2:80")
            d.wait_saved(CONFIG_LINES[1])
            rs = server()
            assert (rs["admin"], rs["configured_weight"], rs["current_weight"]) == (
                "enabled",
                3,
                3,
            )
        finally:
            d.close()
