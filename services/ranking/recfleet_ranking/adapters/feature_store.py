"""Item features for the candidates: from the in-process cache, and what it lacks from the
feature store in one columnar `GetItemFeatures` call."""

from __future__ import annotations

import grpc
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet_models.ranking.features import ITEM_FEATURE_NAMES, Candidate
from recfleet_runtime.grpcclient import DeadlineSpentError, Downstream
from recfleet_runtime.resilience import CircuitOpenError

from ..item_cache import ItemFeatureCache, ItemFeatures, Known

FEATURE_STORE_UNAVAILABLE = "feature-store-unavailable"
SERVICE = "recfleet.features.v1.FeatureStore"
FeatureStoreDownstream = Downstream["features_pb2_grpc.FeatureStoreAsyncStub"]


def feature_store_client(target: str, timeout: float) -> FeatureStoreDownstream:
    """The feature-store dependency: deadline, breaker, retries for GetItemFeatures."""
    return Downstream(
        name="feature-store",
        target=target,
        stub_class=features_pb2_grpc.FeatureStoreStub,
        service=SERVICE,
        timeout=timeout,
        idempotent_methods=("GetItemFeatures",),
    )


def _decode_columns(item_ids: list[str], columns) -> dict[str, Known]:
    """ItemFeatures per item from a columnar GetItemFeatures answer (None: unknown item)."""
    by_name = {column.name: column for column in columns}
    count = len(item_ids)
    defaulted = [0] * count
    for column in columns:
        for position in column.defaulted:
            defaulted[position] += 1

    def numbers(name: str, default: float) -> list[float]:
        column = by_name.get(name)
        return list(column.numbers) if column is not None and len(column.numbers) == count else [default] * count

    def texts(name: str) -> list[str]:
        column = by_name.get(name)
        return list(column.texts) if column is not None and len(column.texts) == count else [""] * count

    def lists(name: str) -> list[tuple[str, ...]]:
        column = by_name.get(name)
        if column is None or len(column.lists) != count:
            return [()] * count
        return [tuple(entry.values) for entry in column.lists]

    categories, regions = lists("categories"), lists("regions")
    creators = texts("creator")
    published, age, available = numbers("published_at", 0.0), numbers("age_rating", 0.0), numbers("available", 1.0)
    popularity, popularity_7d = numbers("popularity", 0.0), numbers("popularity_7d", 0.0)
    unknown_at = len(columns)
    decoded: dict[str, Known] = {}
    for index, item_id in enumerate(item_ids):
        if unknown_at and defaulted[index] >= unknown_at:
            decoded[item_id] = None
            continue
        decoded[item_id] = ItemFeatures(
            categories=categories[index],
            creator=creators[index],
            published_at=published[index],
            age_rating=int(age[index]),
            regions=tuple(region.upper() for region in regions[index]),
            available=bool(available[index]),
            popularity=popularity[index],
            popularity_7d=popularity_7d[index],
        )
    return decoded


async def load_item_features(
    client: FeatureStoreDownstream, candidates: list[Candidate], cache: ItemFeatureCache
) -> list[str]:
    """Fill the candidates' item features from the cache, reading only what it lacks in
    one columnar `GetItemFeatures` call; returns the degradations taken (empty when fine).

    When the feature store cannot answer, expired cache entries still serve; items with
    none keep unknown features.
    """
    if not candidates:
        return []
    found, missing = cache.lookup(c.item_id for c in candidates)
    degraded: list[str] = []
    if missing:
        request = features_pb2.GetItemFeaturesRequest(
            item_ids=missing, feature_names=list(ITEM_FEATURE_NAMES), columnar=True
        )
        try:
            response = await client.call(client.stub.GetItemFeatures, request, method="GetItemFeatures")
        except (grpc.aio.AioRpcError, CircuitOpenError, DeadlineSpentError):
            degraded.append(FEATURE_STORE_UNAVAILABLE)
            found.update(cache.stale(missing))
        else:
            read = _decode_columns(missing, response.columns)
            cache.store(read)
            found.update(read)
    for candidate in candidates:
        features = found.get(candidate.item_id)
        if features is not None:
            features.apply(candidate)
    return degraded
