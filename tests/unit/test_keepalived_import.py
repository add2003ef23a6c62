"""directorctl import-keepalived: keepalived.conf into director.toml.

The realistic configs are tests/data/keepalived/*.conf (written from
keepalived.conf(5) of keepalived 2.2.7); each converts, parses back with
tomli, and passes the daemon's own config check (parse_config, what
`directord --check` runs). Grammar corners are fed as text through a
loader of strings."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import tomli

from director.config import Config, load_config, parse_config
from director.health.spec import DnsCheck, ExecCheck, HttpCheck, TcpCheck, UdpCheck
from director.ipvs.facts import NO_MODULES
from director.ipvs.model import Forward, Protocol, ServiceFlags
from director.keepalived import Conversion, KeepalivedSyntaxError, import_keepalived
from director.keepalived.cli import main as cli_main
from director.keepalived.lexer import Location, quoted_escaped_words
from director.keepalived.model import address_range
from director.keepalived.parse import expand_braces

DATA = Path(__file__).parent.parent / "data" / "keepalived"
EXAMPLES = sorted(p.name for p in DATA.glob("*.conf"))


class Texts:
    """A Loader of files given as text."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def read(self, path: str) -> str:
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path]

    def glob(self, pattern: str) -> list[str]:
        import fnmatch

        return sorted(
            name
            for expanded in expand_braces(pattern)
            for name in self.files
            if fnmatch.fnmatch(name, expanded)
        )


def convert_text(text: str, **others: str) -> Conversion:
    return import_keepalived("k.conf", Texts({"k.conf": text, **others}))


def checked(conversion: Conversion) -> Config:
    """The conversion as the daemon's --check reads it (raises ConfigError)."""
    return parse_config(conversion.text, "converted.toml", NO_MODULES)


def example(name: str) -> tuple[Conversion, Config, dict[str, Any]]:
    conversion = import_keepalived(str(DATA / name))
    return conversion, checked(conversion), tomli.loads(conversion.text)


def note_texts(conversion: Conversion) -> list[str]:
    return [f"{Path(n.where.file).name}:{n.where.line}: {n.text}" for n in conversion.notes]


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_converts_and_passes_the_daemons_check(name: str) -> None:
    conversion, config, data = example(name)
    assert config.virtual_servers
    assert data["virtual_server"]
    # every note is in the output as a comment, with its place
    for note in conversion.notes:
        # (a note on each real server's identical check is written once, "also line N")
        also = re.search(rf"also line [\d, ]*\b{note.where.line}\b", conversion.text)
        assert note.text[:80] in conversion.text, note
        assert f"# {note.where}: {note.text}"[:100] in conversion.text or also, note


def test_web_nat_scheduler_persistence_weights_and_checks() -> None:
    _, config, _ = example("web-nat.conf")
    (vs,) = config.virtual_servers
    assert vs.key.protocol is Protocol.TCP
    assert str(vs.key.address) == "192.168.100.10" and vs.key.port == 80
    assert vs.scheduler == "wrr"
    assert vs.persistent == 300
    assert vs.service().netmask == 0xFFFFFF00  # persistence_granularity 255.255.255.0
    assert [(str(rs.address), rs.port) for rs in vs.real_servers] == [
        ("10.1.1.2", 80),
        ("10.1.2.2", 80),
        ("10.1.3.2", 80),  # no port: NAT takes the virtual server's
    ]
    assert [rs.forward for rs in vs.real_servers] == [Forward.MASQ] * 3  # lb_kind NAT
    assert [rs.weight for rs in vs.real_servers] == [3, 1, 2]
    assert (vs.real_servers[0].u_threshold, vs.real_servers[0].l_threshold) == (100, 10)
    http = vs.real_servers[0].check
    assert isinstance(http, HttpCheck) and http.path == "/healthz"
    assert [(r.low, r.high) for r in http.expect_status] == [(200, 200)]
    # delay_loop 2, connect_timeout 2, retry 2 -> interval 2, timeout 2, fall 3, rise 1
    assert (http.timing.interval, http.timing.timeout, http.timing.fall, http.timing.rise) == (
        2.0,
        2.0,
        3,
        1,
    )
    tcp = vs.real_servers[1].check
    assert isinstance(tcp, TcpCheck)
    # TCP_CHECK's default retry is 1: fall 2
    assert (tcp.timing.interval, tcp.timing.timeout, tcp.timing.fall) == (2.0, 1.0, 2)
    assert config.ipvs.timeouts is not None
    assert (config.ipvs.timeouts.tcp, config.ipvs.timeouts.tcp_fin, config.ipvs.timeouts.udp) == (
        600,
        30,
        60,
    )


