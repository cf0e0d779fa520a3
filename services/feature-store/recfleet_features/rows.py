"""Turning raw online-store hashes into feature rows, and user vectors into answers.

Pure: the adapters hand over what Redis returned, this module decides what a caller
sees. Values in the hashes are JSON; a field `_ts:<feature>` (epoch seconds), when
present, says when the feature was written and makes it stale after the view's freshness.
`WriteFeatures` writes one beside every value, and the realtime consumer beside the
windowed counts it computes (interactions_1h, _24h, _7d). Writers that do not track time
(materialization, the popularity job, the realtime consumer for its running counters)
omit it: their values never go stale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from recfleet_store.features.registry import FeatureView

TIMESTAMP_PREFIX = "_ts:"
# The user hash fields `constraints_from` reads.
CONSTRAINT_FIELDS = ("blocked_categories", "preferred_categories", "age", "country")


@dataclass(eq=False)
class Row:
    """One entity's features: values by name and the names that carry the default.

    Rows may be shared between reads (see FeatureService's item row cache): never mutate
    one after it was built. `expires_at` is when a value in it goes stale (epoch seconds).
    """

    entity_id: str
    values: dict[str, Any] = field(default_factory=dict)
    defaulted: list[str] = field(default_factory=list)
    expires_at: float = math.inf


def timestamp_field(name: str) -> str:
    return f"{TIMESTAMP_PREFIX}{name}"


def stored_fields(views: list[FeatureView]) -> list[str]:
    """The hash fields rows of `views` are built from: each feature, then the `_ts:` field
    of each feature that can go stale."""
    return [view.name for view in views] + [timestamp_field(view.name) for view in views if view.freshness_seconds]


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def decode_hash(raw: dict) -> dict[str, Any]:
    """A Redis hash (bytes -> JSON bytes) as name -> value; undecodable values are skipped."""
    decoded = {}
    for key, value in raw.items():
        try:
            decoded[_text(key)] = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
    return decoded


def decode_values(text: str | bytes, count: int) -> list | None:
    """The `count` values of stored JSON texts joined by commas (how the online store
    answers a hash's fields), or None when a value in it is not JSON."""
    try:
        values = orjson.loads(b"[" + text + b"]" if isinstance(text, bytes) else f"[{text}]")
    except orjson.JSONDecodeError:
        return None
    # A value that is not JSON can still splice into valid JSON ("1,2"): the count tells.
    return values if len(values) == count else None


def build_row(entity_id: str, stored: dict[str, Any], views: list[FeatureView], now: float) -> Row:
    """The row for `views` from a decoded hash: stored values where present, fresh and of the
    right type; the registry default, listed in `defaulted`, otherwise."""
    row = Row(entity_id)
    values = row.values
    for view in views:
        name = view.name
        value = stored.get(name)
        if value is not None and view.freshness_seconds:
            written = stored.get(timestamp_field(name))
            if isinstance(written, (int, float)):
                if now - written > view.freshness_seconds:
                    value = None
                else:
                    row.expires_at = min(row.expires_at, written + view.freshness_seconds)
        if value is not None:
            # Fast paths for values already of the view's type: this loop runs for every
            # feature of up to 1,000 items per read.
            kind = value.__class__
            if view.type == "number" and (kind is float or kind is int):
                # JSON whole numbers (counts, ages, epoch seconds) decode as int.
                values[name] = value if kind is float else float(value)
                continue
            if (view.type == "text" and kind is str) or (view.type == "strings" and kind is list):
                values[name] = value if view.type == "text" else [str(v) for v in value]
                continue
            try:
                values[name] = view.coerce(value)
                continue
            except ValueError:
                pass
        values[name] = view.default
        row.defaulted.append(name)
    return row


def build_row_from_list(entity_id: str, names: list[str], values: list, views: list[FeatureView], now: float) -> Row:
    """Like build_row, for decoded HMGET values: `values` are those of `names` in order."""
    return build_row(entity_id, dict(zip(names, values, strict=False)), views, now)


def encode_value(value: Any) -> bytes:
    return orjson.dumps(value)


def encode_vector(values) -> bytes:
    """A user vector as little-endian float32 bytes (the `rf:uv:{u}` layout)."""
    return np.asarray(values, dtype="<f4").tobytes()


def decode_vector(raw: bytes) -> list[float]:
    return np.frombuffer(raw, dtype="<f4").tolist()


def choose_vector(stored: dict, version: str) -> tuple[list[float] | None, str]:
    """The vector of `version` among the stored ones (version -> bytes) and the status:
    "" when found, "missing" when none is stored, "version-mismatch:<v1,v2>" when only
    other versions are (those are never returned: they live in another vector space)."""
    by_version = {_text(key): value for key, value in stored.items()}
    if not by_version:
        return None, "missing"
    if version and version in by_version:
        return decode_vector(by_version[version]), ""
    return None, "version-mismatch:" + ",".join(sorted(by_version))


@dataclass
class Constraints:
    blocked_categories: list[str]
    preferred_categories: list[str]
    age: int
    country: str
    seen_item_ids: list[str]


def constraints_from(stored: dict[str, Any], seen: Iterable[str]) -> Constraints:
    """The user's filtering constraints from the decoded user hash (its CONSTRAINT_FIELDS)
    and the ids in the seen set."""

    def strings(name: str) -> list[str]:
        value = stored.get(name)
        return [str(v) for v in value] if isinstance(value, list) else []

    age = stored.get("age")
    country = stored.get("country")
    return Constraints(
        blocked_categories=strings("blocked_categories"),
        preferred_categories=strings("preferred_categories"),
        age=int(age) if isinstance(age, (int, float)) and not isinstance(age, bool) else 0,
        country=country if isinstance(country, str) else "",
        seen_item_ids=sorted(seen),
    )
