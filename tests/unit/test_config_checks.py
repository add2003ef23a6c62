"""Check keys of issue 7: host, ca_file, cert_file, key_file (https), user
(exec) and silence (udp), and the dns check of issue 8, each refused by --check
with its TOML path."""

from __future__ import annotations

import os
import pwd
import subprocess
from ipaddress import ip_address
from pathlib import Path

import pytest

from director.config import ConfigError, parse_config
from director.config.toml import literal
from director.health.spec import DnsCheck, ExecCheck, HttpCheck, Timing, UdpCheck, host_problem
from director.ipvs.facts import NO_MODULES

VS = """
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
real_server = [{{ address = "10.0.0.2:80" }}]
check = {check}
"""
WHERE = "virtual_server[0].check"


def check_of(check: str) -> object:
    config = parse_config(VS.format(check=check), "test.toml", NO_MODULES)
    return config.virtual_servers[0].check


def errors_of(check: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(VS.format(check=check), "test.toml", NO_MODULES)
    return info.value.errors


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pem")
    files = {name: directory / f"{name}.pem" for name in ("cert", "key", "both", "enc", "enc_cert")}
    openssl = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "1", "-subj", "/CN=x"]  # fmt: skip
    subprocess.run([*openssl, "-nodes", "-keyout", str(files["key"]), "-out", str(files["cert"])], check=True, capture_output=True)  # fmt: skip
    subprocess.run([*openssl, "-passout", "pass:secret", "-keyout", str(files["enc"]), "-out", str(files["enc_cert"])], check=True, capture_output=True)  # fmt: skip
    files["both"].write_bytes(files["cert"].read_bytes() + files["key"].read_bytes())
    files["enc_both"] = directory / "enc_both.pem"
    files["enc_both"].write_bytes(files["enc_cert"].read_bytes() + files["enc"].read_bytes())
    return files


# -- host --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["example.org", "example.org.", "a", "xn--bcher-kva.example", "1-2.x-y.z9", "a" * 63 + ".b",
     ".".join(["a" * 63] * 3 + ["a" * 61]), "10.0.0.1", "2001:db8::1", "::1", "localhost"],
)  # fmt: skip
def test_valid_hosts(host: str) -> None:
    assert host_problem(host) is None
    assert check_of(f'{{ type = "http", host = "{host}" }}') == HttpCheck(host=host)


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("bücher.example", "not ASCII (write an internationalized name in its xn-- form)"),
        ("", "empty"),
        (".", "empty"),
        ("a b", "label 'a b' is not 1 to 63 letters, digits and hyphens that neither start nor end with a hyphen"),
        ("-a.example", "label '-a' is not 1 to 63 letters, digits and hyphens that neither start nor end with a hyphen"),
        ("a-.example", "label 'a-' is not 1 to 63 letters, digits and hyphens that neither start nor end with a hyphen"),
        ("a..example", "label '' is not 1 to 63 letters, digits and hyphens that neither start nor end with a hyphen"),
        ("a" * 64 + ".example", f"label '{'a' * 64}' is not 1 to 63 letters, digits and hyphens that neither start nor end with a hyphen"),
        (".".join(["a" * 63] * 4), "longer than 253 bytes"),
        ("under_score.example", "label 'under_score' is not 1 to 63 letters, digits and hyphens that neither start nor end with a hyphen"),
        ("example.org:8080", "label 'org:8080' is not 1 to 63 letters, digits and hyphens that neither start nor end with a hyphen"),
        ("[::1]", "label '[::1]' is not 1 to 63 letters, digits and hyphens that neither start nor end with a hyphen"),
        ("fe80::1%eth0", "an IPv6 address with a zone cannot be a host"),
        ("a\nb", "label 'a\\nb' is not 1 to 63 letters, digits and hyphens that neither start nor end with a hyphen"),
    ],
)  # fmt: skip
def test_invalid_hosts_are_refused_with_the_path(host: str, why: str) -> None:
    assert host_problem(host) == why
    toml_host = host.replace("\\", "\\\\").replace("\n", "\\n")
    assert errors_of(f'{{ type = "https", host = "{toml_host}" }}') == [
        f"{WHERE}.host: not a host name or IP address ({why}): {literal(host)}"
    ]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/a\\r\\nX-Injected: 1", "contains a control character: \"/a\\r\\nX-Injected: 1\""),
        ("/\\u0000", "contains a control character: \"/\\u0000\""),
        ("/\\u007f", "contains a control character: \"/\\u007F\""),
        ("/" + "a" * 8000, "longer than 8000 characters: \"/" + "a" * 39 + "...\""),
    ],
)  # fmt: skip
def test_http_path_errors(path: str, error: str) -> None:
    # httpx refuses these URLs at probe time; --check refuses them first.
    assert errors_of(f'{{ type = "http", path = "{path}" }}') == [f"{WHERE}.path: {error}"]