def test_retry_against_fall_is_commented_where_it_changed_meaning() -> None:
    conversion, _, _ = example("web-nat.conf")
    notes = note_texts(conversion)
    assert any(n.startswith("web-nat.conf:20: HTTP_GET: retry 2 -> fall = 3") for n in notes), notes
    # delay_before_retry (1 s, TCP_CHECK's default) differs from delay_loop (2 s)
    assert any(
        n.startswith("web-nat.conf:32: TCP_CHECK: retry 1 -> fall = 2")
        and "keepalived retries 1s apart, director probes every 2s" in n
        for n in notes
    ), notes
    assert "# web-nat.conf" not in conversion.text  # the full path is written
    assert f"# {DATA / 'web-nat.conf'}:20: HTTP_GET: retry 2 -> fall = 3" in conversion.text


def test_dr_group_with_an_include_expands_every_address() -> None:
    conversion, config, _ = example("dr-group.conf")
    keys = [(str(vs.key.address), vs.key.port) for vs in config.virtual_servers]
    assert keys == [("192.168.100.10", 8080), ("192.168.100.20", 8081), ("192.168.100.21", 8081)]
    for vs in config.virtual_servers:
        # without NAT a group's real servers take each entry's port (ipvs_group_cmd)
        assert [rs.port for rs in vs.real_servers] == [vs.key.port] * 2
        assert vs.scheduler == "sh"
        assert vs.scheduler_flags == ServiceFlags.SCHED2  # sh-port
        assert vs.on_failure.value == "weight0"  # inhibit_on_failure
        assert [rs.forward for rs in vs.real_servers] == [Forward.ROUTE] * 2
        assert [rs.weight for rs in vs.real_servers] == [5, 5]
        check = vs.check
        assert isinstance(check, TcpCheck) and check.port == 80  # connect_port
        assert (check.timing.interval, check.timing.fall) == (3.0, 2)
    assert str(DATA / "conf.d" / "web-group.conf") in conversion.files
    assert any(n.where.file.endswith("conf.d/web-group.conf") for n in conversion.notes)


def test_udp_fwmark_services() -> None:
    _, config, _ = example("udp-fwmark.conf")
    fwmark, udp = config.virtual_servers
    assert fwmark.key.fwmark == 5 and fwmark.scheduler == "lc"
    assert fwmark.persistent == 360  # persistence_timeout without a value
    assert isinstance(fwmark.check, TcpCheck) and fwmark.check.timing.fall == 4  # retry 3
    assert udp.key.protocol is Protocol.UDP and udp.one_packet  # ops
    udp_check, misc = (rs.check for rs in udp.real_servers)
    assert isinstance(udp_check, UdpCheck)
    assert udp_check.payload == b"hello"
    assert udp_check.expect is not None and udp_check.silence_is_up is False
    assert isinstance(misc, ExecCheck)
    assert misc.command == ("/bin/sh", "-c", "exit 0")
    assert misc.timing.timeout == 3.0 and misc.timing.fall == 1  # MISC_CHECK's retry is 0


def test_require_reply_pattern_is_keepalived_s_prefix_match() -> None:
    import regex

    _, config, _ = example("udp-fwmark.conf")
    check = config.virtual_servers[1].real_servers[0].check
    assert isinstance(check, UdpCheck) and check.expect is not None
    pattern = regex.compile(check.expect)
    for reply, passes in [
        (b"u1 hello", True),  # longer, starts with the 2 bytes
        (b"u1", True),
        (b"u", True),  # shorter: keepalived compares min(len) bytes
        (b"", True),
        (b"x1 hello", False),
        (b"u" * 256, False),  # over max_reply_length 255
    ]:
        assert bool(pattern.search(reply.decode("latin-1"))) is passes, reply


