"""The exposition follows Prometheus' naming practice, and docs/dashboard.json
and docs/alerts.yml use only metrics the daemon serves.

Names are checked with `promtool check metrics` and `promtool check rules`
where promtool is on PATH (Debian's `prometheus` package), and always with
prometheus_client's parser and the rules below."""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_engine import (
    TWO_SERVICES,
    FakeNetwork,
    FaultyKernel,
    faulty_director,
    refuses_destination,
)
from test_metrics import METRICS

from director.control.messages import Request, Response
from director.metrics.endpoint import Scraper

DOCS = Path(__file__).resolve().parents[2] / "docs"
# Series Prometheus makes itself for every target.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "bool", "offset"}
    | {"group_left", "group_right", "inf", "nan"}
)
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
UNITS = ("seconds", "bytes")


@pytest.fixture(scope="module")
def exposition() -> str:
    """A scrape of a daemon with every kind of series: a refused operation,
    a down server, a control request, passes, probes, [bgp] (no BIRD run)."""

    async def scrape() -> str:
        backend = FaultyKernel()
        backend.refuse = refuses_destination("10.0.2.1", errno.EINVAL)
        bgp = '[bgp]\nlocal_as = 65001\n[[bgp.peer]]\naddress = "10.9.0.1"\nas = 65000\n'
        director = faulty_director(backend, FakeNetwork("10.0.1.1"), TWO_SERVICES + METRICS + bgp)
        async with trio.open_nursery() as nursery:
            await nursery.start(director.run)
            await trio.sleep(7)
            director.events.answered(Request(command="status"), Response(0))
            text = (await Scraper(director, director.kernel).scrape()).decode()
            nursery.cancel_scope.cancel()
        return text

    return trio.run(scrape, clock=trio.testing.MockClock(autojump_threshold=0))


def served_names(text: str) -> set[str]:
    """Every metric name a scrape offers: each family's samples' names
    (a histogram's _bucket, _count and _sum; a counter's _total), from its
    TYPE line, so that a family with no sample now still counts."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                names |= {name + "_bucket", name + "_count", name + "_sum"}
            elif kind == "summary":
                names |= {name, name + "_count", name + "_sum"}
            else:
                names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or Grafana template query)
    selects: identifiers left once strings, label matchers, ranges, grouping
    clauses, Grafana variables and function names are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    # Numbers (1e9, 0.99) and durations (5m, 1h30m).
    text = re.sub(r"(?<![\w:])\d[\d.]*(?:e[+-]?\d+|(?:ms|[smhdwy])+)?\b", " ", text)
    text = re.sub(r"\b(label_values)\s*\(([^,)]*),[^)]*\)", r" \2 ", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        word = match.group()
        if following.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_queries() -> Iterator[str]:
    dashboard = json.loads((DOCS / "dashboard.json").read_text())

    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    yield from walk(dashboard)


def alert_rules() -> list[dict[str, object]]:
    document = yaml.safe_load((DOCS / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


# -- the exposition's names ------------------------------------------------------------


def test_every_family_follows_prometheus_naming(exposition: str) -> None:
    families = list(text_string_to_metric_families(exposition))
    ours = [f for f in families if not f.name.startswith(("process_", "python_"))]
    assert len(ours) >= 30
    for family in ours:
        name = family.name
        assert name.startswith("director_"), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        assert family.documentation, f"{name} has no HELP"
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), name
        else:
            assert not name.endswith("_total"), f"{name}: only counters end in _total"
        if family.type == "histogram" or "duration" in name or "timestamp" in name:
            assert name.endswith("_seconds"), f"{name}: a time is in seconds"
        assert not re.search(r"_(ms|milliseconds|us|kb|mb|percent)(_|$)", name), name
        if name.endswith("_info"):
            assert {s.value for s in family.samples} == {1.0}, name
        for sample in family.samples:
            for label in sample.labels:
                assert LABEL_NAME.fullmatch(label) and not label.startswith("__"), label


def test_units_are_base_units_at_the_end_of_a_name(exposition: str) -> None:
    for name in served_names(exposition):
        stem = re.sub(r"_(total|bucket|count|sum)$", "", name)
        for unit in UNITS:
            if f"_{unit}_" in stem and not stem.endswith(f"_{unit}"):
                # e.g. director_ipvs_incoming_bytes_total is fine; a unit mid-name is not
                pytest.fail(f"{name}: unit {unit} in the middle of the name")


def test_no_series_is_served_twice(exposition: str) -> None:
    seen = set()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in seen, key
            seen.add(key)


def test_real_server_series_carry_node_exporters_ipvs_labels(exposition: str) -> None:
    backend = {"local_address", "local_port", "remote_address", "remote_port", "proto"}
    backend.add("local_mark")
    for family in text_string_to_metric_families(exposition):
        if family.name.startswith(("director_real_server_", "director_ipvs_backend_")):
            for sample in family.samples:
                assert backend <= sample.labels.keys(), (family.name, sample.labels)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_finds_nothing_to_say(exposition: str) -> None:
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


# -- the dashboard -----------------------------------------------------------------------


def test_the_dashboard_uses_only_served_metrics(exposition: str) -> None:
    served = served_names(exposition)
    used: set[str] = set()
    queries = list(dashboard_queries())
    assert len(queries) >= 30
    for query in queries:
        names = metric_names(query)
        assert names, f"no metric in {query!r}"
        assert names <= served, f"{query!r} uses {sorted(names - served)}"
        used |= names
    # The dashboard shows health, the kernel's counters and the daemon.
    for name in (
        "director_real_server_health",
        "director_ipvs_backend_connections_active",
        "director_ipvs_incoming_bytes_total",
        "director_ipvs_operations_total",
        "director_pass_duration_seconds_bucket",
    ):
        assert name in used


def test_the_name_extraction_sees_what_an_expression_selects() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, local_address) (rate(x_seconds_bucket{a="b"}'
        "[$__rate_interval]))) / on (instance) group_left y_total offset 5m and time() - z"
    )
    assert metric_names(expr) == {"x_seconds_bucket", "y_total", "z"}
    assert metric_names('label_values(m{instance=~"$instance"}, local_address)') == {"m"}


def test_the_dashboard_is_grafana_json_with_its_datasource_as_a_variable() -> None:
    dashboard = json.loads((DOCS / "dashboard.json").read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# -- the alerts ------------------------------------------------------------------------------


def test_the_alerts_use_only_served_metrics(exposition: str) -> None:
    served = served_names(exposition) | PROMETHEUS_OWN
    for rule in alert_rules():
        expr = str(rule["expr"])
        names = metric_names(expr)
        assert names and names <= served, f"{rule['alert']}: {sorted(names - served)}"


def test_the_alerts_cover_quorum_flapping_refusals_and_passes() -> None:
    rules = {str(rule["alert"]): rule for rule in alert_rules()}
    for name in (
        "DirectorServiceBelowQuorum",
        "DirectorRealServerFlapping",
        "DirectorKernelRefusesOperations",
        "DirectorNotPassing",
    ):
        assert name in rules
        assert rules[name]["annotations"], name
        assert rules[name]["labels"], name
    assert "director_service_quorum" in str(rules["DirectorServiceBelowQuorum"]["expr"])
    assert "transitions_total" in str(rules["DirectorRealServerFlapping"]["expr"])
    assert "refused" in str(rules["DirectorKernelRefusesOperations"]["expr"])
    assert "last_pass_timestamp" in str(rules["DirectorNotPassing"]["expr"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_alerts() -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", str(DOCS / "alerts.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
