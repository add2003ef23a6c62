"""The C library's string conversions, with their exact edge cases, as pure
functions: ipvsadm accepts and prints exactly what these accept and print."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address

_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def strtol_prefix(text: str) -> tuple[int, int]:
    """strtol(text, &end, 10) clamped as glibc does: (value, chars used); 0 used
    when there are no digits."""
    match = _STRTOL.match(text)
    if not match:
        return 0, 0
    return max(_LONG_MIN, min(_LONG_MAX, int(match.group(1)))), match.end()


def strtol_whole(text: str) -> int | None:
    """strtol that must consume all of `text`; None when it does not, or on
    ERANGE."""
    value, used = strtol_prefix(text)
    if used == 0 or used != len(text):
        return None
    match = _STRTOL.match(text)
    assert match is not None
    if int(match.group(1)) != value:
        return None
    return value


def string_to_number(text: str, low: int, high: int) -> int | None:
    """ipvsadm's string_to_number: a whole decimal number within [low, high]."""
    value = strtol_whole(text)
    if value is None or not low <= value <= high:
        return None
    return value


def atoi(text: str) -> int:
    """atoi: (int) strtol(text, NULL, 10), wrapping to 32 bits."""
    value = strtol_prefix(text)[0] & 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def _strtoul_c(text: str) -> tuple[int, int] | None:
    """strtoul(text, &end, 0) on a string that starts with a digit."""
    if text[:2].lower() == "0x":
        digits = re.match(r"[0-9a-fA-F]*", text[2:])
        assert digits is not None
        if not digits.group():
            return 0, 1
        return int(digits.group(), 16), 2 + digits.end()
    if text[0] == "0":
        digits = re.match(r"[0-7]*", text)
        assert digits is not None
        return int(digits.group(), 8), digits.end()
    digits = re.match(r"[0-9]*", text)
    assert digits is not None
    return int(digits.group()), digits.end()


def inet_aton(text: str) -> IPv4Address | None:
    """glibc inet_aton: 1 to 4 parts in C notation (0x.., 0..), the last part
    filling the remaining bytes; anything after a white-space is ignored."""
    parts: list[int] = []
    rest = text
    while True:
        if not rest or not rest[0].isascii() or not rest[0].isdigit():
            return None
        parsed = _strtoul_c(rest)
        if parsed is None:
            return None
        value, used = parsed
        if value > 0xFFFFFFFF:
            return None
        rest = rest[used:]
        if rest[:1] == ".":
            if len(parts) > 2 or value > 0xFF:
                return None
            parts.append(value)
            rest = rest[1:]
            continue
        break
    if rest and rest[0] not in " \t\n\v\f\r":
        return None
    limit = (0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)[len(parts)]
    if value > limit:
        return None
    number = value
    for index, part in enumerate(parts):
        number |= part << (24 - 8 * index)
    return IPv4Address(number)


_HEX4 = re.compile(r"[0-9a-fA-F]{1,4}\Z")
_DEC_OCTET = re.compile(r"(0|[1-9][0-9]{0,2})\Z")


def inet_pton4(text: str) -> IPv4Address | None:
    """inet_pton(AF_INET): exactly four decimal octets, no leading zeros."""
    octets = text.split(".")
    if len(octets) != 4 or not all(_DEC_OCTET.match(o) and int(o) <= 255 for o in octets):
        return None
    return IPv4Address(".".join(octets))


def inet_pton6(text: str) -> IPv6Address | None:
    """inet_pton(AF_INET6) as glibc: hex groups of up to 4 digits, one "::",
    an optional dotted IPv4 tail, no zone index."""
    if not text.isascii():
        return None
    head, sep, tail = text.partition("::")
    if "::" in tail:
        return None
    words: list[int] = []
    groups_after: list[int] = []
    for side, out in ((head, words), (tail, groups_after)):
        if not side:
            continue
        fields = side.split(":")
        for index, field in enumerate(fields):
            last = index == len(fields) - 1 and (side is tail or not sep)
            if last and "." in field:
                v4 = inet_pton4(field)
                if v4 is None:
                    return None
                packed = v4.packed
                out.extend((packed[0] << 8 | packed[1], packed[2] << 8 | packed[3]))
            elif _HEX4.match(field):
                out.append(int(field, 16))
            else:
                return None
    if sep:
        if len(words) + len(groups_after) > 7:
            return None
        words = words + [0] * (8 - len(words) - len(groups_after)) + groups_after
    elif len(words) != 8:
        return None
    return IPv6Address(b"".join(w.to_bytes(2, "big") for w in words))


def inet_ntop6(address: IPv6Address) -> str:
    """glibc inet_ntop(AF_INET6): the first longest run (>= 2) of zero words
    becomes "::"; ::ffff:a.b.c.d and ::a.b.c.d keep a dotted tail."""
    packed = address.packed
    words = [packed[i] << 8 | packed[i + 1] for i in range(0, 16, 2)]
    best_base, best_len, cur_base, cur_len = -1, 0, -1, 0
    for index, word in enumerate(words):
        if word == 0:
            if cur_base == -1:
                cur_base, cur_len = index, 1
            else:
                cur_len += 1
        elif cur_base != -1:
            if best_base == -1 or cur_len > best_len:
                best_base, best_len = cur_base, cur_len
            cur_base = -1
    if cur_base != -1 and (best_base == -1 or cur_len > best_len):
        best_base, best_len = cur_base, cur_len
    if best_base != -1 and best_len < 2:
        best_base = -1
    out = ""
    for index, word in enumerate(words):
        if best_base != -1 and best_base <= index < best_base + best_len:
            if index == best_base:
                out += ":"
            continue
        if index != 0:
            out += ":"
        if (
            index == 6
            and best_base == 0
            and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF))
        ):
            out += str(IPv4Address(packed[12:]))
            break
        out += f"{word:x}"
    if best_base != -1 and best_base + best_len == 8:
        out += ":"
    return out


def inet_ntop(address: IPv4Address | IPv6Address) -> str:
    return str(address) if address.version == 4 else inet_ntop6(address)