def test_everything_else() -> None:
    conversion, config, _ = example("everything.conf")
    https, dns, fwmark, port0 = config.virtual_servers
    assert https.scheduler == "lblcr" and https.sorry_server is not None
    assert str(https.sorry_server.address) == "10.10.10.99"
    assert https.quorum == 2  # weight quorum 3 over servers of weight 2
    first = https.real_servers[0].check
    assert isinstance(first, HttpCheck) and first.tls and not first.verify_tls
    assert first.host == "www.example.org"  # the virtual server's virtualhost
    assert [(r.low, r.high) for r in first.expect_status] == [(200, 299), (301, 301)]
    assert first.timing.fall == 3 and first.timing.timeout == 4.0
    second = https.real_servers[1].check
    assert isinstance(second, HttpCheck) and second.expect_body == "ready|ok"
    assert [rs.tun_port for rs in dns.real_servers] == [6080, 6080]
    dns_check = dns.check
    assert isinstance(dns_check, DnsCheck)
    assert (dns_check.query_name, dns_check.query_type) == ("www.example.org", "A")
    assert dns_check.timing.fall == 4  # DNS_CHECK's retry is 3
    assert fwmark.key.fwmark == 100 and fwmark.key.family == 10  # ip_family inet6
    assert fwmark.persistent_netmask == 64
    dynamic = fwmark.real_servers[0].check
    assert isinstance(dynamic, ExecCheck) and dynamic.dynamic_weight and dynamic.user == "nobody"
    assert port0.persistent == 360  # port 0 forces persistence
    assert isinstance(port0.check, ExecCheck) and port0.check.command == ("true",)
    notes = note_texts(conversion)
    for expected in [
        "everything.conf:8: lvs_sync_daemon: keepalived ran the master or the backup",
        "everything.conf:15: vrrp_instance: not converted",
        "everything.conf:25: alpha:",
        "everything.conf:31: omega: not converted",
        "everything.conf:33: hysteresis 1: not converted",
        "everything.conf:42: digest 9b3a0c85a887a256d6939da88aabd8cd: not converted",
        "everything.conf:47: url /ready: not converted",
        "everything.conf:68: inhibit_on_failure: set for some real servers only",
        "everything.conf:98: misc_dynamic:",
        "everything.conf:105: PING_CHECK: converted to an exec check",
    ]:
        assert any(n.startswith(expected) for n in notes), (expected, notes)


