"""statefile.encode keeps the records of the last encode (each with the
object it was made of) and makes again only those of objects it has not
seen: the text must be, byte for byte, what an encode with nothing kept
writes, whatever came before (objects reused, replaced by equal ones or by
other values, keys gone and back, owned sets changed)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st

from director import statefile
from director.config import RealServerId
from director.ipvs.model import (
    Destination,
    Forward,
    Protocol,
    Service,
    ServiceKey,
)
from director.runtime import RuntimeLayer

KEYS = [ServiceKey.inet(Protocol.TCP, f"10.0.0.{i}", 80) for i in range(1, 4)]
RIDS = [RealServerId(k, ip_address(f"10.0.1.{i}"), 80) for k in KEYS for i in range(1, 4)]


@contextmanager
def nothing_kept() -> Iterator[None]:
    kept = statefile._OWNED, statefile._SERVICES, statefile._REAL_SERVERS
    fresh = [copy.copy(each) for each in kept]
    for each in fresh:
        each._memo = type(each._memo)()  # type: ignore[attr-defined]
    fresh[0]._memo = (frozenset(), [])  # type: ignore[attr-defined]
    statefile._OWNED, statefile._SERVICES, statefile._REAL_SERVERS = fresh  # type: ignore[assignment]
    try:
        yield
    finally:
        statefile._OWNED, statefile._SERVICES, statefile._REAL_SERVERS = kept


# A pool of objects: a layer takes some of them (the same objects again) or
# new ones, equal or not.
_POOL = {
    rid: [Destination(rid.address, rid.port, Forward.MASQ, weight) for weight in (0, 1, 5)]
    for rid in RIDS
}
_servers = st.dictionaries(st.sampled_from(RIDS), st.integers(0, 5), max_size=6).flatmap(
    lambda weights: st.fixed_dictionaries(
        {
            rid: st.one_of(
                st.sampled_from(_POOL[rid]),
                st.just(Destination(rid.address, rid.port, Forward.MASQ, weight)),
            )
            for rid, weight in weights.items()
        }
    )
)
_service = st.builds(
    lambda key, scheduler: Service(key, scheduler),
    st.sampled_from(KEYS),
    st.sampled_from(["rr", "wlc", "sh"]),
)
_layers = st.builds(
    lambda services, servers: RuntimeLayer(
        services={s.key: s for s in services},
        real_servers=servers,
    ),
    st.lists(_service, max_size=3),
    _servers,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_layers, st.frozensets(st.sampled_from(KEYS))), min_size=1, max_size=6))
def test_encode_is_what_an_encode_with_nothing_kept_writes(
    saves: list[tuple[RuntimeLayer, frozenset[ServiceKey]]],
) -> None:
    for layer, owned in saves:
        text = statefile.encode(layer, owned)
        with nothing_kept():
            assert text == statefile.encode(layer, owned)
        assert statefile.decode(text).layer == layer


def test_a_changed_real_server_is_written_again() -> None:
    rid = RIDS[0]
    first = RuntimeLayer(real_servers={rid: Destination(rid.address, 80, Forward.MASQ, 1)})
    second = RuntimeLayer(real_servers={rid: Destination(rid.address, 80, Forward.MASQ, 7)})
    assert '"weight": 1' in statefile.encode(first)
    assert '"weight": 7' in statefile.encode(second)
    assert '"weight": 1' in statefile.encode(first)
