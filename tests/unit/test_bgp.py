"""VIPs announced over BGP (director/bgp.py): the pure parts (verdicts,
announced_after, render, parse_protocols, bgp_report), render's output
read by the real BIRD's parser (`bird -p`), BgpKeeper in virtual time with
a fake speaker (starts, reconfigures, restarts with backoff, stops), and a
Director announcing and withdrawing its VIP (health, maintenance, reload,
stop). BIRD running for real is in tests/kernel/test_bgp.py."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest
import structlog.testing
import trio
import trio.testing
from engine_support import Network, running

from director.bgp import (
    RETRY_BASE,
    RETRY_CAP,
    BgpKeeper,
    BgpPeerStatus,
    BgpRouteStatus,
    BgpStatus,
    ProtocolState,
    SpeakerError,
    announced_after,
    bgp_report,
    parse_protocols,
    protocol_name,
    render,
    routes_in,
    verdicts,
)
from director.config import ConfigError, parse_config
from director.config.model import BgpPeer, BgpSettings, Config, RealServerId, VirtualServer
from director.control.handler import Controller
from director.control.messages import Peer, Request
from director.desired import AdminState, RealServerView
from director.engine import Director
from director.health.state import Health
from director.ipvs.facts import NO_MODULES
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import IPAddress
from director.kernel import KernelTable
from director.status import status_text

UP, DOWN, UNKNOWN = (RealServerView(h) for h in (Health.UP, Health.DOWN, Health.UNKNOWN))
VIP, VIP2, VIP6 = ip_address("10.9.1.100"), ip_address("10.9.1.101"), ip_address("2001:db8:1::100")
PEER4 = '[[bgp.peer]]\naddress = "10.9.0.1"\nas = 65000\n'
PEER6 = '[[bgp.peer]]\naddress = "2001:db8::1"\nas = 65000\n'
HEAD = "[bgp]\nlocal_as = 65001\n" + PEER4 + PEER6
CHECK = 'check = { type = "tcp", interval = 1.0, timeout = 0.5, rise = 1, fall = 1 }\n'


def service(
    address: str = "10.9.1.100:80", quorum: int = 1, servers: int = 2, bgp: bool = True
) -> str:
    """A [[virtual_server]] with `servers` real servers (10.9.2.N, or
    2001:db8:2::N for an IPv6 address, N from 1, port 80)."""
    text = (
        f'[[virtual_server]]\nprotocol = "tcp"\naddress = "{address}"\nscheduler = "rr"\n'
        f"quorum = {quorum}\nbgp = {'true' if bgp else 'false'}\n{CHECK}"
    )
    for i in range(1, servers + 1):
        server = f"[2001:db8:2::{i}]:80" if address.startswith("[") else f"10.9.2.{i}:80"
        text += f'[[virtual_server.real_server]]\naddress = "{server}"\n'
    return text


def config_of(text: str) -> Config:
    return parse_config(text, "t.toml", NO_MODULES)


def settings_of(text: str = HEAD) -> BgpSettings:
    settings = config_of(text).bgp
    assert settings is not None
    return settings


def views(vs: VirtualServer, *states: RealServerView) -> dict[RealServerId, RealServerView]:
    return dict(zip(vs.real_server_ids, states, strict=True))


def peer(address: str, as_number: int = 65000, **fields: object) -> BgpPeer:
    return BgpPeer(ip_address(address), as_number, **fields)  # type: ignore[arg-type]


def settings(*peers: BgpPeer, **fields: object) -> BgpSettings:
    return BgpSettings(65001, peers or (peer("10.9.0.1"),), **fields)  # type: ignore[arg-type]


# -- verdicts ------------------------------------------------------------------------------


def test_the_quorum_decides() -> None:
    vs = config_of(HEAD + service(quorum=2, servers=3)).virtual_servers[0]
    assert verdicts([vs], views(vs, UP, UP, DOWN), False) == {VIP: True}
    assert verdicts([vs], views(vs, UP, DOWN, DOWN), False) == {VIP: False}
    assert verdicts([vs], views(vs, UP, UNKNOWN, DOWN), False) == {VIP: None}
    assert verdicts([vs], {}, False) == {VIP: None}  # nothing checked yet


def test_maintenance_withdraws_whatever_the_health() -> None:
    vs = config_of(HEAD + service()).virtual_servers[0]
    assert verdicts([vs], views(vs, UP, UP), True) == {VIP: False}
    assert verdicts([vs], {}, True) == {VIP: False}


@pytest.mark.parametrize("state", [AdminState.DISABLED, AdminState.DRAIN])
def test_a_server_out_of_rotation_does_not_count(state: AdminState) -> None:
    vs = config_of(HEAD + service(quorum=2)).virtual_servers[0]
    health = views(vs, UP, UP)
    assert verdicts([vs], health, False, {vs.real_server_ids[1]: state}) == {VIP: False}
    assert verdicts([vs], health, False, {vs.real_server_ids[1]: AdminState.ENABLED}) == {VIP: True}
    assert verdicts([vs], health, False, {}) == {VIP: True}


def test_services_on_one_address_announce_it_while_any_qualifies() -> None:
    web, tls = config_of(HEAD + service() + service("10.9.1.100:443", servers=1)).virtual_servers
    assert verdicts([web, tls], {**views(web, DOWN, DOWN), **views(tls, UP)}, False) == {VIP: True}
    assert verdicts([web, tls], {**views(web, UP, DOWN), **views(tls, DOWN)}, False) == {VIP: True}
    assert verdicts([web, tls], {**views(web, DOWN, DOWN), **views(tls, UNKNOWN)}, False) == {
        VIP: None
    }
    assert verdicts([web, tls], {**views(web, DOWN, DOWN), **views(tls, DOWN)}, False) == {
        VIP: False
    }


def test_services_without_bgp_are_ignored() -> None:
    services = config_of(
        HEAD + service() + service("10.9.1.101:80", bgp=False) + service("[2001:db8:1::100]:80")
    ).virtual_servers
    health = {rid: UP for vs in services for rid in vs.real_server_ids}
    assert verdicts(services, health, False) == {VIP: True, VIP6: True}
    # A service with bgp = false on the announced address takes no part either.
    shared = config_of(HEAD + service() + service("10.9.1.100:443", bgp=False)).virtual_servers
    health = {**views(shared[0], DOWN, DOWN), **views(shared[1], UP, UP)}
    assert verdicts(shared, health, False) == {VIP: False}


# -- announced_after ---------------------------------------------------------------------


def test_a_true_verdict_announces_and_a_false_one_withdraws() -> None:
    assert announced_after(set(), {VIP: True}) == {VIP}
    assert announced_after({VIP}, {VIP: True}) == {VIP}
    assert announced_after({VIP}, {VIP: False}) == frozenset()
    assert announced_after(set(), {VIP: False}) == frozenset()


def test_an_unknown_verdict_keeps_what_is() -> None:
    assert announced_after({VIP}, {VIP: None}) == {VIP}
    assert announced_after(set(), {VIP: None}) == frozenset()
    assert announced_after({VIP}, {VIP: None, VIP2: None, VIP6: True}) == {VIP, VIP6}


def test_an_address_no_longer_judged_is_withdrawn() -> None:
    assert announced_after({VIP, VIP6}, {VIP6: None}) == {VIP6}
    assert announced_after({VIP}, {}) == frozenset()


# -- render ----------------------------------------------------------------------------


def block(text: str, head: str) -> list[str]:
    """The lines of the block that starts with the line `head` (up to its
    closing brace at the start of a line)."""
    lines = text.splitlines()
    start = lines.index(head)
    end = lines.index("}", start)
    return lines[start + 1 : end]


def bgp_block(text: str, p: BgpPeer) -> list[str]:
    return block(text, f"protocol bgp {protocol_name(p)} {{")


ROUTES = [VIP2, VIP6, VIP, ip_address("2001:db8:1::1")]


def test_each_family_has_a_static_protocol_with_its_routes_in_order() -> None:
    text = render(settings(peer("10.9.0.1"), peer("2001:db8::1")), [*ROUTES, VIP])
    assert block(text, "protocol static director_vips4 {") == [
        "  ipv4;",
        "  route 10.9.1.100/32 unreachable;",
        "  route 10.9.1.101/32 unreachable;",
    ]
    assert block(text, "protocol static director_vips6 {") == [
        "  ipv6;",
        "  route 2001:db8:1::1/128 unreachable;",
        "  route 2001:db8:1::100/128 unreachable;",
    ]
    assert routes_in(text) == {
        "10.9.1.100/32",
        "10.9.1.101/32",
        "2001:db8:1::1/128",
        "2001:db8:1::100/128",
    }


def test_no_routes_leaves_both_static_protocols_empty() -> None:
    text = render(settings(), [])
    assert block(text, "protocol static director_vips4 {") == ["  ipv4;"]
    assert block(text, "protocol static director_vips6 {") == ["  ipv6;"]
    assert routes_in(text) == frozenset()


def test_each_peer_gets_the_channel_of_its_family() -> None:
    four, six = peer("10.9.0.1"), peer("2001:db8::1", 65002)
    text = render(settings(four, six), ROUTES)
    assert bgp_block(text, four) == [
        "  debug { states };",
        "  local as 65001;",
        "  neighbor 10.9.0.1 port 179 as 65000;",
        "  hold time 90;",
        "  keepalive time 30;",
        "  connect retry time 5;",
        "  connect delay time 1;",
        "  error wait time 5, 60;",
        "  ipv4 {",
        "    import none;",
        "    export filter director_export;",
        "    next hop self;",
        "  };",
    ]
    six_block = bgp_block(text, six)
    assert "  neighbor 2001:db8::1 port 179 as 65002;" in six_block
    assert "  ipv6 {" in six_block and "  ipv4 {" not in six_block
    # BIRD's channels carry one family each: the IPv4 peer's exports come
    # from the IPv4 table (director_vips4's routes), the IPv6 peer's from the IPv6 one.
    assert [line for line in text.splitlines() if line.startswith("protocol ")] == [
        "protocol device {}",
        "protocol static director_vips4 {",
        "protocol static director_vips6 {",
        "protocol bgp peer_10_9_0_1 {",
        "protocol bgp peer_2001_db8__1 {",
    ]
    assert "protocol kernel" not in text  # nothing in the director's routing table


def test_med_and_local_pref_are_set_by_the_export_filter() -> None:
    line = "filter director_export {{ {} }}"
    assert line.format("accept;") in render(settings(), []).splitlines()
    text = render(settings(med=100), [])
    assert line.format("bgp_med = 100; accept;") in text.splitlines()
    text = render(settings(peer("10.9.0.1", 65001), med=0, local_pref=4294967295), [])
    assert line.format("bgp_med = 0; bgp_local_pref = 4294967295; accept;") in text.splitlines()
    assert (
        line.format("bgp_local_pref = 200; accept;")
        in render(settings(local_pref=200), []).splitlines()
    )


def test_next_hop_goes_to_the_peers_of_its_family_only() -> None:
    four, six = peer("10.9.0.1"), peer("2001:db8::1")
    text = render(settings(four, six, next_hop=ip_address("10.9.0.11")), ROUTES)
    assert "    next hop address 10.9.0.11;" in bgp_block(text, four)
    assert "    next hop self;" in bgp_block(text, six)
    text = render(settings(four, six, next_hop=ip_address("2001:db8::11")), ROUTES)
    assert "    next hop self;" in bgp_block(text, four)
    assert "    next hop address 2001:db8::11;" in bgp_block(text, six)


def test_hold_time_and_keepalives() -> None:
    lines = bgp_block(render(settings(hold_time=0), []), peer("10.9.0.1"))
    assert "  hold time 0;" in lines
    assert not any("keepalive" in line for line in lines)
    lines = bgp_block(render(settings(hold_time=3), []), peer("10.9.0.1"))
    assert lines[3:5] == ["  hold time 3;", "  keepalive time 1;"]
    lines = bgp_block(render(settings(hold_time=9), []), peer("10.9.0.1"))
    assert lines[3:5] == ["  hold time 9;", "  keepalive time 3;"]
    lines = bgp_block(render(settings(hold_time=65535), []), peer("10.9.0.1"))
    assert lines[3:5] == ["  hold time 65535;", "  keepalive time 21845;"]


def test_multihop_port_and_password_are_the_peers_own() -> None:
    far = peer("10.8.0.1", port=1179, multihop=2, password="s3cr#t x")
    near = peer("10.9.0.1")
    text = render(settings(far, near), [])
    assert "  neighbor 10.8.0.1 port 1179 as 65000;" in bgp_block(text, far)
    assert "  multihop 2;" in bgp_block(text, far)
    assert '  password "s3cr#t x";' in bgp_block(text, far)
    assert not any("multihop" in line or "password" in line for line in bgp_block(text, near))


def test_router_id_only_when_set() -> None:
    assert "router id" not in render(settings(), [])
    assert "router id 10.9.0.11;" in render(settings(router_id=ip_address("10.9.0.11")), [])


def test_protocol_names_are_bird_symbols() -> None:
    assert protocol_name(peer("10.9.0.1")) == "peer_10_9_0_1"
    assert protocol_name(peer("2001:db8::1")) == "peer_2001_db8__1"
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", protocol_name(peer("::ffff:10.9.0.1")))


# -- render read by BIRD's own parser -------------------------------------------------------

BIRD = shutil.which("bird")
needs_bird = pytest.mark.skipif(BIRD is None, reason="BIRD 2 (Debian's bird2) is not installed")


def bird_parse(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`bird -p`: parse the config only (exit 0 when valid)."""
    assert BIRD is not None
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    return subprocess.run(
        [BIRD, "-p", "-c", str(conf)], capture_output=True, text=True, timeout=60, check=False
    )