def test_misc_dynamic_wrapper_gives_keepalived_s_weights(tmp_path: Path) -> None:
    import subprocess

    _, config, _ = example("everything.conf")
    check = config.virtual_servers[2].real_servers[0].check
    assert isinstance(check, ExecCheck)
    script = tmp_path / "weigh.sh"
    for status, out, exit_status in [(0, "10", 0), (1, "", 1), (12, "10", 0), (255, "253", 0)]:
        script.write_text(f"#!/bin/sh\nexit {status}\n")
        script.chmod(0o755)
        command = [*check.command[:3], str(script)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert (result.stdout.strip(), result.returncode) == (out, exit_status), status


def test_lvs_sync_daemon_becomes_ipvs_sync() -> None:
    """An operator trial: lvs_sync_daemon was reported unconverted with advice
    to start the daemon by hand, which directord then never manages. It is
    [ipvs.sync] now: role "both" (no VRRP to choose), the interface, id,
    group, port, ttl and maxlen as given."""
    conversion = convert_text(
        "global_defs {\n"
        "  lvs_sync_daemon eth1 VI_1 id 7 maxlen 1500 port 8849 ttl 2 group 239.1.2.3\n"
        "}\n"
        "virtual_server 10.0.0.1 80 {\n protocol TCP\n real_server 10.0.0.2 80 {\n }\n}\n"
    )
    sync = checked(conversion).ipvs.sync
    assert sync is not None
    assert (sync.role.value, sync.interface, sync.syncid) == ("both", "eth1", 7)
    assert (str(sync.group), sync.port, sync.ttl, sync.maxlen) == ("239.1.2.3", 8849, 2, 1500)
    assert any('role = "both"' in n.text for n in conversion.notes)


def test_lvs_sync_daemon_without_id_says_what_keepalived_used() -> None:
    conversion = convert_text(
        "global_defs {\n  lvs_sync_daemon eth1 VI_9 maxlen 100 bogus\n}\n"
        "virtual_server 10.0.0.1 80 {\n protocol TCP\n real_server 10.0.0.2 80 {\n }\n}\n"
    )
    sync = checked(conversion).ipvs.sync
    assert sync is not None and sync.syncid == 0 and sync.maxlen == 0
    texts = note_texts(conversion)
    assert any("VI_9's virtual_router_id" in t for t in texts), texts
    assert any("maxlen 100 is below a backup's least" in t for t in texts), texts
    assert "k.conf:2: lvs_sync_daemon: unknown 'bogus', ignored" in texts


# -- the grammar


def test_comments_quotes_and_braces_on_one_line() -> None:
    conversion = convert_text(
        "virtual_server 10.0.0.1 80 { # a comment\n"
        "  protocol TCP ! another\n"
        '  lb_algo "rr"\n'
        "  real_server 10.0.0.2 80 { weight 4\n"
        "    TCP_CHECK { connect_timeout 3 } }\n"
        "}\n"
    )
    (vs,) = checked(conversion).virtual_servers
    assert vs.scheduler == "rr" and vs.real_servers[0].weight == 4
    assert vs.check.timing.timeout == 3.0


def test_include_relative_to_the_including_file_with_braces() -> None:
    files = {
        "/etc/k/main.conf": "include sub/{a,b}.conf\n",
        "/etc/k/sub/a.conf": "virtual_server 10.0.0.1 80 {\n protocol TCP\n include rs/*.conf\n}\n",
        "/etc/k/sub/rs/1.conf": "real_server 10.0.0.2 80 {\n weight 2\n}\n",
        "/etc/k/sub/b.conf": "virtual_server 10.0.0.3 80 {\n protocol TCP\n"
        " real_server 10.0.0.4 80 {\n }\n}\n",
    }
    conversion = import_keepalived("/etc/k/main.conf", Texts(files))
    config = checked(conversion)
    assert [str(vs.key.address) for vs in config.virtual_servers] == ["10.0.0.1", "10.0.0.3"]
    assert config.virtual_servers[0].real_servers[0].weight == 2
    assert conversion.files == (
        "/etc/k/main.conf",
        "/etc/k/sub/a.conf",
        "/etc/k/sub/rs/1.conf",
        "/etc/k/sub/b.conf",
    )


def test_an_include_that_names_no_file_is_a_note() -> None:
    conversion = convert_text("include missing/*.conf\n")
    assert note_texts(conversion) == ["k.conf:1: include missing/*.conf: no file matches it"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "virtual_server 10.0.0.1 80 {\n protocol TCP\n",
            "k.conf:1: 'virtual_server' block has no closing '}'",
        ),
        ("}\n", "k.conf:1: extra '}'"),
        ('virtual_server "10.0.0.1 80 {\n}\n', "k.conf:1: unterminated quote"),
        ("$PORT=80\n", "k.conf:1: parameter substitution"),
        ("global_defs {\n}\n{\n}\n", "k.conf:3: '{' without a keyword before it"),
    ],
)
def test_a_config_that_cannot_be_parsed_names_file_and_line(text: str, message: str) -> None:
    with pytest.raises(KeepalivedSyntaxError) as caught:
        convert_text(text)
    assert str(caught.value).startswith(message)


def test_include_cycle_is_an_error() -> None:
    with pytest.raises(KeepalivedSyntaxError, match="include cycle"):
        import_keepalived(
            "/a.conf", Texts({"/a.conf": "include /b.conf\n", "/b.conf": "include /a.conf\n"})
        )


def test_quoted_escaped_words_as_misc_path_reads_them() -> None:
    where = Location("k", 1)
    assert quoted_escaped_words("misc_path \"/bin/x 'a b' c\\tx\"", where) == (
        "misc_path",
        "/bin/x 'a b' c\tx",
    )
    assert quoted_escaped_words("/bin/x 'a b' c\\x41", where) == ("/bin/x", "a b", "cA")


def test_group_address_ranges() -> None:
    assert [str(a) for a in address_range("10.0.0.1-3") or ()] == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    ]
    assert [str(a) for a in address_range("10.0.0.254-10.0.1.1") or ()] == [
        "10.0.0.254",
        "10.0.0.255",
        "10.0.1.0",
        "10.0.1.1",
    ]
    assert len(address_range("10.0.0.8/29") or ()) == 8
    assert address_range("10.0.0.9/29") is None  # host bits set: keepalived refuses it
    assert address_range("10.0.0.0/8") is None  # more than MAX_RANGE


# -- what changes meaning, and what keepalived itself ignores