def test_http_paths_that_httpx_quotes() -> None:
    for path in ("/a b", "/ä", "/%zz", "/[x]", "/" + "a" * 7999):
        assert check_of(f'{{ type = "http", path = "{path}" }}') == HttpCheck(path=path)


# -- ca_file, cert_file, key_file ----------------------------------------------------------


def test_tls_files(pem: dict[str, Path]) -> None:
    cert, key, both = str(pem["cert"]), str(pem["key"]), str(pem["both"])
    check = check_of(f'{{ type = "https", ca_file = "{cert}", cert_file = "{cert}", key_file = "{key}" }}')  # fmt: skip
    assert check == HttpCheck(tls=True, ca_file=cert, cert_file=cert, key_file=key)
    check = check_of(f'{{ type = "https", verify_tls = false, cert_file = "{both}" }}')
    assert check == HttpCheck(tls=True, verify_tls=False, cert_file=both)


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ('ca_file = "ca.pem"', "ca_file: must be an absolute path: \"ca.pem\""),
        ('cert_file = "./c.pem"', "cert_file: must be an absolute path: \"./c.pem\""),
        ('ca_file = "/nonexistent/ca.pem"', "ca_file: cannot load it: ENOENT: No such file or directory: \"/nonexistent/ca.pem\""),
        ('ca_file = "/etc/hostname"', "ca_file: cannot load it: [X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found: \"/etc/hostname\""),
        ('ca_file = "/dev/null"', "ca_file: cannot load it: not a regular file: \"/dev/null\""),
        ('ca_file = 3', "ca_file: expected a string, got an integer: 3"),
        ('ca_file = "/a\\u0000b"', "ca_file: cannot load it: embedded null byte: \"/a\\u0000b\""),
        ('ca_file = "{cert}", verify_tls = false', "ca_file: has no use with verify_tls = false"),
        ('key_file = "{key}"', "key_file: only with cert_file (the client certificate)"),
        ('cert_file = "{cert}"', "cert_file: cannot load it: [SSL] PEM lib (no private key in it? then set key_file): \"{cert}\""),
        ('cert_file = "{cert}", key_file = "/nonexistent/k.pem"', "key_file: cannot load it: ENOENT: No such file or directory: \"/nonexistent/k.pem\""),
        ('cert_file = "{cert}", key_file = "{enc}"', "key_file: cannot load it: the private key is encrypted; give an unencrypted key: \"{enc}\""),
        ('cert_file = "{enc_both}"', "cert_file: cannot load it: the private key is encrypted; give an unencrypted key: \"{enc_both}\""),
        ('cert_file = "{enc_cert}", key_file = "{key}"', "cert_file: cannot load it: [X509: KEY_VALUES_MISMATCH] key values mismatch: \"{enc_cert}\""),
    ],
)  # fmt: skip
def test_tls_file_errors(pem: dict[str, Path], keys: str, error: str) -> None:
    names = {name: str(path) for name, path in pem.items()}
    assert errors_of(f'{{ type = "https", {keys.format(**names)} }}') == [f"{WHERE}.{error.format(**names)}"]  # fmt: skip


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file"])
def test_tls_files_are_keys_of_https_only(key: str) -> None:
    assert errors_of(f'{{ type = "http", {key} = "/x.pem" }}') == [
        f"{WHERE}.{key}: not a key of an http check (it is for https)"
    ]


def test_an_unreadable_file_is_named(pem: dict[str, Path], tmp_path: Path) -> None:
    secret = tmp_path / "secret.pem"
    secret.write_bytes(pem["cert"].read_bytes())
    secret.chmod(0)
    # Root reads any file: check as nobody (the effective uid only, so that
    # the test can take root back).
    root = os.geteuid() == 0
    if root:
        os.seteuid(pwd.getpwnam("nobody").pw_uid)
    try:
        errors = errors_of(f'{{ type = "https", ca_file = "{secret}" }}')
    finally:
        if root:
            os.seteuid(0)
    assert errors == [f'{WHERE}.ca_file: cannot load it: EACCES: Permission denied: "{secret}"']