EVERY_OPTION = BgpSettings(
    local_as=65001,
    peers=(
        peer("10.9.0.1", 65000, port=1179, multihop=255, password="a b#c'$%{}~!;x"),
        peer("10.9.0.2", 65001, multihop=1),  # iBGP: local_pref goes there
        peer("2001:db8::1", 4294967295, port=1, password="x" * 80),
        peer("2001:db8::2", 65001),
    ),
    router_id=ip_address("10.9.0.11"),
    next_hop=ip_address("10.9.0.11"),
    hold_time=3,
    med=4294967295,
    local_pref=0,
)
MANY = [IPv4Address(int(ip_address("10.20.0.0")) + i) for i in range(1500)] + [
    IPv6Address(int(ip_address("2001:db8:20::")) + i) for i in range(1500)
]


@needs_bird
@pytest.mark.parametrize(
    ("bgp", "routes"),
    [
        (EVERY_OPTION, []),
        (EVERY_OPTION, [VIP, VIP6]),
        (EVERY_OPTION, MANY),
        (replace(EVERY_OPTION, next_hop=ip_address("2001:db8::11"), hold_time=0), MANY),
        (replace(EVERY_OPTION, med=0, local_pref=4294967295, hold_time=65535), [VIP]),
        (settings(), []),
        (settings(peer("2001:db8::1")), [VIP6]),
        (settings(peer("10.9.0.1", 4294967295)), [VIP, VIP2]),
    ],
    ids=[
        "every-option-no-routes",
        "every-option-both-families",
        "every-option-3000-routes",
        "v6-next-hop-hold-0",
        "attributes-at-their-ends",
        "defaults-no-routes",
        "ipv6-only",
        "ipv4-only",
    ],
)
def test_bird_takes_what_render_writes(
    tmp_path: Path, bgp: BgpSettings, routes: list[IPAddress]
) -> None:
    result = bird_parse(tmp_path, render(bgp, routes))
    assert result.returncode == 0, result.stderr


