"""Protobuf wire-format pieces, for answers assembled from already encoded parts.

A 500-item answer is mostly the same rows and values read after read: encoding them once
and concatenating the encoded pieces costs far less than building the messages (one
Python call per value) and serializing them again. Only length-delimited and packed
fields are needed; https://protobuf.dev/programming-guides/encoding/ describes both.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited field (a string, bytes, a message or a packed repeated field):
    tag, length, payload. An entry of a repeated message field is one such field."""
    return varint(number << 3 | LENGTH_DELIMITED) + varint(len(payload)) + payload


def string_entries(number: int, values: Iterable[str]) -> bytes:
    """A repeated string field: one entry per value, empty strings included."""
    return b"".join(length_delimited(number, value.encode()) for value in values)


def packed_doubles(number: int, values: Sequence[float]) -> bytes:
    """A packed repeated double field (little-endian IEEE 754); nothing when empty."""
    if not values:
        return b""
    return length_delimited(number, struct.pack(f"<{len(values)}d", *values))


def packed_varints(number: int, values: Sequence[int]) -> bytes:
    """A packed repeated int32/int64 field of non-negative values; nothing when empty."""
    if not values:
        return b""
    return length_delimited(number, b"".join(map(varint, values)))