# -- user ------------------------------------------------------------------------------


def test_exec_user() -> None:
    check = check_of('{ type = "exec", command = "true", user = "nobody" }')
    assert check == ExecCheck(("true",), user="nobody")
    assert check_of('{ type = "exec", command = "true" }') == ExecCheck(("true",))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ('"no-such-user-here"', 'no such user: "no-such-user-here"'),
        ('"nobody\\u0000"', 'no such user: "nobody\\u0000"'),
        ("65534", "expected a string, got an integer: 65534"),
    ],
)
def test_exec_user_errors(value: str, error: str) -> None:
    assert errors_of(f'{{ type = "exec", command = "true", user = {value} }}') == [
        f"{WHERE}.user: {error}"
    ]


# -- silence ---------------------------------------------------------------------------


def test_udp_silence() -> None:
    assert check_of('{ type = "udp" }') == UdpCheck(silence="up")
    assert check_of('{ type = "udp", silence = "down" }') == UdpCheck(silence="down")
    check = check_of('{ type = "udp", silence = "down", expect = "pong" }')
    assert check == UdpCheck(expect="pong", silence="down")
    assert isinstance(check, UdpCheck) and not check.silence_is_up
    assert not UdpCheck(expect="pong").silence_is_up
    assert UdpCheck().silence_is_up


@pytest.mark.parametrize(
    ("check", "error"),
    [
        ('{ type = "udp", silence = "maybe" }', "silence: must be one of up, down: \"maybe\""),
        ('{ type = "udp", silence = true }', "silence: expected a string, got a boolean: true"),
        ('{ type = "udp", silence = "up", expect = "pong" }', "silence: with expect, silence is always down (no matching reply): \"up\""),
        ('{ type = "tcp", silence = "down" }', "silence: not a key of a tcp check (it is for udp)"),
    ],
)  # fmt: skip
def test_udp_silence_errors(check: str, error: str) -> None:
    assert errors_of(check) == [f"{WHERE}.{error}"]


def test_a_real_server_override_with_expect_drops_the_services_silence() -> None:
    """Trial 35: an inherited key the server's own keys contradict gives way
    (with expect, silence is always down), where it was an error at the
    service's check, which is right as it is."""
    text = """
[[virtual_server]]
protocol = "udp"
address = "10.0.0.1:53"
check = { type = "udp", silence = "up" }
real_server = [{ address = "10.0.0.2:53", check = { expect = "pong" } }, { address = "10.0.0.3:53" }]
"""
    (vs,) = parse_config(text, "test.toml", NO_MODULES).virtual_servers
    assert vs.check == UdpCheck(silence="up")
    override, inherited = (rs.check for rs in vs.real_servers)
    assert isinstance(override, UdpCheck) and override.expect is not None
    assert override.expect == "pong" and not override.silence_is_up
    assert inherited == vs.check


def test_a_real_server_without_tls_verification_drops_the_services_ca_file(
    pem: dict[str, Path],
) -> None:
    """Trial 35: `verify_tls = false` on one server of a service whose
    check has a ca_file was "ca_file: has no use with verify_tls = false",
    named at the service's check, and `ca_file = ""` could not undo it."""
    text = f"""
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:443"
check = {{ type = "https", ca_file = "{pem["cert"]}" }}
real_server = [{{ address = "10.0.0.2", check = {{ host = "10.0.0.2", verify_tls = false }} }}]
"""
    (vs,) = parse_config(text, "test.toml", NO_MODULES).virtual_servers
    assert vs.check == HttpCheck(tls=True, ca_file=str(pem["cert"]))
    assert vs.real_servers[0].check == HttpCheck(tls=True, host="10.0.0.2", verify_tls=False)


def test_a_real_server_dns_override_drops_the_services_expected_address() -> None:
    """Trial 35: a server asking SOA and expecting REFUSED under a service
    expecting an address got two errors, both at the service's check."""
    text = """
[[virtual_server]]
protocol = "udp"
address = "10.0.0.1:53"
check = { type = "dns", query_name = "www.example.org", query_type = "A", expect_address = "192.0.2.1" }
real_server = [{ address = "10.0.0.2:53", check = { query_name = "example.org", query_type = "SOA", expect_rcode = "REFUSED" } }]
"""
    (vs,) = parse_config(text, "test.toml", NO_MODULES).virtual_servers
    assert vs.real_servers[0].check == DnsCheck(
        query_name="example.org", query_type="SOA", expect_rcode="REFUSED"
    )