@needs_bird
def test_bird_has_nothing_to_say_of_what_render_writes(tmp_path: Path) -> None:
    # Each word BIRD says of its config at start is logged by directord, and
    # again at each `birdc configure` (a <WARN> per peer, at warning level).
    result = bird_parse(tmp_path, render(EVERY_OPTION, [VIP, VIP6]))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_bird
@pytest.mark.parametrize(
    "text",
    [
        # a peer at the unspecified address: BIRD says "Neighbor must be configured"
        "[bgp]\nlocal_as = 65001\n" + '[[bgp.peer]]\naddress = "::"\nas = 65000\n',
        # an IPv6 next hop with a zone: BIRD's grammar has no '%' there
        '[bgp]\nlocal_as = 65001\nnext_hop = "2001:db8::11%eth0"\n' + PEER6,
        # a VIP with a zone: the route is "2001:db8:1::100%eth0/128"
        HEAD + service("[2001:db8:1::100%eth0]:80"),
    ],
    ids=["peer-unspecified", "next-hop-with-zone", "vip-with-zone"],
)
def test_a_config_directord_takes_renders_one_bird_takes(tmp_path: Path, text: str) -> None:
    """Whatever is written into BIRD's config is checked first
    (director.config.bgp): a value BIRD would refuse is a config error,
    not a BIRD that never starts."""
    try:
        parsed = config_of(text)
    except ConfigError:
        return  # refused with an error naming the key: as it should be
    assert parsed.bgp is not None
    routes = [vs.key.address for vs in parsed.virtual_servers if vs.key.address is not None]
    result = bird_parse(tmp_path, render(parsed.bgp, routes))
    assert result.returncode == 0, result.stderr


# -- parse_protocols -------------------------------------------------------------------------

# `birdc show protocols` of BIRD 2.0.12 with a config from render (three
# peers: one Established, one refused, one unreachable), captured on this
# project's host in two network namespaces; trailing spaces are BIRD's.
SHOW_PROTOCOLS = (
    "BIRD 2.0.12 ready.\n"
    "Name       Proto      Table      State  Since         Info\n"
    "device1    Device     ---        up     02:13:06.446  \n"
    "director_vips4 Static     master4    up     02:13:06.446  \n"
    "director_vips6 Static     master6    up     02:13:06.446  \n"
    "peer_10_77_0_1 BGP        ---        start  02:13:25.129  Active        "
    "Socket: Connection refused\n"
    "peer_fd00_77__1 BGP        ---        up     02:13:07.307  Established   \n"
    "peer_10_77_0_9 BGP        ---        start  02:13:06.446  Connect       "
    "Socket: No route to host\n"
)
# The same after 20 hours: BIRD then shows the date alone (timeformat protocol "%F").
SHOW_PROTOCOLS_DAYS = (
    "BIRD 2.0.12 ready.\n"
    "Name       Proto      Table      State  Since         Info\n"
    "device1    Device     ---        up     2026-12-01    \n"
    "up4        BGP        ---        start  2026-12-01    Active        "
    "Socket: Connection refused\n"
    "up6        BGP        ---        start  2026-12-01    Active        \n"
    "up7        BGP        ---        up     2026-12-01    Established   \n"
)


def test_parse_protocols_reads_birds_table() -> None:
    assert parse_protocols(SHOW_PROTOCOLS) == {
        "device1": ProtocolState("device1", "up", "02:13:06.446", ""),
        "director_vips4": ProtocolState("director_vips4", "up", "02:13:06.446", ""),
        "director_vips6": ProtocolState("director_vips6", "up", "02:13:06.446", ""),
        "peer_10_77_0_1": ProtocolState(
            "peer_10_77_0_1", "start", "02:13:25.129", "Active        Socket: Connection refused"
        ),
        "peer_fd00_77__1": ProtocolState("peer_fd00_77__1", "up", "02:13:07.307", "Established"),
        "peer_10_77_0_9": ProtocolState(
            "peer_10_77_0_9", "start", "02:13:06.446", "Connect       Socket: No route to host"
        ),
    }


def test_parse_protocols_reads_a_date_for_since() -> None:
    rows = parse_protocols(SHOW_PROTOCOLS_DAYS)
    assert rows["device1"] == ProtocolState("device1", "up", "2026-12-01", "")
    assert rows["up4"] == ProtocolState(
        "up4", "start", "2026-12-01", "Active        Socket: Connection refused"
    )
    assert rows["up6"] == ProtocolState("up6", "start", "2026-12-01", "Active")
    assert rows["up7"] == ProtocolState("up7", "up", "2026-12-01", "Established")


def test_parse_protocols_of_nothing() -> None:
    assert parse_protocols("") == {}
    assert parse_protocols("BIRD 2.0.12 ready.\n") == {}
    assert parse_protocols("BIRD 2.0.12 ready.\nName Proto Table State Since Info\n") == {}


# -- bgp_report ---------------------------------------------------------------------------


def report_of(
    text: str,
    verdicts_now: Mapping[IPAddress, bool | None],
    announced: set[IPAddress],
    *,
    maintenance: bool = False,
    protocols: Mapping[str, ProtocolState] | None = None,
) -> list[BgpRouteStatus]:
    config = config_of(text)
    assert config.bgp is not None
    report = bgp_report(
        config.bgp,
        config.virtual_servers,
        verdicts_now,
        announced,
        protocols,
        speaker="running",
        pid=7,
        error=None,
        maintenance=maintenance,
    )
    return list(report.routes)