def test_quorum_without_a_sorry_server_is_a_note_not_a_key() -> None:
    conversion = convert_text(
        "virtual_server 10.0.0.1 80 {\n protocol TCP\n quorum 2\n"
        " real_server 10.0.0.2 80 {\n }\n real_server 10.0.0.3 80 {\n }\n}\n"
    )
    assert checked(conversion).virtual_servers[0].quorum == 1
    assert any("k.conf:3: quorum 2: not converted" in n for n in note_texts(conversion))


def test_dr_real_server_port_follows_the_virtual_server() -> None:
    conversion = convert_text(
        "virtual_server 10.0.0.1 80 {\n protocol TCP\n lb_kind DR\n"
        " real_server 10.0.0.2 8080 {\n  TCP_CHECK {\n  }\n }\n}\n"
    )
    (vs,) = checked(conversion).virtual_servers
    assert vs.real_servers[0].port == 80
    assert any("k.conf:4: real_server port 8080" in n for n in note_texts(conversion))


def test_no_protocol_is_udp_as_in_keepalived() -> None:
    conversion = convert_text("virtual_server 10.0.0.1 53 {\n real_server 10.0.0.2 53 {\n }\n}\n")
    assert checked(conversion).virtual_servers[0].key.protocol is Protocol.UDP
    assert any("no protocol" in n for n in note_texts(conversion))


def test_an_invalid_value_keepalived_ignores_is_ignored_with_a_note() -> None:
    conversion = convert_text(
        "virtual_server 10.0.0.1 80 {\n protocol TCP\n lb_algo fastest\n"
        " real_server 10.0.0.2 80 {\n  weight 70000\n }\n}\n"
    )
    (vs,) = checked(conversion).virtual_servers
    assert vs.scheduler == "wlc" and vs.real_servers[0].weight == 1
    notes = note_texts(conversion)
    assert "k.conf:3: lb_algo: invalid scheduler 'fastest', ignored (as keepalived does)" in notes
    assert "k.conf:5: weight: invalid value '70000', ignored (as keepalived does)" in notes
    assert "# k.conf:5: weight: invalid value '70000'" in conversion.text


def test_unknown_keywords_are_listed_never_dropped() -> None:
    conversion = convert_text(
        "virtual_server 10.0.0.1 80 {\n protocol TCP\n frobnicate 3\n"
        " real_server 10.0.0.2 80 {\n  TCP_CHECK {\n   bindto 10.0.0.9\n  }\n }\n}\n"
    )
    notes = note_texts(conversion)
    assert "k.conf:3: frobnicate: not converted (unknown keyword here)" in notes
    assert any(n.startswith("k.conf:6: bindto: not converted") for n in notes)


# -- the command