def test_a_real_servers_own_wrong_key_is_still_its_error(pem: dict[str, Path]) -> None:
    """Only inherited keys give way: the server's own stay, wrong or not,
    and their errors name the server's check."""
    text = f"""
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:443"
check = {{ type = "https", verify_tls = false }}
real_server = [{{ address = "10.0.0.2", check = {{ ca_file = "{pem["cert"]}" }} }}]
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml", NO_MODULES)
    assert info.value.errors == [
        "virtual_server[0].real_server[0].check.ca_file: has no use with verify_tls = false"
    ]


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("ff02::1", "multicast"),
    ],
)
def test_a_check_address_that_no_host_has_is_refused(address: str, problem: str) -> None:
    [error] = errors_of(f'{{ type = "tcp", address = "{address}" }}')
    assert error.startswith(f"{WHERE}.address: not an address a probe can reach (")
    assert problem in error and address in error


# -- dns (issue 8) -----------------------------------------------------------------------


def test_dns_check_defaults_are_keepalived_s() -> None:
    assert check_of('{ type = "dns" }') == DnsCheck(query_name=".", query_type="SOA", expect_rcode="NOERROR", transport="udp")  # fmt: skip


def test_dns_check_every_key() -> None:
    check = check_of(
        '{ type = "dns", query_name = "www.example.org", query_type = "aaaa", expect_rcode = "noerror",'
        ' expect_address = "2001:db8::7", expect_answer = "IN AAAA", transport = "tcp", port = 5353,'
        ' address = "10.0.0.3", interval = 2, timeout = 0.5, rise = 3, fall = 4 }'
    )
    assert check == DnsCheck(
        Timing(2.0, 0.5, 3, 4),
        5353,
        ip_address("10.0.0.3"),
        query_name="www.example.org",
        query_type="AAAA",
        expect_rcode="NOERROR",
        expect_address=ip_address("2001:db8::7"),
        expect_answer="IN AAAA",
        transport="tcp",
    )


@pytest.mark.parametrize(
    "name", ["example.org", "example.org.", ".", "_sip._udp.example.org", "xn--bcher-kva.example", "a" * 63 + ".b"]
)  # fmt: skip
def test_dns_valid_query_names(name: str) -> None:
    assert check_of(f'{{ type = "dns", query_name = "{name}" }}') == DnsCheck(query_name=name)


def test_dns_any_with_an_expected_address() -> None:
    check = check_of('{ type = "dns", query_type = "ANY", expect_address = "192.0.2.7" }')
    assert check == DnsCheck(query_type="ANY", expect_address=ip_address("192.0.2.7"))


def test_dns_expected_nxdomain() -> None:
    assert check_of('{ type = "dns", query_name = "no.example", expect_rcode = "NXDOMAIN" }') == DnsCheck(query_name="no.example", expect_rcode="NXDOMAIN")  # fmt: skip


@pytest.mark.parametrize(
    ("check", "error"),
    [
        ('{ type = "dns", query_name = "" }', "query_name: empty (the root is \".\")"),
        ('{ type = "dns", query_name = "a..b" }', "query_name: not a DNS name (A DNS label is empty.): \"a..b\""),
        ('{ type = "dns", query_name = "' + "x" * 64 + '.org" }', "query_name: not a DNS name (A DNS label is > 63 octets long.): \"" + "x" * 64 + ".org\""),
        ('{ type = "dns", query_name = "' + ("a" * 63 + ".") * 4 + '" }', "query_name: not a DNS name (A DNS name is > 255 octets long.): \"" + ("a" * 63 + ".") * 4 + "\""),
        ('{ type = "dns", query_name = 7 }', "query_name: expected a string, got an integer: 7"),
        ('{ type = "dns", query_type = "AXFR" }', "query_type: not an RR type (A, AAAA, SOA, NS, ...): \"AXFR\""),
        ('{ type = "dns", query_type = "OPT" }', "query_type: not an RR type (A, AAAA, SOA, NS, ...): \"OPT\""),
        ('{ type = "dns", query_type = "BOGUS" }', "query_type: not an RR type (A, AAAA, SOA, NS, ...): \"BOGUS\""),
        ('{ type = "dns", query_type = "TYPE65" }', "query_type: not an RR type (A, AAAA, SOA, NS, ...): \"TYPE65\""),
        ('{ type = "dns", expect_rcode = "BADVERS" }', "expect_rcode: not an rcode (NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, YXDOMAIN, YXRRSET, NXRRSET, NOTAUTH, NOTZONE, DSOTYPENI): \"BADVERS\""),
        ('{ type = "dns", expect_rcode = "0" }', "expect_rcode: not an rcode (NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, YXDOMAIN, YXRRSET, NXRRSET, NOTAUTH, NOTZONE, DSOTYPENI): \"0\""),
        ('{ type = "dns", query_type = "A", expect_address = "www" }', "expect_address: not an IP address: \"www\""),
        ('{ type = "dns", expect_address = "192.0.2.7" }', "expect_address: an IPv4 address answers query_type = \"A\", not \"SOA\": \"192.0.2.7\""),
        ('{ type = "dns", query_type = "A", expect_address = "2001:db8::7" }', "expect_address: an IPv6 address answers query_type = \"AAAA\", not \"A\": \"2001:db8::7\""),
        ('{ type = "dns", query_type = "A", expect_address = "192.0.2.7", expect_rcode = "NXDOMAIN" }', "expect_address: an answer comes only with expect_rcode = \"NOERROR\""),
        ('{ type = "dns", expect_answer = "(" }', "expect_answer: not a valid regular expression (missing ) at position 1): \"(\""),
        ('{ type = "dns", transport = "quic" }', "transport: must be one of udp, tcp: \"quic\""),
        ('{ type = "dns", port = 0 }', "port: must be between 1 and 65535: 0"),
        ('{ type = "dns", payload = "x" }', "payload: not a key of a dns check (it is for udp)"),
        ('{ type = "udp", query_name = "x" }', "query_name: not a key of a udp check (it is for dns)"),
        ('{ type = "dns", query = "x" }', "query: unknown key (did you mean 'query_type'?)"),
    ],
)  # fmt: skip
def test_dns_check_errors(check: str, error: str) -> None:
    assert errors_of(check) == [f"{WHERE}.{error}"]


def test_dns_real_server_override_keeps_the_services_query() -> None:
    text = """
