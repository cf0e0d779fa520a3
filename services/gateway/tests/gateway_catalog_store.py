"""A scripted feature store that keeps the catalog written through the gateway and
answers `GetItemFeatures` from it, as the real one does: columns (or rows) of the
registry's item features, the registry's defaults for items it does not know, and an
announcement of every upsert on `keys.ITEMS_CHANGED` in Redis. (A module of its own:
test modules import it by this unique name.)"""

from __future__ import annotations

import asyncio

import grpc
import orjson
import redis.asyncio as aioredis
from gateway_scripted_fleet import ScriptedFeatureStore, ScriptedFleet, ScriptedServer
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet_store import keys

TEXTS = ("title", "creator")
LISTS = ("categories", "tags", "regions")
NUMBERS = {"published_at": 0.0, "age_rating": 0.0, "available": 1.0}


def _value(item: features_pb2.Item | None, name: str):
    """The feature store's online value of a catalog field (docs/CONTRACTS.md), its default
    for an unknown item."""
    if name in TEXTS:
        return getattr(item, name) if item else ""
    if name in LISTS:
        return list(getattr(item, name)) if item else []
    if item is None:
        return NUMBERS[name]
    if name == "published_at":
        return float(item.published_at.seconds) if item.HasField("published_at") else 0.0
    if name == "available":
        return 1.0 if item.available else 0.0
    return float(item.age_rating)


class CatalogFeatureStore(ScriptedFeatureStore):
    def __init__(self, redis_url: str):
        super().__init__()
        self.redis_url = redis_url
        # The item ids of each GetItemFeatures call.
        self.item_reads: list[list[str]] = []
        # When set, GetItemFeatures fails with this code (other calls still answer).
        self.failing_item_reads: grpc.StatusCode | None = None
        # Answer rows even when columns are asked, like a server from before columnar answers.
        self.answer_rows = False
        # Users whose GetUserFeatures waits until `release` is set.
        self.held_users: set[str] = set()
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def GetUserFeatures(self, request, context):
        if request.user_id in self.held_users:
            self.holding.set()
            await self.release.wait()
        return await super().GetUserFeatures(request, context)

    async def GetItemFeatures(self, request, context):
        await self.enter(context, "GetItemFeatures")
        if self.failing_item_reads is not None:
            await context.abort(self.failing_item_reads, "scripted failure of GetItemFeatures")
        ids = list(request.item_ids)
        self.item_reads.append(ids)
        names = list(request.feature_names) or [*TEXTS, *LISTS, *NUMBERS]
        items = [self.items.get(item_id) for item_id in ids]
        reply = features_pb2.GetItemFeaturesResponse()
        if not request.columnar or self.answer_rows:
            for item_id, item in zip(ids, items, strict=True):
                row = reply.rows.add(entity_id=item_id)
                for name in names:
                    value = _value(item, name)
                    if name in TEXTS:
                        row.values[name].text = value
                    elif name in LISTS:
                        row.values[name].strings.values.extend(value)
                    else:
                        row.values[name].number = value
            return reply
        for name in names:
            column = reply.columns.add(name=name)
            column.defaulted.extend(index for index, item in enumerate(items) if item is None)
            values = [_value(item, name) for item in items]
            if name in TEXTS:
                column.texts.extend(values)
            elif name in LISTS:
                column.lists.extend(features_pb2.StringList(values=value) for value in values)
            else:
                column.numbers.extend(values)
        return reply

    async def UpsertItems(self, request, context):
        reply = await super().UpsertItems(request, context)
        client = aioredis.from_url(self.redis_url)
        try:
            await client.publish(keys.ITEMS_CHANGED, orjson.dumps([item.item_id for item in request.items]))
        finally:
            await client.aclose()
        return reply


def catalog_fleet(redis_url: str) -> ScriptedFleet:
    """The scripted fleet with a `CatalogFeatureStore`."""
    fleet = ScriptedFleet()
    fleet.features = ScriptedServer(
        CatalogFeatureStore(redis_url), features_pb2_grpc.add_FeatureStoreServicer_to_server
    )
    return fleet
