"""Item features for the candidates: from the in-process cache, and what it lacks from the
feature store in one columnar `GetItemFeatures` call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import grpc
import numpy as np
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet_models.ranking.features import ITEM_FEATURE_NAMES, ItemColumns, objects
from recfleet_runtime.grpcclient import DeadlineSpentError, Downstream
from recfleet_runtime.resilience import CircuitOpenError

from ..item_cache import ItemFeatureCache

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


def _decode_columns(
    item_ids: list[str], columns: Sequence[features_pb2.FeatureColumn]
) -> tuple[ItemColumns, np.ndarray]:
    """(features, known) for the items of a columnar GetItemFeatures answer. An item the
    store does not know (every feature defaulted) is not known and keeps every default."""
    by_name = {column.name: column for column in columns}
    count = len(item_ids)
    defaulted = np.zeros(count, dtype=np.int64)
    for column in columns:
        np.add.at(defaulted, np.asarray(column.defaulted, dtype=np.int64), 1)

    def numbers(name: str, default: float) -> np.ndarray:
        column = by_name.get(name)
        if column is not None and len(column.numbers) == count:
            return np.asarray(column.numbers, dtype=np.float64)
        return np.full(count, default)

    def texts(name: str) -> np.ndarray:
        column = by_name.get(name)
        return objects(column.texts if column is not None and len(column.texts) == count else [""] * count, count)

    def lists(name: str, convert: Callable[[str], str] = str) -> np.ndarray:
        column = by_name.get(name)
        if column is None or len(column.lists) != count:
            return objects([()] * count, count)
        return objects((tuple(map(convert, entry.values)) for entry in column.lists), count)

    categories = lists("categories")
    items = ItemColumns(
        categories=categories,
        primary_categories=objects((c[0] if c else "" for c in categories), count),
        creators=texts("creator"),
        published_at=numbers("published_at", 0.0),
        age_rating=np.trunc(numbers("age_rating", 0.0)),
        regions=lists("regions", str.upper),
        available=numbers("available", 1.0) != 0,
        popularity=numbers("popularity", 0.0),
        popularity_7d=numbers("popularity_7d", 0.0),
    )
    known = defaulted < len(columns) if columns else np.ones(count, dtype=bool)
    unknown_at = np.flatnonzero(~known)
    if len(unknown_at):
        items.put(unknown_at, ItemColumns.unknown(len(unknown_at)))
    return items, known


async def load_item_features(
    client: FeatureStoreDownstream, item_ids: list[str], cache: ItemFeatureCache
) -> tuple[ItemColumns, list[str]]:
    """The items' features, position i for `item_ids[i]`, from the cache, reading only
    what it lacks in one columnar `GetItemFeatures` call; and the degradations taken
    (empty when fine).

    When the feature store cannot answer, expired cache entries still serve; items with
    none keep unknown features.
    """
    rows, missing_at = cache.rows(item_ids)
    items = cache.gather(rows)
    if not missing_at:
        return items, []
    missing = [item_ids[i] for i in missing_at]
    read, failed = await _read(client, missing, cache)
    items.put(np.asarray(missing_at, dtype=np.int64), read)
    return items, [FEATURE_STORE_UNAVAILABLE] if failed else []


async def load_item_features_of_each(
    client: FeatureStoreDownstream, id_lists: list[list[str]], cache: ItemFeatureCache, max_per_read: int
) -> list[tuple[ItemColumns, list[str]]]:
    """`load_item_features` for several calls' ids (a RankBatch), with one
    `GetItemFeatures` for what the cache lacks of as many whole lists as fit in
    `max_per_read` ids (the reads run concurrently). Each list is read by one call, which
    succeeds or fails for the whole list as its own call would; a list whose items were
    all cached takes no degradation, as it would not have called alone."""
    looked_up = [cache.rows(ids) for ids in id_lists]
    answers = [(cache.gather(rows), list[str]()) for rows, _ in looked_up]
    groups: list[dict[str, None]] = []  # ids of one read, in order, each once
    group_of: list[int] = []
    for ids, (_, missing_at) in zip(id_lists, looked_up, strict=True):
        wanted = dict.fromkeys(ids[i] for i in missing_at)
        if wanted and groups and len(groups[-1].keys() | wanted.keys()) <= max_per_read:
            groups[-1].update(wanted)
        elif wanted:
            groups.append(wanted)
        group_of.append(len(groups) - 1)
    reads = await asyncio.gather(*(_read(client, list(group), cache) for group in groups))
    positions = [{item_id: index for index, item_id in enumerate(group)} for group in groups]
    for ids, (_, missing_at), (items, degraded), group in zip(id_lists, looked_up, answers, group_of, strict=True):
        if missing_at:
            read, failed = reads[group]
            at = positions[group]
            items.put(
                np.asarray(missing_at, dtype=np.int64),
                read.take(np.fromiter((at[ids[i]] for i in missing_at), np.int64, len(missing_at))),
            )
            if failed:
                degraded.append(FEATURE_STORE_UNAVAILABLE)
    return answers


async def _read(
    client: FeatureStoreDownstream, item_ids: list[str], cache: ItemFeatureCache
) -> tuple[ItemColumns, bool]:
    """(features of these items, whether the feature store failed): its answer, kept in
    the cache, or when it cannot answer what the cache still holds, expired or not."""
    request = features_pb2.GetItemFeaturesRequest(
        item_ids=item_ids, feature_names=list(ITEM_FEATURE_NAMES), columnar=True
    )
    try:
        response = await client.call(client.stub.GetItemFeatures, request, method="GetItemFeatures")
    except (grpc.aio.AioRpcError, CircuitOpenError, DeadlineSpentError):
        return cache.gather(cache.stale_rows(item_ids)), True
    read, known = _decode_columns(item_ids, response.columns)
    cache.store_columns(item_ids, read, known)
    return read, False