def test_report_reasons() -> None:
    text = HEAD + service() + service("10.9.1.100:443") + service("[2001:db8:1::100]:80")
    both = ("tcp:10.9.1.100:80", "tcp:10.9.1.100:443")
    six = ("tcp:[2001:db8:1::100]:80",)
    assert report_of(text, {VIP: True, VIP6: False}, {VIP}) == [
        BgpRouteStatus("10.9.1.100/32", both, True, "quorum met"),
        BgpRouteStatus("2001:db8:1::100/128", six, False, "quorum not met"),
    ]
    assert report_of(text, {VIP: None, VIP6: None}, {VIP}) == [
        BgpRouteStatus("10.9.1.100/32", both, True, "quorum not known yet: kept as it is"),
        BgpRouteStatus("2001:db8:1::100/128", six, False, "quorum not known yet: kept as it is"),
    ]
    assert report_of(text, {VIP: False, VIP6: False}, set(), maintenance=True) == [
        BgpRouteStatus("10.9.1.100/32", both, False, "maintenance"),
        BgpRouteStatus("2001:db8:1::100/128", six, False, "maintenance"),
    ]


def test_report_says_which_services_on_a_shared_address_qualify() -> None:
    """Operator trial: port 80 with no server up and 443 fine on one VIP:
    announced (443 qualifies), and the reason says 80 does not."""
    from director.bgp import service_verdicts

    config = config_of(HEAD + service() + service("10.9.1.100:443", servers=1))
    web, tls = config.virtual_servers
    bgp = config.bgp
    assert bgp is not None

    def reason(health: dict[RealServerId, RealServerView]) -> str:
        each = service_verdicts([web, tls], health, False)
        (route,) = bgp_report(
            bgp,
            config.virtual_servers,
            {VIP: True},
            {VIP},
            None,
            speaker="running",
            pid=1,
            error=None,
            maintenance=False,
            service_verdicts=each,
        ).routes
        return route.reason

    assert (
        reason({**views(web, DOWN, DOWN), **views(tls, UP)})
        == "quorum met (met by tcp:10.9.1.100:443; not by tcp:10.9.1.100:80)"
    )
    assert reason({**views(web, UP, UP), **views(tls, UP)}) == "quorum met"


def test_report_of_a_route_no_longer_configured() -> None:
    assert report_of(HEAD + service(bgp=False), {}, {VIP}) == [
        BgpRouteStatus("10.9.1.100/32", (), True, "no longer configured")
    ]
    assert report_of(HEAD, {}, {VIP6}, maintenance=True) == [
        BgpRouteStatus("2001:db8:1::100/128", (), True, "no longer configured")
    ]


def test_report_peers_with_birds_states() -> None:
    bgp = settings_of()
    protocols = {
        "peer_10_9_0_1": ProtocolState("peer_10_9_0_1", "up", "02:13:07.307", "Established"),
        "peer_2001_db8__1": ProtocolState("peer_2001_db8__1", "down", "02:13:07.307", ""),
    }
    report = bgp_report(
        bgp, (), {}, set(), protocols, speaker="running", pid=7, error=None, maintenance=False
    )
    assert report.peers == (
        BgpPeerStatus("peer_10_9_0_1", "10.9.0.1", 65000, "Established"),
        BgpPeerStatus("peer_2001_db8__1", "2001:db8::1", 65000, "down"),
    )
    assert (report.speaker, report.pid, report.error) == ("running", 7, None)
    report = bgp_report(
        bgp, (), {}, set(), None, speaker="failed", pid=None, error="gone", maintenance=False
    )
    assert [p.state for p in report.peers] == ["unknown", "unknown"]
    assert (report.speaker, report.pid, report.error) == ("failed", None, "gone")
    report = bgp_report(
        bgp,
        (),
        {},
        set(),
        {"peer_10_9_0_1": protocols["peer_10_9_0_1"]},
        speaker="running",
        pid=7,
        error=None,
        maintenance=False,
    )
    assert [p.state for p in report.peers] == ["Established", "unknown"]


# -- BgpKeeper with a fake speaker, in virtual time ------------------------------------------


