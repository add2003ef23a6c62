"""director.ipvsadm against the real ipvsadm 1.31, byte for byte, on a real
kernel table.

The same command lines go through /usr/sbin/ipvsadm and through ours
(director.ipvsadm.cli.parse -> NetlinkBackend.apply -> director.ipvsadm.listing,
see tables.Ours); every listing and save variant, every error text and every
exit status must be identical. Listings are taken by one `ipvsadm -R` run each
(its input may hold -L and -S lines): ipvsadm runs are slow in the VM.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tables import (
    Line,
    Ours,
    Outcome,
    TableLines,
    backend_in,
    entered,
    listing_script,
    namespace,
    real,
    real_ok,
    same_lines,
    script,
    tables,
)

from director.ipvs.model import ServiceEntry
from director.ipvs.netlink import NetlinkBackend

RESET: tuple[Line, ...] = (("-C",), ("--set", "900", "120", "300"))
NO_SUCH_SERVICE = "No such service\n"

# No shrinking: in the VM it takes many minutes; the failing example is
# printed as drawn.
RANDOM = settings(
    max_examples=20,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def ours(netns: str) -> Iterator[Ours]:
    with NetlinkBackend() as backend:
        yield Ours(backend)


def words(line: str) -> Line:
    return tuple(line.split())


def build_with_ours(ours: Ours, lines: Sequence[Line]) -> None:
    for line in lines:
        assert ours.run(line) == Outcome("", "", 0), line


def assert_listed_alike(ours: Ours, table: TableLines, build_real: Sequence[Line]) -> None:
    """Build the table with the real ipvsadm (one -R run of `build_real`),
    list it every way; rebuild it with ours, list it again with both: all
    three listings must be identical."""
    real_ok(["-R"], script(build_real))
    listings = listing_script(table.services)
    expected = real(["-R"], listings)
    assert (expected.stderr, expected.status) == (NO_SUCH_SERVICE, 1)
    build_with_ours(ours, RESET + table.lines)
    assert real(["-R"], listings) == expected, "the table ours built lists differently"
    assert ours.run(["-R"], listings) == expected


@RANDOM
@given(table=tables())
def test_random_tables_list_and_save_identically(ours: Ours, table: TableLines) -> None:
    assert_listed_alike(ours, table, RESET + table.lines)


SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh")

# Every feature at least once: each scheduler and scheduler flag, persistence
# with masks, one-packet, the sip engine, fwmarks of both families, every
# forwarding method and tunnel encapsulation, weights, thresholds, edits.
CATALOGUE: tuple[Line, ...] = tuple(
    words(line)
    for line in (
        *(f"-A -t 10.1.0.{n}:80 -s {s}" for n, s in enumerate(SCHEDULERS, 1)),
        *(f"-a -t 10.1.0.{n}:80 -r 10.9.{n}.1 -m -w {n}" for n in range(1, 14)),
        "-A -u 10.2.0.1:5060 -s sh -b sh-fallback,sh-port -p 120 -M 255.255.255.0 --pe sip -o",
        "-A -t 10.2.0.2:443 -s mh -b mh-fallback -p",
        "-A -t 10.2.0.3:https -s mh -b mh-port",
        "-A -t 10.2.0.4:443 -s sh -b sh-port",
        "-A -t 10.2.0.5:0 -s sh -b sh-fallback -p 7",
        "-A -f 7 -s rr -p 60 -M 255.255.0.0",
        "-A -f 8 -6 -s wrr -p 60 -M 64 -o",
        # ipvsadm 1.31 prints a mark of 2**31 or more as a negative number
        "-A -f 2147483648 -s rr",
        "-A -f 4294967295 -6 -s none",
        "-a -f 2147483648 -r 10.4.0.9:80 -m",
        "-A -t [2001:db8::10]:80 -s lc -p 30 -M 96",
        "-A -u [2001:db8::11]:53 -s rr -o",
        "-A --sctp-service 10.2.0.6:9999 -s dh",
        "-a -u 10.2.0.1:5060 -r 10.3.0.1 -g -w 0",
        "-a -u 10.2.0.1:5060 -r 10.3.0.2:5061 -m -x 1000 -y 10",
        "-a -u 10.2.0.1:5060 -r 10.3.0.3 -i",
        "-a -u 10.2.0.1:5060 -r 10.3.0.4 -i --tun-type ipip",
        "-a -u 10.2.0.1:5060 -r 10.3.0.5 -i --tun-type gue --tun-port 6080",
        "-a -u 10.2.0.1:5060 -r 10.3.0.6 -i --tun-type gue --tun-port 6081 --tun-csum",
        "-a -u 10.2.0.1:5060 -r 10.3.0.7 -i --tun-type gue --tun-port 65535 --tun-remcsum",
        "-a -u 10.2.0.1:5060 -r 10.3.0.8 -i --tun-type gre",
        "-a -u 10.2.0.1:5060 -r 10.3.0.9 -i --tun-type gre --tun-csum",
        "-a -u 10.2.0.1:5060 -r 2001:db8::99 -i --tun-type gue --tun-port 7 --tun-nocsum",
        "-a -u 10.2.0.1:5060 -r 127.0.0.1:5060 -m -w 2147483647 -x 2147483647 -y 2147483647",
        "-a -f 7 -r 10.4.0.1:8080 -m -w 3",
        "-a -f 7 -r 10.4.0.2 -g -x 5 -y 5",
        "-a -f 8 -6 -r [2001:db8::20]:443 -m",
        "-a -f 8 -6 -r 10.4.0.3 -i --tun-type gre --tun-nocsum",
        "-a -t [2001:db8::10]:80 -r 2001:db8:1234:5678:9abc:def0:1234:5678 -g -w 65535",
        "-a -t [2001:db8::10]:80 -r [2001:db8::21]:8080 -m -x 4 -y 3",
        "-a -t 10.2.0.3:https -r 10.5.0.1 -i",
        "-a --sctp-service 10.2.0.6:9999 -r 10.6.0.1:9998 -m",
        "-E -t 10.1.0.1:80 -s wrr -p 100",
        "-E -t 10.2.0.4:443 -s mh -b mh-fallback,mh-port",
        "-e -t 10.1.0.2:80 -r 10.9.2.1 -m -w 50 -x 10 -y 5",
        "-e -f 7 -r 10.4.0.1:8080 -i --tun-type gue --tun-port 99 --tun-csum",
        "-d -t 10.1.0.3:80 -r 10.9.3.1",
        "-D -t 10.1.0.4:80",
        "-a -t 10.1.0.5:80 -r 10.9.5.2:81 -m",
        "-a -t 10.1.0.5:80 -r 192.168.9.9:81 -m",
        "--set 100 20 30",
        "--set 2500000 120 300",
    )
)
CATALOGUE_SERVICES: tuple[Line, ...] = tuple(
    words(s)
    for s in (
        "-t 10.1.0.1:80",
        "-u 10.2.0.1:5060",
        "-t 10.2.0.3:443",
        "-f 7",
        "-f 8 -6",
        "-f 2147483648",
        "-f 4294967295 -6",
        "-t [2001:db8::10]:80",
        "--sctp-service 10.2.0.6:9999",
    )
)


def test_every_feature_set_by_single_commands_lists_identically(ours: Ours) -> None:
    real_ok(["-R"], script(RESET))
    for line in CATALOGUE:
        assert real(line) == Outcome("", "", 0), line
    listings = listing_script(CATALOGUE_SERVICES)
    expected = real(["-R"], listings)
    bare = real([])
    assert bare.stdout.startswith("IP Virtual Server version")
    build_with_ours(ours, RESET + CATALOGUE)
    assert real(["-R"], listings) == expected, "the table ours built lists differently"
    assert ours.run(["-R"], listings) == expected
    assert ours.run([]) == bare
    assert "\nTCP  10.1.0.13:80 mh\n" in expected.stdout
    assert "gue:65535:r+c" in expected.stdout


# --- errors: the real ipvsadm's stderr and exit status, and ours

SETUP: tuple[Line, ...] = tuple(
    words(line)
    for line in (
        "-A -t 10.0.0.1:80 -s rr",
        "-a -t 10.0.0.1:80 -r 10.0.1.1 -m",
        "-A -f 5 -6",
        "-A -u 10.0.0.2:53 -s sh",
        "-A -u 10.0.0.5:5060 --pe sip",
        "-A -t 10.0.0.6:80 -p",
    )
)

FAILING = [
    "-A -t 10.0.0.1:80",
    "-A -f 5 -6 -s wlc",
    "-D -t 10.0.0.9:80",
    "-D -f 6",
    "-E -t 10.0.0.9:80 -s rr",
    "-E -t 10.0.0.1:80 -s nosuch",
    "-E -t 10.0.0.1:80 --pe nosuch",
    "-A -t 10.0.0.3:80 -s nosuch",
    "-A -t 10.0.0.3:80 -s averyveryverylongschedulername",
    "-A -t 10.0.0.3:80 --pe nosuch",
    "-a -t 10.0.0.9:80 -r 10.0.1.1",
    "-a -t 10.0.0.1:80 -r 10.0.1.1 -m",
    "-a -t 10.0.0.1:80 -r 10.0.1.1 -g",
    "-a -f 6 -r 10.0.1.1",
    "-a -t 10.0.0.1:80 -r 224.0.0.1",
    "-a -t 10.0.0.1:80 -r [fe80::1]:80 -i",
    "-e -t 10.0.0.1:80 -r 10.0.1.2 -m",
    "-e -t 10.0.0.9:80 -r 10.0.1.1 -m",
    "-d -t 10.0.0.1:80 -r 10.0.1.2",
    "-d -t 10.0.0.9:80 -r 10.0.1.1",
    "-d -f 5 -6 -r [2001:db8::1]:80",
    "-Z -t 10.0.0.9:80",
    "-Z -f 5",
    "-L -t 10.0.0.9:80",
    "-L -n -f 5",
    "-L -n -u 10.0.0.1:80",
    "--stop-daemon master",
    "--stop-daemon backup",
    "--start-daemon master",
    "--start-daemon master --mcast-interface nosuch0",
    "-a -t 10.0.0.1:80 -r [2001:db8::1]:80 -m",
    "-a -u 10.0.0.5:5060 -r 10.0.1.9 -y 1",
    "-a -t 10.0.0.6:80 -r 10.0.1.9 -x 5 -y 6",
    "-e -t 10.0.0.1:80 -r 10.0.1.1 -m -x 1 -y 2",
    "-A -t 10.0.0.3:80 -o",
    "-A -t 10.0.0.3:0",
    "-A -t 10.0.0.3:80 -r 10.0.1.1",
    "-A -t 10.0.0.3:80 -s rr -b sh-port",
    "-A -t 10.0.0.3:80 -s sh -b sh-port,bogus",
    "-A -t [2001:db8::1]:80 -p -M 129",
    "-a -t 10.0.0.1:80 -r 10.0.1.3 -w 2147483648",
    "-a -t 10.0.0.1:80 -r 10.0.1.3 -i --tun-type ipip --tun-port 4",
    "-a -t 10.0.0.1:80 -r 10.0.1.3 -i --tun-type gue",
    "-a -t 10.0.0.1:80 -r 10.0.1.3 -i --tun-type gre --tun-remcsum",
    "-a -t 10.0.0.1:80 -r 10.0.1.3 -m --tun-type gre",
    "-A -t 10.0.0.3:80 --bogus",
    "-A -t 10.0.0.3:80 -s",
    "-L -n --stats --timeout",
    "--set 1 2",
    "-A -t nosuchhost.invalid:80",
    "-A -f 0",
    "-A",
    "-X",
]


def test_failing_commands_fail_alike(ours: Ours) -> None:
    """Each command of FAILING on the SETUP table: ipvsadm's stderr and exit
    status, and ours; the table stays as it was."""
    before = real_ok(["-R"], script((*SETUP, ("-S", "-n"))))
    mismatches = []
    for failing in FAILING:
        expected = real(words(failing))
        assert expected.status != 0 and expected.stderr, failing
        got = ours.run(words(failing))
        if got != expected:
            mismatches.append((failing, expected, got))
    assert mismatches == []
    assert real_ok(["-S", "-n"]) == before
    assert ours.run(["-S", "-n"]).stdout == before


def test_restore_goes_on_after_kernel_and_option_errors_and_stops_at_fatal_ones(
    ours: Ours,
) -> None:
    failing = [words(f) for f in FAILING[:12]]
    lines = [
        *RESET,
        *SETUP,
        *failing,
        ("-A", "-t", "10.0.0.7:80", "--bogus"),
        ("-A", "-t", "10.0.0.8:80"),
    ]
    errors_only = script([*lines, ("-S", "-n")])
    fatal = script([*lines, ("-A", "-t", "10.0.0.3:80", "-s", "rr", "-b", "sh-port"), ("-C",)])
    last_fails = script([*RESET, *SETUP, SETUP[0]])

    expected = real(["-R"], errors_only)
    assert expected.stderr.count("\n") == 13 and expected.status == 0
    expected_fatal = real(["-R"], fatal)
    assert expected_fatal.status == 2
    after_fatal = real_ok(["-S", "-n"])
    assert "10.0.0.8:80" in after_fatal
    expected_last_fails = real(["-R"], last_fails)
    assert expected_last_fails.status == 255

    assert ours.run(["-R"], errors_only) == expected
    assert ours.run(["-R"], fatal) == expected_fatal
    assert ours.run(["-S", "-n"]).stdout == after_fatal
    assert ours.run(["-R"], last_fails) == expected_last_fails


# --- random command sequences, failures included, step by step


@st.composite
def steps(draw: st.DrawFn) -> list[Line]:
    services = ["-t 10.0.0.1:80", "-u [2001:db8::1]:53", "-f 3", "-t 10.0.0.2:0"]
    servers = ["10.0.1.1", "10.0.1.2:8080", "[2001:db8::5]:53"]
    out: list[Line] = []
    for _ in range(draw(st.integers(1, 5))):
        service = draw(st.sampled_from(services))
        server = draw(st.sampled_from(servers))
        scheduler = draw(st.sampled_from(["rr", "sh", "mh", "wlc", "nosuch"]))
        forward = draw(st.sampled_from(["-g", "-m", "-i", "-i --tun-type gre --tun-csum"]))
        weight = draw(st.integers(0, 5))
        persistence = draw(st.sampled_from(["", "-p", "-p 30", "-p 30 -M 255.255.255.0", "-o"]))
        out.append(
            words(
                draw(
                    st.sampled_from(
                        [
                            f"-A {service} -s {scheduler} {persistence}",
                            f"-E {service} -s {scheduler} {persistence}",
                            f"-D {service}",
                            f"-a {service} -r {server} {forward} -w {weight}",
                            f"-e {service} -r {server} {forward} -w {weight} -x {weight}",
                            f"-d {service} -r {server}",
                            f"-Z {service}",
                            f"-L -n {service}",
                            "-C",
                            f"--set {weight} 0 {weight * 7}",
                        ]
                    )
                )
            )
        )
    return out


SEQUENCES = settings(RANDOM, max_examples=6)


@SEQUENCES
@given(sequence=steps())
def test_random_command_sequences_behave_alike(netns: str, sequence: list[Line]) -> None:
    """Each step through the real ipvsadm on this namespace's table and
    through ours on a twin namespace's: same output, errors and status at
    every step, the same tables at the end; then all steps again as one
    `ipvsadm -R`."""
    services = [words(s) for s in ("-t 10.0.0.1:80", "-f 3", "-u [2001:db8::1]:53")]
    listings = listing_script(services)
    real_ok(["-R"], script(RESET))
    with namespace() as twin, backend_in(twin) as backend:
        ours = Ours(backend)
        for step in sequence:
            assert ours.run(step) == real(step), step
        expected = real(["-R"], listings)
        assert ours.run(["-R"], listings) == expected
        real_ok(["-R"], script(RESET))
        build_with_ours(ours, RESET)
        assert ours.run(["-R"], script(sequence)) == real(["-R"], script(sequence))
        assert ours.run(["-R"], listings) == real(["-R"], listings)


# --- save and restore round trips


def without_thresholds(entries: Sequence[ServiceEntry]) -> dict[object, frozenset[object]]:
    """The table as -S keeps it: ipvsadm saves no thresholds."""
    return {
        entry.service: frozenset(
            dataclasses.replace(d.destination, u_threshold=0, l_threshold=0)
            for d in entry.destinations
        )
        for entry in entries
    }


@settings(RANDOM, max_examples=5)
@given(table=tables())
def test_save_restores_identically_both_ways(ours: Ours, table: TableLines) -> None:
    real_ok(["-R"], script(RESET + table.lines))
    saved_numeric = real_ok(["-S", "-n"])
    saved_named = real_ok(["-S"])
    original = without_thresholds(ours.backend.services())
    ours_saved = ours.run(["-S"])
    assert ours_saved == Outcome(saved_named, "", 0)

    for saved in (saved_numeric, saved_named):
        with namespace() as fresh, backend_in(fresh) as backend:
            assert Ours(backend).run(["-R"], saved) == Outcome("", "", 0)
            assert without_thresholds(backend.services()) == original
            with entered(fresh):
                assert same_lines(real_ok(["-S", "-n"]), saved_numeric)

    with namespace() as fresh, entered(fresh):
        assert real(["-R"], ours_saved.stdout) == Outcome("", "", 0)
        assert same_lines(real_ok(["-S", "-n"]), saved_numeric)