[[virtual_server]]
protocol = "udp"
address = "10.0.0.1:53"
check = { type = "dns", query_name = "example.org", query_type = "A" }
real_server = [{ address = "10.0.0.2:53", check = { expect_address = "192.0.2.2" } }]
"""
    config = parse_config(text, "test.toml", NO_MODULES)
    check = config.virtual_servers[0].real_servers[0].check
    assert check == DnsCheck(query_name="example.org", query_type="A", expect_address=ip_address("192.0.2.2"))  # fmt: skip


# -- initial ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ['"tcp"', '"http"', '"https"', '"udp"', '"dns"', '"exec", command = "true"']
)
def test_initial_is_a_key_of_every_check_type(kind: str) -> None:
    check = check_of(f'{{ type = {kind}, initial = "up" }}')
    assert check.timing == Timing(initial="up")  # type: ignore[attr-defined]
    assert check_of(f"{{ type = {kind} }}").timing.initial == "unknown"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ('"down"', 'initial: must be one of unknown, up: "down"'),
        ("true", "initial: expected a string, got a boolean: true"),
    ],
)
def test_initial_errors(value: str, error: str) -> None:
    assert errors_of(f'{{ type = "tcp", initial = {value} }}') == [f"{WHERE}.{error}"]


def test_an_inherited_key_wrong_in_itself_stays_the_services_error(pem: dict[str, Path]) -> None:
    """The service's own wrong cert_file is not left out of a server's check
    (which would make its key_file "only with cert_file" there): its error
    is the service's, once."""
    text = f"""
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:443"
check = {{ type = "https", cert_file = "{pem["enc_cert"]}", key_file = "{pem["key"]}" }}
real_server = [{{ address = "10.0.0.2", check = {{ ca_file = "/dev/null" }} }}, {{ address = "10.0.0.3", check = {{ host = "example.org" }} }}]
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml", NO_MODULES)
    assert info.value.errors == [
        f'virtual_server[0].check.cert_file: cannot load it: [X509: KEY_VALUES_MISMATCH] key values mismatch: "{pem["enc_cert"]}"',
        'virtual_server[0].real_server[0].check.ca_file: cannot load it: not a regular file: "/dev/null"',
    ]
