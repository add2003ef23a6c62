"""Hypothesis on the state file loader: `decode` of any text or JSON value
returns a Saved or raises StateFileError, and `load` of any file never
raises (a file it cannot use is moved aside).

The structured cases start from what `encode` writes for a layer with every
kind of entry (and owned services), so a field added to the format is fuzzed
without a change here: any node of that document may be replaced by any JSON
value, removed, or joined by an unknown key.
"""

from __future__ import annotations

import json
import tempfile
from ipaddress import ip_address
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from director import statefile
from director.config import RealServerId
from director.desired import AdminState
from director.ipvs.model import (
    AF_INET6,
    Destination,
    Forward,
    Protocol,
    Service,
    ServiceFlags,
    ServiceKey,
    Timeouts,
    TunnelFlags,
    TunnelType,
)
from director.runtime import RuntimeLayer

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VIP = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
V6 = ServiceKey.inet(Protocol.SCTP, "2001:db8::1", 5060)
MARK = ServiceKey.mark(7, AF_INET6)
RS = RealServerId(VIP, ip_address("10.0.1.1"), 80)
RS6 = RealServerId(V6, ip_address("2001:db8::2"), 5060)
FULL_LAYER = RuntimeLayer(
    services={
        VIP: Service(VIP, "sh", ServiceFlags.PERSISTENT | ServiceFlags.SCHED2, 300, 0xFFFFFF00),
        MARK: Service(MARK, "none", ServiceFlags.PERSISTENT, 60, 64, "sip"),
    },
    deleted_services=frozenset({V6}),
    real_servers={
        RS: Destination(ip_address("10.0.1.1"), 80, Forward.MASQ, 3, 100, 50),
        RealServerId(MARK, ip_address("2001:db8::5"), 443): Destination(
            ip_address("2001:db8::5"),
            443,
            Forward.TUNNEL,
            1,
            0,
            0,
            TunnelType.GUE,
            6080,
            TunnelFlags.CSUM,
        ),
    },
    deleted_real_servers=frozenset({RS6}),
    admin={RS: AdminState.DRAIN, RS6: AdminState.DISABLED},
    timeouts=Timeouts(900, 120, 300),
)
OWNED = frozenset({VIP, V6, MARK})
FULL_TEXT = statefile.encode(FULL_LAYER, OWNED)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["tcp", "ipv6", "drain", "masq", "gue", "10.0.0.1", "::1", "x"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
EDGE_INTS = st.sampled_from([0, -1, 1, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**64])

Path_ = tuple[str | int, ...]


def _paths(node: object, path: Path_ = ()) -> list[Path_]:
    """Every node's path in a JSON tree, the root included."""
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*path, i))
    return found


def _parent(root: object, path: Path_) -> object:
    node = root
    for step in path[:-1]:
        node = node[step]  # type: ignore[index]
    return node


@st.composite
def mutated_documents(draw: st.DrawFn) -> object:
    """What encode writes for FULL_LAYER, with a few nodes replaced, removed
    or given an unknown sibling."""
    document: object = json.loads(FULL_TEXT)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "edge", "remove", "add"]))
        if not path:
            if action in ("replace", "edge"):
                document = draw(JSON)
            continue
        parent = _parent(document, path)
        last = path[-1]
        if action == "replace":
            parent[last] = draw(JSON)  # type: ignore[index]
        elif action == "edge":
            parent[last] = draw(EDGE_INTS | st.sampled_from(["", "TCP", "ipv4", None, [], {}]))  # type: ignore[index]
        elif action == "remove":
            del parent[last]  # type: ignore[attr-defined]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(JSON)
        elif isinstance(parent, list):
            parent.append(draw(JSON))
    return document


def decodes_or_state_file_error(text: str) -> statefile.Saved | None:
    try:
        saved = statefile.decode(text)
    except statefile.StateFileError as error:
        assert str(error)
        return None
    assert isinstance(saved, statefile.Saved)
    # What was loaded is saved again by the daemon: it must encode.
    assert isinstance(statefile.encode(saved.layer, saved.owned), str)
    return saved


def test_the_full_document_decodes_to_what_was_encoded() -> None:
    # Guards the fuzz: its seed is a valid file with every kind of entry.
    saved = statefile.decode(FULL_TEXT)
    assert saved.layer == FULL_LAYER
    assert saved.owned == OWNED


@FUZZ
@given(st.text())
def test_any_text_decodes_or_is_a_state_file_error(text: str) -> None:
    decodes_or_state_file_error(text)


@FUZZ
@given(JSON)
def test_any_json_value_decodes_or_is_a_state_file_error(value: object) -> None:
    decodes_or_state_file_error(json.dumps(value))


@FUZZ
@given(mutated_documents())
def test_any_change_to_a_valid_file_decodes_or_is_a_state_file_error(document: object) -> None:
    decodes_or_state_file_error(json.dumps(document))


@FUZZ
@given(st.binary(max_size=200) | mutated_documents().map(lambda d: json.dumps(d).encode()))
def test_load_never_raises_and_moves_a_bad_file_aside(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.json"
        path.write_bytes(content)
        loaded = statefile.load(path)
        if loaded.problem is None:
            assert path.read_bytes() == content
        else:
            assert loaded.moved_to == path.with_name("state.json.corrupt")
            assert loaded.moved_to.read_bytes() == content
            assert not path.exists()
            assert loaded.layer == RuntimeLayer()


def test_load_of_a_directory_never_raises(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    loaded = statefile.load(tmp_path / "state.json")
    assert loaded.problem is not None


def test_nesting_deeper_than_json_takes_is_a_state_file_error() -> None:
    assert decodes_or_state_file_error("[" * 100_000 + "]" * 100_000) is None
