"""Stats nests (issue 8): the kernel's unpadded stats64 layout is read in
one unpack, any other layout by the attribute walk, with the same result."""

from __future__ import annotations

import struct

from director.ipvs import genl
from director.ipvs.model import Stats

VALUES = tuple(1000 + i for i in range(10))


def test_the_plain_layout_and_the_walk_read_the_same_counters() -> None:
    plain = b"".join(genl.attr(i + 1, struct.pack("=Q", v)) for i, v in enumerate(VALUES))
    # The same counters in reverse order, with a padding attribute (type 11,
    # IPVS_STATS_ATTR_PAD) first: the walk's layout.
    padded = genl.attr(11, b"") + b"".join(
        genl.attr(i + 1, struct.pack("=Q", v)) for i, v in reversed(list(enumerate(VALUES)))
    )
    assert genl.parse_stats(plain) == genl.parse_stats(padded) == Stats(*VALUES)


def test_a_plain_sized_nest_of_other_attributes_takes_the_walk() -> None:
    # 120 bytes like the plain layout, but of 32-bit counters and padding.
    odd = b"".join(genl.attr(i + 1, struct.pack("=I", 7)) for i in range(10))
    odd += genl.attr(11, b"\0" * 36)
    assert len(odd) == 120
    assert genl.parse_stats(odd) == Stats(*([7] * 10))
