"""Item features for the candidates, from the feature store in one `GetItemFeatures` call."""

from __future__ import annotations

import grpc
import orjson
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet_runtime.grpcclient import DeadlineSpentError, Downstream
from recfleet_runtime.resilience import CircuitOpenError

from ..features import ITEM_FEATURE_NAMES, Candidate

FEATURE_STORE_UNAVAILABLE = "feature-store-unavailable"
SERVICE = "recfleet.features.v1.FeatureStore"


def feature_store_client(target: str, timeout: float) -> Downstream:
    """The feature-store dependency: deadline, breaker, retries for GetItemFeatures."""
    return Downstream(
        name="feature-store",
        target=target,
        stub_class=features_pb2_grpc.FeatureStoreStub,
        service=SERVICE,
        timeout=timeout,
        idempotent_methods=("GetItemFeatures",),
    )


def _value(value: features_pb2.FeatureValue | None):
    if value is None:
        return None
    kind = value.WhichOneof("kind")
    if kind == "number":
        return value.number
    if kind == "text":
        return value.text
    if kind == "strings":
        return tuple(value.strings.values)
    return None


def _strings(value: features_pb2.FeatureValue | None) -> tuple[str, ...]:
    """A list feature, whether it came as a string list or as JSON text."""
    if value is None:
        return ()
    kind = value.WhichOneof("kind")
    if kind == "strings":
        return tuple(value.strings.values)
    text = value.text if kind == "text" else ""
    if text.startswith("["):
        try:
            return tuple(str(v) for v in orjson.loads(text))
        except orjson.JSONDecodeError:
            return ()
    return (text,) if text else ()


def _number(value: features_pb2.FeatureValue | None, default: float = 0.0) -> float:
    if value is None:
        return default
    if value.WhichOneof("kind") == "number":
        return value.number
    try:
        return float(_value(value))
    except (TypeError, ValueError):
        return default


def apply_row(candidate: Candidate, row: features_pb2.FeatureRow) -> None:
    """Copy a feature row onto the candidate.

    A row with every feature defaulted describes an item the store does not know: its
    features stay unknown (age rating None), so the age filter treats it as restricted.
    """
    values = row.values
    if not values or (len(row.defaulted) >= len(ITEM_FEATURE_NAMES) and set(row.defaulted).issuperset(ITEM_FEATURE_NAMES)):
        return
    get = values.get
    candidate.categories = _strings(get("categories"))
    creator = get("creator")
    candidate.creator = str(_value(creator) or "") if creator is not None else ""
    candidate.published_at = _number(get("published_at"))
    candidate.age_rating = int(_number(get("age_rating")))
    regions = _strings(get("regions"))
    candidate.regions = tuple(r.upper() for r in regions) if regions else ()
    candidate.available = bool(_number(get("available"), 1.0))
    candidate.popularity = _number(get("popularity"))
    candidate.popularity_7d = _number(get("popularity_7d"))


async def load_item_features(client: Downstream, candidates: list[Candidate]) -> list[str]:
    """Fill the candidates' item features; returns the degradations taken (empty when fine)."""
    if not candidates:
        return []
    request = features_pb2.GetItemFeaturesRequest(
        item_ids=[c.item_id for c in candidates], feature_names=list(ITEM_FEATURE_NAMES)
    )
    try:
        response = await client.call("GetItemFeatures", request)
    except (grpc.aio.AioRpcError, CircuitOpenError, DeadlineSpentError):
        return [FEATURE_STORE_UNAVAILABLE]
    by_id = {row.entity_id: row for row in response.rows}
    for candidate in candidates:
        row = by_id.get(candidate.item_id)
        if row is not None:
            apply_row(candidate, row)
    return []