def test_cli_writes_toml_and_notes(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli_main([str(DATA / "web-nat.conf")], out, err) == 0
    assert tomli.loads(out.getvalue())["virtual_server"][0]["scheduler"] == "wrr"
    lines = err.getvalue().splitlines()
    assert lines[0].startswith(f"{DATA / 'web-nat.conf'}:3: global_defs")
    assert lines[-1].endswith(
        "1 virtual service, 3 real servers; 5 notes (commented in the output)"
    )


def test_cli_exits_1_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "keepalived.conf"
    bad.write_text("virtual_server 10.0.0.1 80 {\n")
    out, err = io.StringIO(), io.StringIO()
    assert cli_main([str(bad)], out, err) == 1
    assert out.getvalue() == ""
    assert err.getvalue() == (
        f"directorctl import-keepalived: {bad}:1: 'virtual_server' block has no closing '}}'"
        f" (end of {bad})\n"
    )


def test_cli_unreadable_file_and_usage(tmp_path: Path) -> None:
    err = io.StringIO()
    assert cli_main([str(tmp_path / "none.conf")], io.StringIO(), err) == 1
    assert err.getvalue() == (
        f"directorctl import-keepalived: {tmp_path / 'none.conf'}: cannot read: "
        "No such file or directory\n"
    )
    assert cli_main([], io.StringIO(), io.StringIO()) == 2


def test_directorctl_dispatches_import_keepalived(capsys: pytest.CaptureFixture[str]) -> None:
    from director.ctl import main

    assert main(["--socket", "/nonexistent", "import-keepalived", str(DATA / "dr-group.conf")]) == 0
    assert "[[virtual_server]]" in capsys.readouterr().out


def test_a_real_server_without_a_port_is_checked_at_port_0_by_keepalived() -> None:
    # seen in the VM: keepalived's TCP_CHECK of such a server fails at once
    conversion = convert_text(
        "virtual_server 10.0.0.1 80 {\n protocol TCP\n"
        " real_server 10.0.0.2 {\n  TCP_CHECK {\n  }\n }\n}\n"
    )
    (vs,) = checked(conversion).virtual_servers
    assert vs.real_servers[0].port == 80
    assert any(
        n.startswith(
            "k.conf:3: real_server without a port: keepalived's TCP_CHECK connects to port 0"
        )
        for n in note_texts(conversion)
    )


def test_a_fwmark_real_server_without_nat_is_port_0_in_keepalived() -> None:
    conversion = convert_text(
        "virtual_server fwmark 3 {\n lb_kind DR\n"
        " real_server 10.0.0.2 443 {\n  TCP_CHECK {\n  }\n }\n}\n"
    )
    (vs,) = checked(conversion).virtual_servers
    assert vs.real_servers[0].port == 443
    assert any(
        n.startswith("k.conf:3: real_server: keepalived puts it in with port 0")
        for n in note_texts(conversion)
    )


def test_a_sorry_servers_port_changed_by_direct_routing_is_noted() -> None:
    """keepalived puts a DR sorry server in with the virtual service's port,
    as it does a real server: the changed port is said, not done silently
    (an operator trial found it silent)."""
    conversion = convert_text(
        "virtual_server 10.0.0.1 443 {\n"
        "  lb_kind DR\n"
        "  protocol TCP\n"
        "  sorry_server 192.168.200.250 8080\n"
        "  real_server 10.0.1.1 443 {\n"
        "    TCP_CHECK {\n"
        "      connect_timeout 3\n"
        "    }\n"
        "  }\n"
        "}\n"
    )
    table = tomli.loads(conversion.text)
    assert table["virtual_server"][0]["sorry_server"]["address"] == "192.168.200.250:443"
    assert (
        "k.conf:4: sorry_server port 8080: keepalived uses the virtual service's port 443 "
        "with DR, as director does" in note_texts(conversion)
    )
    checked(conversion)


def test_net_namespace_says_which_table_keepalived_managed() -> None:
    conversion = convert_text(
        "global_defs {\n  router_id lb1\n  net_namespace lb\n}\n"
        "virtual_server 10.0.0.1 80 {\n  real_server 10.0.1.1 80 {\n  }\n}\n"
    )
    notes = note_texts(conversion)
    assert any(
        n.startswith("k.conf:3: net_namespace lb: not converted; keepalived manages the IPVS table")
        for n in notes
    ), notes
    assert not any("not IPVS settings): net_namespace" in n for n in notes), notes


# -- alpha: keepalived without it puts a real server in at start, as
# director's `initial = "up"`; with it (the checker's, else its real
# server's, else its virtual server's) it waits for a passed check, as
# director's default does.

ALPHA = """\
virtual_server 10.0.0.1 80 {{
    lb_algo rr
    lb_kind NAT
    protocol TCP
    {vs}
    real_server 10.0.1.1 80 {{
        {rs}
        TCP_CHECK {{
            {checker}
        }}
    }}
    real_server 10.0.1.2 80 {{
        HTTP_GET {{
            url {{
                path /
            }}
        }}
    }}
    real_server 10.0.1.3 80 {{
    }}
}}
"""


# The lines of ALPHA's blocks: the virtual server, the first real server,
# its TCP_CHECK (where the note on alpha points: the block whose alpha
# decides, for the first server in alpha mode).
VS_LINE, RS_LINE, CHECKER_LINE = 1, 6, 8


@pytest.mark.parametrize(
    ("vs", "rs", "checker", "initial", "noted_at"),
    [
        ("", "", "", ("up", "up"), None),
        ("alpha", "", "", ("unknown", "unknown"), VS_LINE),
        ("", "", "alpha", ("unknown", "up"), CHECKER_LINE),
        ("", "", "alpha yes", ("unknown", "up"), CHECKER_LINE),
        ("", "", "alpha off", ("up", "up"), None),
        ("", "alpha", "", ("unknown", "up"), RS_LINE),
        ("alpha", "alpha no", "", ("up", "unknown"), VS_LINE),
        ("alpha", "", "alpha false", ("up", "unknown"), VS_LINE),
        ("", "alpha", "alpha no", ("up", "up"), None),  # the checker's own comes first
    ],
)
def test_alpha_decides_a_checks_initial(
    tmp_path: Path,
    vs: str,
    rs: str,
    checker: str,
    initial: tuple[str, str],
    noted_at: int | None,
) -> None:
    conversion = convert_text(ALPHA.format(vs=vs, rs=rs, checker=checker))
    path = tmp_path / "director.toml"
    path.write_text(conversion.text)
    (service,) = load_config(path, NO_MODULES).virtual_servers
    first, second, unchecked = (server.check for server in service.real_servers)
    assert (first.timing.initial, second.timing.initial) == initial
    # A real server without a checker is in at once whatever alpha says.
    assert unchecked.timing.initial == "up"
    # The key is written only where it is not the default.
    written = tomli.loads(conversion.text)["virtual_server"][0]["real_server"]
    assert [s["check"].get("initial", "unknown") for s in written] == [*initial, "up"]
    alpha_notes = [n for n in note_texts(conversion) if ": alpha:" in n]
    assert len(alpha_notes) == ("unknown" in initial)
    lines = [int(re.search(r":(\d+): alpha:", n)[1]) for n in alpha_notes]  # type: ignore[index]
    assert lines == ([] if noted_at is None else [noted_at])


def test_alpha_on_a_checker_not_converted_still_keeps_the_server_out() -> None:
    """keepalived puts a server in at start only when none of its checkers
    is in alpha mode; director converts the first, and waits for it."""
    conversion = convert_text(
        "virtual_server 10.0.0.1 80 {\n protocol TCP\n real_server 10.0.1.1 80 {\n"
        "  TCP_CHECK {\n  }\n  MISC_CHECK {\n   misc_path /bin/true\n   alpha\n  }\n }\n}\n"
    )
    first = checked(conversion).virtual_servers[0].real_servers[0].check
    assert isinstance(first, TcpCheck) and first.timing.initial == "unknown"
    assert any(": alpha:" in n for n in note_texts(conversion))


def test_bfd_alpha_counts_and_file_check_is_never_alpha() -> None:
    conversion = convert_text(
        "track_file ready {\n file /run/ready\n}\n"
        "virtual_server 10.0.0.1 80 {\n protocol TCP\n alpha\n"
        " real_server 10.0.1.1 80 {\n  BFD_CHECK {\n   name bfd1\n  }\n }\n"
        " real_server 10.0.1.2 80 {\n  BFD_CHECK {\n   name bfd2\n   alpha no\n  }\n }\n"
        " real_server 10.0.1.3 80 {\n  FILE_CHECK {\n   track_file ready\n  }\n }\n}\n"
    )
    servers = checked(conversion).virtual_servers[0].real_servers
    assert [rs.check.timing.initial for rs in servers] == ["unknown", "up", "up"]


def test_the_header_says_what_differs_at_start() -> None:
    text = convert_text(ALPHA.format(vs="", rs="", checker="")).text
    header = text.split("\n\n")[0]
    assert 'initial = "up"' in header and "with alpha" in header
    assert "first check at start has no retries" in header and "`fall`" in header


@pytest.mark.parametrize(
    ("rs", "checker"),
    [("alpha YES", ""), ("", "alpha Yes"), ("", "alpha 1"), ("alpha maybe", "")],
)
def test_an_invalid_alpha_is_noted_and_ignored_as_keepalived_does(rs: str, checker: str) -> None:
    """keepalived's check_true_false compares exactly (parser.c): `alpha
    YES` is no boolean, keepalived logs it and ignores it, and the server
    is in at start (seen in the VM: keepalived 2.2.7, "Invalid alpha
    parameter YES"). On a checker it was dropped without a line."""
    conversion = convert_text(ALPHA.format(vs="", rs=rs, checker=checker))
    first = checked(conversion).virtual_servers[0].real_servers[0].check
    assert first.timing.initial == "up"
    value = (rs or checker).split()[1]
    assert [n for n in note_texts(conversion) if ": alpha:" in n] == [
        next(n for n in note_texts(conversion) if f"alpha: invalid value '{value}', ignored" in n)
    ]