class FakeSpeaker:
    """director.bgp.Speaker in memory. `run` records its config, raises
    SpeakerError for each of `start_errors` (before started), else waits
    `start_delay`, calls started(pid) and lives until `exit()` or for
    `lifetime` seconds, then returns (exit_code, words)."""

    def __init__(self) -> None:
        self.configs: list[str] = []  # every config given: at each start and each configure
        self.current: str | None = None  # the config in effect (run, or configure accepted)
        self.settings: list[BgpSettings] = []  # of each run
        self.starts: list[float] = []  # when each run was called
        self.exits: list[float] = []  # when each run ended (returned, raised or cancelled)
        self.configures: list[float] = []  # when configure was called
        self.start_errors: list[str] = []
        self.configure_errors: list[str] = []
        self.applies_failed_configures = False  # as BIRD does when birdc times out
        self.protocols_answer: str | SpeakerError = SHOW_PROTOCOLS_OF_HEAD
        self.protocol_asks = 0
        self.start_delay = 0.0
        self.lifetime = math.inf
        self.exit_code, self.words = 1, "bird: out of memory"
        self.alive = False
        self.pid = 1000
        self._exit = trio.Event()

    def exit(self) -> None:
        self._exit.set()

    async def run(
        self,
        settings: BgpSettings,
        config: str,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> tuple[int, str]:
        self.starts.append(trio.current_time())
        self.settings.append(settings)
        self.configs.append(config)
        if self.start_errors:
            self.exits.append(trio.current_time())
            raise SpeakerError(self.start_errors.pop(0))
        self.alive = True
        try:
            await trio.sleep(self.start_delay)
            self.pid += 1
            self.current = config
            self._exit = trio.Event()
            task_status.started(self.pid)
            with trio.move_on_after(self.lifetime):
                await self._exit.wait()
            return self.exit_code, self.words
        finally:
            self.alive = False
            self.current = None
            self.exits.append(trio.current_time())

    async def configure(self, settings: BgpSettings, config: str) -> None:
        assert self.alive, "configure without a running speaker"
        self.configures.append(trio.current_time())
        self.configs.append(config)
        await trio.sleep(0.01)  # birdc's round trip
        if self.configure_errors:
            if self.applies_failed_configures:
                self.current = config
            raise SpeakerError(self.configure_errors.pop(0))
        self.current = config

    async def protocols(self, settings: BgpSettings) -> str:
        self.protocol_asks += 1
        if isinstance(self.protocols_answer, SpeakerError):
            raise self.protocols_answer
        return self.protocols_answer


SHOW_PROTOCOLS_OF_HEAD = (
    "BIRD 2.0.12 ready.\n"
    "Name       Proto      Table      State  Since         Info\n"
    "device1    Device     ---        up     02:13:06.446  \n"
    "peer_10_9_0_1 BGP        ---        up     02:13:07.292  Established   \n"
    "peer_2001_db8__1 BGP        ---        start  02:13:25.129  Active        "
    "Socket: Connection refused\n"
)


class Keeping:
    """A BgpKeeper over HEAD and `services`, fed health by `set`."""

    def __init__(self, text: str = HEAD + service() + service("[2001:db8:1::100]:80")) -> None:
        self.config = config_of(text)
        self.speaker = FakeSpeaker()
        self.keeper = BgpKeeper(self.config.bgp, self.speaker)
        self.keeper.configure(self.config.bgp, self.config.virtual_servers)
        self.health: dict[RealServerId, RealServerView] = {}

    def set(
        self, state: RealServerView, *, maintenance: bool = False, why: str = "test"
    ) -> list[tuple[str, IPAddress]]:
        """Every real server in `state`; the changes update made."""
        self.health = {
            rid: state for vs in self.config.virtual_servers for rid in vs.real_server_ids
        }
        self.keeper.poke()
        return self.keeper.update(lambda: self.health, {}, maintenance, why)

    def routes(self) -> frozenset[str]:
        """The routes in the config the speaker runs with."""
        assert self.speaker.current is not None
        return routes_in(self.speaker.current)


@asynccontextmanager
async def keeper_running(keeper: BgpKeeper) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        yield
        nursery.cancel_scope.cancel()


BOTH = frozenset({"10.9.1.100/32", "2001:db8:1::100/128"})


async def test_started_with_nothing_announced(autojump_clock: trio.testing.MockClock) -> None:
    k = Keeping()
    async with keeper_running(k.keeper):
        await trio.testing.wait_all_tasks_blocked()
        assert k.speaker.alive and k.routes() == frozenset()
        assert (k.keeper.state, k.keeper.pid, k.keeper.error) == ("running", 1001, None)
        assert k.speaker.settings == [k.config.bgp]


async def test_started_with_the_announced_routes(autojump_clock: trio.testing.MockClock) -> None:
    k = Keeping()
    assert k.set(UP) == [("announce", VIP), ("announce", VIP6)]
    async with keeper_running(k.keeper):
        await trio.testing.wait_all_tasks_blocked()
        assert k.routes() == BOTH
        assert k.speaker.configs == [k.speaker.current]  # no configure on top of it


async def test_update_announces_withdraws_and_keeps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    async with keeper_running(k.keeper):
        await trio.testing.wait_all_tasks_blocked()
        with structlog.testing.capture_logs() as logs:
            assert k.set(UP) == [("announce", VIP), ("announce", VIP6)]
            await trio.sleep(1)
        assert k.routes() == BOTH and len(k.speaker.configures) == 1
        assert [
            (e["event"], e["address"], e["why"], e["bird"]) for e in logs if "address" in e
        ] == [
            ("bgp_announced", "10.9.1.100/32", "quorum met", "running"),
            ("bgp_announced", "2001:db8:1::100/128", "quorum met", "running"),
        ]
        assert k.set(UNKNOWN) == []  # not known: kept
        await trio.sleep(1)
        assert k.routes() == BOTH and len(k.speaker.configures) == 1
        with structlog.testing.capture_logs() as logs:
            assert k.set(DOWN, why="quorum not met") == [
                ("withdraw", VIP),
                ("withdraw", VIP6),
            ]
            await trio.sleep(1)
        assert k.routes() == frozenset() and len(k.speaker.configures) == 2
        assert [(e["event"], e["address"], e["why"]) for e in logs if "address" in e] == [
            ("bgp_withdrawn", "10.9.1.100/32", "quorum not met"),
            ("bgp_withdrawn", "2001:db8:1::100/128", "quorum not met"),
        ]
        assert k.set(UNKNOWN) == []  # not known: stays withdrawn
        await trio.sleep(1)
        assert len(k.speaker.configures) == 2
        assert k.speaker.starts == [0.0]


async def test_maintenance_withdraws_with_its_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    async with keeper_running(k.keeper):
        k.set(UP)
        await trio.sleep(1)
        with structlog.testing.capture_logs() as logs:
            assert k.set(UP, maintenance=True, why="maintenance on") == [
                ("withdraw", VIP),
                ("withdraw", VIP6),
            ]
            await trio.sleep(1)
        assert k.routes() == frozenset()
        assert {e["why"] for e in logs if e["event"] == "bgp_withdrawn"} == {"maintenance"}
        assert k.set(UP, why="maintenance off") == [("announce", VIP), ("announce", VIP6)]
        await trio.sleep(1)
        assert k.routes() == BOTH


async def test_update_does_nothing_unless_due(autojump_clock: trio.testing.MockClock) -> None:
    k = Keeping()
    k.set(UNKNOWN)
    assert k.keeper.due_at() == math.inf
    k.health = {rid: UP for vs in k.config.virtual_servers for rid in vs.real_server_ids}
    assert k.keeper.update(lambda: k.health, {}, False, "x") == []  # not poked
    k.keeper.poke()
    assert k.keeper.due_at() == -math.inf
    assert k.keeper.update(lambda: k.health, {}, False, "x") == [
        ("announce", VIP),
        ("announce", VIP6),
    ]


async def test_changes_during_a_start_reach_the_speaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # BIRD takes a while to answer on its socket: what changes meanwhile
    # must reach it once it runs.
    k = Keeping()
    k.speaker.start_delay = 1.0
    async with keeper_running(k.keeper):
        await trio.sleep(0.5)
        assert k.keeper.state == "starting"
        k.set(UP)
        await trio.sleep(2)
        assert k.keeper.state == "running"
        assert k.routes() == BOTH


async def test_each_change_goes_whole_through_configure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping(HEAD + service() + service("10.9.1.101:80") + service("[2001:db8:1::100]:80"))
    async with keeper_running(k.keeper):
        await trio.sleep(1)
        vs = k.config.virtual_servers
        for states, expected in [
            ((UP, UP, DOWN, DOWN, DOWN, DOWN), {"10.9.1.100/32"}),
            ((UP, UP, UP, DOWN, DOWN, DOWN), {"10.9.1.100/32", "10.9.1.101/32"}),
            ((DOWN, DOWN, UP, DOWN, UP, DOWN), {"10.9.1.101/32", "2001:db8:1::100/128"}),
        ]:
            k.health = {
                **views(vs[0], *states[0:2]),
                **views(vs[1], *states[2:4]),
                **views(vs[2], *states[4:6]),
            }
            k.keeper.poke()
            k.keeper.update(lambda: k.health, {}, False, "test")
            await trio.sleep(1)
            assert k.routes() == expected
        assert [routes_in(c) for c in k.speaker.configs] == [
            frozenset(),
            {"10.9.1.100/32"},
            {"10.9.1.100/32", "10.9.1.101/32"},
            {"10.9.1.101/32", "2001:db8:1::100/128"},
        ]
        assert k.speaker.configs[-1] == render(k.config.bgp, {VIP2, VIP6})  # type: ignore[arg-type]


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


async def test_a_speaker_that_cannot_start_is_tried_again_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    k.speaker.start_errors = ["cannot run setpriv: No such file or directory"] * 8
    async with keeper_running(k.keeper):
        with structlog.testing.capture_logs() as logs:
            await trio.sleep(0.5)
            assert (k.keeper.state, k.keeper.pid) == ("failed", None)
            assert k.keeper.error == "cannot run setpriv: No such file or directory"
            report = await k.keeper.report(False)
            assert report is not None
            assert (report.speaker, report.pid, report.error, report.retry_in) == (
                "failed",
                None,
                "cannot run setpriv: No such file or directory",
                0.5,
            )
            assert [p.state for p in report.peers] == ["unknown", "unknown"]
            assert k.speaker.protocol_asks == 0
            await trio.sleep(200)
        assert gaps(k.speaker.starts) == [1, 2, 4, 8, 16, 30, 30, 30]
        assert k.keeper.state == "running" and k.keeper.error is None
        failed = [e for e in logs if e["event"] == "bgp_speaker_failed"]
        assert [e["restart_in"] for e in failed] == [1, 2, 4, 8, 16, 30, 30, 30]
        assert failed[0]["error"] == "cannot run setpriv: No such file or directory"
        assert [e["after_failures"] for e in logs if e["event"] == "bgp_speaker_recovered"] == [8]


def test_status_says_what_failed_and_when_the_next_start_is() -> None:
    def line(retry_in: float | None) -> str:
        bgp = BgpStatus("failed", None, "exited with status 1", (), (), retry_in)
        return status_text((), bgp=bgp).splitlines()[-1]

    assert line(4.0) == "BGP ([bgp]): BIRD failed: exited with status 1 (next start in 4 s)"
    assert line(0.5) == "BGP ([bgp]): BIRD failed: exited with status 1 (next start in 0.5 s)"
    assert line(None) == "BGP ([bgp]): BIRD failed: exited with status 1 (starting again now)"


async def test_a_route_decided_while_bird_failed_is_logged_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Operator trial: "bgp_announced" while BIRD had failed read as if the
    # router had the route; the line says BIRD's state, and the route goes
    # out with bgp_speaker_started's `announced` once BIRD runs.
    k = Keeping()
    k.speaker.start_errors = ["cannot run setpriv: No such file or directory"]
    async with keeper_running(k.keeper):
        with structlog.testing.capture_logs() as logs:
            await trio.sleep(0.5)
            assert k.set(UP) == [("announce", VIP), ("announce", VIP6)]
            await trio.sleep(2)
        assert k.routes() == BOTH
    announced = [(e["address"], e["bird"]) for e in logs if e["event"] == "bgp_announced"]
    assert announced == [("10.9.1.100/32", "failed"), ("2001:db8:1::100/128", "failed")]
    [started] = [e for e in logs if e["event"] == "bgp_speaker_started"]
    assert started["announced"] == ["10.9.1.100/32", "2001:db8:1::100/128"]


async def test_a_speaker_that_exits_is_started_again_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # BIRD that ends by itself as soon as it has started, again and again:
    # 1 s, doubling up to 30 s (docs/config.md, docs/deployment.md), not
    # a restart every second forever.
    k = Keeping()
    k.speaker.lifetime = 0.0
    async with keeper_running(k.keeper):
        await trio.sleep(200)
    assert gaps(k.speaker.starts)[:8] == [1, 2, 4, 8, 16, 30, 30, 30]


async def test_an_exit_is_logged_with_its_words_and_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    k.set(UP)
    async with keeper_running(k.keeper):
        await trio.sleep(10)
        with structlog.testing.capture_logs() as logs:
            k.speaker.start_delay = 1.0
            k.speaker.exit()
            await trio.testing.wait_all_tasks_blocked()
            assert (k.keeper.state, k.keeper.pid) == ("failed", None)
            assert k.keeper.error == "exited with status 1; last: bird: out of memory"
            report = await k.keeper.report(False)
            assert report is not None and report.retry_in == 1.0
            # Starting again (1 s to start): still failed, with what failed,
            # until it runs; status said the operator's error all along.
            await trio.sleep(1.5)
            assert (k.keeper.state, k.keeper.pid) == ("failed", None)
            assert k.keeper.error == "exited with status 1; last: bird: out of memory"
            report = await k.keeper.report(False)
            assert report is not None and report.retry_in is None
            await trio.sleep(1.0)
        assert gaps(k.speaker.exits[:1] + k.speaker.starts[1:]) == [1.0]
        assert k.keeper.state == "running" and k.routes() == BOTH  # restarted with the routes
        exited = [e for e in logs if e["event"] == "bgp_speaker_exited"]
        assert [
            (e["returncode"], e["error"], e["last_words"], e["restart_in"]) for e in exited
        ] == [(1, "exited with status 1", "bird: out of memory", 1.0)]


def test_an_exit_is_said_as_a_status_or_a_signal() -> None:
    from director.bgp import exit_reason

    assert exit_reason(1) == "exited with status 1"
    assert exit_reason(0) == "exited with status 0"
    assert exit_reason(-9) == "killed by signal 9 (SIGKILL)"
    assert exit_reason(-15) == "killed by signal 15 (SIGTERM)"


async def test_the_failure_count_resets_after_a_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    k.speaker.start_errors = ["no"] * 3
    async with keeper_running(k.keeper):
        await trio.sleep(10)
        assert gaps(k.speaker.starts) == [1, 2, 4]
        assert k.keeper.state == "running"
        await trio.sleep(600)  # a long, healthy life
        k.speaker.start_errors = ["no"]
        k.speaker.exit()
        await trio.sleep(10)
        # exited, then 1 s (not 8) to a start that fails, then 2 s to one that runs
        assert gaps([k.speaker.exits[-2], *k.speaker.starts[-2:]]) == [1, 2]
        assert k.keeper.state == "running"


async def test_a_refused_configure_is_retried_whole_after_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    k.speaker.configure_errors = ["birdc configure: bird.conf:12:3 syntax error"] * 2
    async with keeper_running(k.keeper):
        await trio.sleep(1)
        with structlog.testing.capture_logs() as logs:
            k.set(UP)
            await trio.sleep(0.5)
            assert k.keeper.error == "birdc configure: bird.conf:12:3 syntax error"
            assert k.routes() == frozenset()  # BIRD keeps the config it had
            assert k.keeper.state == "running"
            await trio.sleep(3)
        assert gaps(k.speaker.configures) == [1.01, 1.01]  # each attempt takes birdc's 10 ms
        assert k.routes() == BOTH and k.keeper.error is None
        assert k.speaker.configs[1] == k.speaker.configs[2] == k.speaker.configs[3]
        assert [(e["error"], e["retry_in"]) for e in logs if e["event"] == "bgp_configure_failed"]
        assert {e["retry_in"] for e in logs if e["event"] == "bgp_configure_failed"} == {RETRY_BASE}
        assert len(k.speaker.starts) == 1  # never restarted for it


async def test_a_retried_configure_sends_the_latest_config(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    k.speaker.configure_errors = ["birdc configure: bird.conf:3:1 syntax error"]
    async with keeper_running(k.keeper):
        await trio.sleep(1)
        k.set(UP)
        await trio.sleep(0.5)
        assert k.routes() == frozenset()
        k.set(DOWN)  # while the retry waits: back to what BIRD runs
        await trio.sleep(2)
        k.set(UP)
        await trio.sleep(1)
        assert k.routes() == BOTH and k.keeper.error is None


async def test_after_a_configure_that_timed_out_the_next_config_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # birdc gave no answer in time, but BIRD took the config (it announces
    # the VIPs): whether it runs the old config or the new one is not known,
    # so the next config must be sent even when it is the one applied before.
    k = Keeping()
    k.speaker.configure_errors = ["birdc configure: no answer within 10 s"]
    k.speaker.applies_failed_configures = True
    async with keeper_running(k.keeper):
        await trio.sleep(1)
        k.set(UP)
        await trio.sleep(0.5)
        assert k.keeper.error == "birdc configure: no answer within 10 s"
        assert k.routes() == BOTH  # BIRD took it
        k.set(DOWN)  # withdrawn while the retry waits
        await trio.sleep(2)
        assert k.routes() == frozenset()


async def test_configure_without_bgp_stops_the_speaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    k.set(UP)
    async with keeper_running(k.keeper):
        await trio.sleep(1)
        with structlog.testing.capture_logs() as logs:
            k.keeper.configure(None, ())
            await trio.testing.wait_all_tasks_blocked()
            assert not k.speaker.alive
            assert (k.keeper.state, k.keeper.pid) == ("stopped", None)
            assert k.keeper.update(lambda: {}, {}, False, "reload") == [
                ("withdraw", VIP),
                ("withdraw", VIP6),
            ]
            await trio.sleep(100)
        assert len(k.speaker.starts) == 1
        assert await k.keeper.report(False) is None
        assert [e["why"] for e in logs if e["event"] == "bgp_speaker_stopped"] == [
            "bgp removed from the config"
        ]
        assert {e["why"] for e in logs if e["event"] == "bgp_withdrawn"} == {"no longer configured"}
        # [bgp] back: a new speaker, nothing announced until the checks say so
        k.keeper.configure(k.config.bgp, k.config.virtual_servers)
        await trio.sleep(1)
        assert len(k.speaker.starts) == 2 and k.routes() == frozenset()


async def test_a_new_runtime_dir_restarts_the_speaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    k.set(UP)
    assert k.config.bgp is not None
    moved = replace(k.config.bgp, runtime_dir="/run/elsewhere")
    async with keeper_running(k.keeper):
        await trio.sleep(1)
        with structlog.testing.capture_logs() as logs:
            k.keeper.configure(moved, k.config.virtual_servers)
            await trio.sleep(1)
        assert [s.runtime_dir for s in k.speaker.settings] == [
            "/run/director/bgp",
            moved.runtime_dir,
        ]
        assert k.speaker.exits[0] <= k.speaker.starts[1]  # the old one gone first
        assert k.speaker.alive and k.routes() == BOTH and k.speaker.configures == []
        assert [e["why"] for e in logs if e["event"] == "bgp_speaker_stopped"] == ["reload"]


async def test_other_settings_are_reconfigured_not_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    assert k.config.bgp is not None
    changed = replace(k.config.bgp, med=50, hold_time=9)
    async with keeper_running(k.keeper):
        await trio.sleep(1)
        k.keeper.configure(changed, k.config.virtual_servers)
        await trio.sleep(1)
        assert len(k.speaker.starts) == 1 and len(k.speaker.configures) == 1
        assert k.speaker.current == render(changed, [])
        k.keeper.configure(changed, k.config.virtual_servers)  # the same again: nothing
        await trio.sleep(1)
        assert len(k.speaker.configures) == 1


async def test_stop_stops_the_speaker_and_it_never_starts_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    k.set(UP)
    k.speaker.start_delay = 0.2
    async with keeper_running(k.keeper):
        await trio.sleep(1)
        assert k.speaker.alive
        with structlog.testing.capture_logs() as logs:
            await k.keeper.stop("daemon stopping")
            assert not k.speaker.alive  # returned once it had exited
            await trio.sleep(100)
            assert k.config.bgp is not None
            k.keeper.configure(replace(k.config.bgp, runtime_dir="/run/x"), ())
            await trio.sleep(100)
        assert len(k.speaker.starts) == 1
        assert k.keeper.state == "stopped"
        assert [e["why"] for e in logs if e["event"] == "bgp_speaker_stopped"] == [
            "daemon stopping"
        ]


async def test_stop_during_a_start_waits_for_the_speaker_to_exit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    k.speaker.start_delay = 2.0
    async with keeper_running(k.keeper):
        await trio.sleep(1)
        assert k.keeper.state == "starting" and k.speaker.alive
        await k.keeper.stop("daemon stopping")
        assert not k.speaker.alive
        await trio.sleep(100)
        assert len(k.speaker.starts) == 1


async def test_stop_without_a_speaker_returns_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    k = Keeping()
    k.speaker.start_errors = ["no"] * 100
    async with keeper_running(k.keeper):
        await trio.sleep(0.5)
        began = trio.current_time()
        await k.keeper.stop("daemon stopping")
        assert trio.current_time() == began
        await trio.sleep(100)
        assert len(k.speaker.starts) == 1
    idle = BgpKeeper(None)
    await idle.stop("daemon stopping")


async def test_report_asks_the_running_speaker(autojump_clock: trio.testing.MockClock) -> None:
    k = Keeping()
    k.set(UP)
    async with keeper_running(k.keeper):
        await trio.sleep(1)
        report = await k.keeper.report(False)
        assert report is not None
        assert (report.speaker, report.pid, report.error) == ("running", 1001, None)
        assert report.peers == (
            BgpPeerStatus("peer_10_9_0_1", "10.9.0.1", 65000, "Established"),
            BgpPeerStatus(
                "peer_2001_db8__1", "2001:db8::1", 65000, "Active        Socket: Connection refused"
            ),
        )
        assert [(r.address, r.announced, r.reason) for r in report.routes] == [
            ("10.9.1.100/32", True, "quorum met"),
            ("2001:db8:1::100/128", True, "quorum met"),
        ]
        k.speaker.protocols_answer = SpeakerError("birdc show protocols: no answer within 10 s")
        report = await k.keeper.report(False)
        assert report is not None
        assert [p.state for p in report.peers] == ["unknown", "unknown"]
        assert report.error == "birdc show protocols: no answer within 10 s"
        assert report.speaker == "running"
        assert k.keeper.error is None  # the status's trouble only


# -- the engine --------------------------------------------------------------------------

ENGINE = (
    "[daemon]\nreconcile_interval = 5.0\n[bgp]\nlocal_as = 65001\n" + PEER4 + service(servers=1)
)
RS = ip_address("10.9.2.1")
ADMIN = Peer(uid=0, gid=0, pid=1, may_change=True)


def director_with(speaker: FakeSpeaker, network: Network, text: str = ENGINE) -> Director:
    return Director(
        config_of(text),
        KernelTable(MemoryBackend(), threaded=False),
        probe=network.probe,
        rng=random.Random(1),
        speaker=speaker,
    )


def announced(speaker: FakeSpeaker) -> frozenset[str]:
    assert speaker.current is not None
    return routes_in(speaker.current)


async def test_the_director_announces_while_the_server_is_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    speaker, network = FakeSpeaker(), Network()
    director = director_with(speaker, network)
    async with running(director):
        await trio.testing.wait_all_tasks_blocked()
        assert speaker.alive and announced(speaker) == frozenset()  # not known yet
        await trio.sleep(1.1)
        assert announced(speaker) == {"10.9.1.100/32"}
        network.down.add(RS)
        await trio.sleep(1.1)
        assert announced(speaker) == frozenset()
        network.down.clear()
        await trio.sleep(1.1)
        assert announced(speaker) == {"10.9.1.100/32"}
        assert len(speaker.starts) == 1


async def test_maintenance_withdraws_and_brings_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    speaker, network = FakeSpeaker(), Network()
    director = director_with(speaker, network)

    async def maintenance(on: bool) -> list[tuple[str, IPAddress]]:
        async def job() -> list[tuple[str, IPAddress]]:
            director.set_maintenance(on)
            return director.bgp_pass(f"maintenance {'on' if on else 'off'}")

        return await director.exclusive(job)

    async with running(director):
        await trio.sleep(1.1)
        assert announced(speaker) == {"10.9.1.100/32"}
        assert await maintenance(True) == [("withdraw", VIP)]
        await trio.sleep(0.1)
        assert announced(speaker) == frozenset()
        await trio.sleep(5)  # the checks go on: still withdrawn
        assert announced(speaker) == frozenset()
        assert await maintenance(False) == [("announce", VIP)]
        await trio.sleep(0.1)
        assert announced(speaker) == {"10.9.1.100/32"}


async def test_maintenance_and_status_through_the_control_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    speaker, network = FakeSpeaker(), Network()
    director = director_with(speaker, network)
    controller = Controller(director)
    async with running(director):
        await trio.sleep(1.1)
        response = await controller.handle(
            Request(command="maintenance", args={"mode": "on"}), ADMIN
        )
        assert response.stdout == "maintenance on: 0 VIPs removed, 1 BGP routes withdrawn\n"
        await trio.sleep(0.1)
        assert announced(speaker) == frozenset()
        status = await controller.handle(Request(command="status", args={}), ADMIN)
        assert isinstance(status.data, dict)
        assert json.loads(json.dumps(status.data["bgp"])) == {
            "speaker": {"state": "running", "pid": 1001, "error": None, "retry_in": None},
            "peers": [
                {
                    "name": "peer_10_9_0_1",
                    "address": "10.9.0.1",
                    "as": 65000,
                    "state": "Established",
                }
            ],
            "routes": [
                {
                    "address": "10.9.1.100/32",
                    "services": ["tcp:10.9.1.100:80"],
                    "announced": False,
                    "reason": "maintenance",
                }
            ],
        }
        assert status.stdout.endswith(
            "BGP ([bgp]): BIRD running (pid 1001)\n"
            "  peer 10.9.0.1 AS 65000: Established\n"
            "  route 10.9.1.100/32 (tcp:10.9.1.100:80): withdrawn, maintenance\n"
        )
        response = await controller.handle(
            Request(command="maintenance", args={"mode": "off"}), ADMIN
        )
        assert response.stdout == "maintenance off: 0 VIPs added, 1 BGP routes announced\n"
        await trio.sleep(0.1)
        assert announced(speaker) == {"10.9.1.100/32"}


async def test_a_disabled_server_withdraws_and_an_enabled_one_announces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    speaker, network = FakeSpeaker(), Network()
    director = director_with(speaker, network)
    controller = Controller(director)
    server = {"service": "tcp:10.9.1.100:80", "server": "10.9.2.1:80"}
    async with running(director):
        await trio.sleep(1.1)
        assert announced(speaker) == {"10.9.1.100/32"}
        for command, expected in [("disable", frozenset()), ("enable", {"10.9.1.100/32"})]:
            response = await controller.handle(Request(command=command, args=server), ADMIN)
            assert response.status == 0, response
            await trio.sleep(0.1)
            assert announced(speaker) == expected, command


async def test_maintenance_kept_from_the_last_run_announces_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    speaker, network = FakeSpeaker(), Network()
    director = Director(
        config_of(ENGINE),
        KernelTable(MemoryBackend(), threaded=False),
        probe=network.probe,
        rng=random.Random(1),
        speaker=speaker,
        maintenance=True,
    )
    async with running(director):
        await trio.sleep(10)
        assert announced(speaker) == frozenset()
        assert director.checker.states()  # checked, and up
        assert all(s.status is Health.UP for s in director.checker.states().values())


async def test_a_reload_without_bgp_true_withdraws_and_without_bgp_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    speaker, network = FakeSpeaker(), Network()
    director = director_with(speaker, network)
    async with running(director):
        await trio.sleep(1.1)
        assert announced(speaker) == {"10.9.1.100/32"}
        without = config_of(ENGINE.replace("bgp = true", "bgp = false"))
        summary = await director.exclusive(lambda: director.reload(without))
        assert summary.others == ({"what": "bgp", "op": "withdraw", "address": "10.9.1.100/32"},)
        await trio.sleep(0.1)
        assert announced(speaker) == frozenset() and speaker.alive
        again = config_of(ENGINE)
        await director.exclusive(lambda: director.reload(again))
        await trio.sleep(1.1)
        assert announced(speaker) == {"10.9.1.100/32"}
        no_bgp = config_of("[daemon]\nreconcile_interval = 5.0\n" + service(servers=1, bgp=False))
        summary = await director.exclusive(lambda: director.reload(no_bgp))
        assert summary.others == ({"what": "bgp", "op": "withdraw", "address": "10.9.1.100/32"},)
        await trio.testing.wait_all_tasks_blocked()
        assert not speaker.alive
        await trio.sleep(60)
        assert len(speaker.starts) == 1


async def test_a_reload_that_adds_bgp_starts_the_speaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    speaker, network = FakeSpeaker(), Network()
    without = "[daemon]\nreconcile_interval = 5.0\n" + service(servers=1, bgp=False)
    director = director_with(speaker, network, without)
    async with running(director):
        await trio.sleep(5)
        assert speaker.starts == [] and director.bgp.state == "stopped"
        summary = await director.exclusive(lambda: director.reload(config_of(ENGINE)))
        # the server is up already: announced by the reload itself
        assert summary.others == ({"what": "bgp", "op": "announce", "address": "10.9.1.100/32"},)
        await trio.sleep(0.1)
        assert len(speaker.starts) == 1 and announced(speaker) == {"10.9.1.100/32"}


async def test_stop_stops_the_speaker(autojump_clock: trio.testing.MockClock) -> None:
    speaker, network = FakeSpeaker(), Network()
    director = director_with(speaker, network)
    async with running(director):
        await trio.sleep(1.1)
        assert speaker.alive and announced(speaker) == {"10.9.1.100/32"}
        await director.stop()
        assert not speaker.alive
        await trio.sleep(60)
        assert len(speaker.starts) == 1 and not speaker.alive


async def test_a_failing_speaker_does_not_stop_the_director(
    autojump_clock: trio.testing.MockClock,
) -> None:
    speaker, network = FakeSpeaker(), Network()
    speaker.start_errors = ["cannot run setpriv: No such file or directory"] * 1000
    director = director_with(speaker, network)
    async with running(director):
        await trio.sleep(120)
        assert director.bgp.state == "failed"
        assert director.bgp.announced == {VIP}  # decided, waiting for a BIRD to tell
        # the IPVS work went on
        assert director.counts()["real_servers"] == 1
    assert RETRY_CAP == 30.0
