"""Catalog attributes inline on list items: `fields=title,categories,...` on
`GET /v1/recommendations`, `GET /v1/items/{item_id}/similar` and `GET /v1/popular`.

The attributes are attached to an answer after it is made (and after the result cache):
one cached list serves every `fields` value, and an answer without `fields` costs
nothing here. They come from the feature store's item features (`GetItemFeatures`, the
catalog fields the feature store keeps online), read for the ids the gateway does not
hold in one batched, columnar call per list, and are kept in memory
(`ItemAttributeCache`) for `ATTRIBUTE_CACHE_SECONDS`.

Invalidation follows the ranking service's item-feature cache: the gateway's own catalog
writes drop the items at once in the process that wrote them; every upsert, through any
replica, is announced by the feature store on `keys.ITEMS_CHANGED` and drops the items
in every process (`recfleet_store/catalog_changes.py`); the TTL bounds staleness when an
announcement is missed. Attributes do not depend on model versions, so a promotion
leaves them be.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from recfleet.features.v1 import features_pb2
from recfleet_runtime.logging import get_logger
from recfleet_store.catalog_changes import follow_catalog_changes

from ..downstream.clients import DOWNSTREAM_ERRORS
from ..downstream.fleet import Fleet
from ..settings import GatewaySettings
from .schemas import ItemIn

log = get_logger("recfleet.gateway.attributes")

# The names `fields` accepts, in the order an item lists them: the catalog item's attributes.
CATALOG_FIELDS: tuple[str, ...] = tuple(ItemIn.model_fields)
# Named in `degraded` when the feature store could not answer for the items not held.
ATTRIBUTES_UNAVAILABLE = "item-attributes-unavailable"
# How long attributes are kept: the bound on staleness when a catalog change announcement
# is missed (Redis away). Announced changes apply at once.
ATTRIBUTE_CACHE_SECONDS = 30.0
ATTRIBUTE_CACHE_MAX_ITEMS = 100_000

# One item's catalog attributes, every name of CATALOG_FIELDS, as the API writes them.
Attributes = dict[str, Any]


def _timestamp(seconds: float) -> datetime | None:
    """The feature store's epoch seconds (0: unknown) as the API's timestamp."""
    if not seconds:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


# How the feature store carries each attribute (libs/recfleet_store/features/feature_views.yaml:
# a text, a list of strings or a number) and how the API writes it.
TEXT, STRINGS, NUMBER = "text", "strings", "number"
_CARRIED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "title": (TEXT, str),
    "categories": (STRINGS, list),
    "creator": (TEXT, str),
    "published_at": (NUMBER, _timestamp),
    "tags": (STRINGS, list),
    "age_rating": (NUMBER, int),
    "regions": (STRINGS, list),
    "available": (NUMBER, bool),
}
# The registry's defaults, which an item without a catalog entry gets.
_REGISTRY_DEFAULTS: dict[str, Any] = {TEXT: "", STRINGS: (), NUMBER: 0.0}
_REGISTRY_DEFAULTS_BY_NAME = {"available": 1.0}


def _default(name: str) -> Any:
    kind, convert = _CARRIED[name]
    return convert(_REGISTRY_DEFAULTS_BY_NAME.get(name, _REGISTRY_DEFAULTS[kind]))


def default_attributes() -> Attributes:
    """What an item without a catalog entry gets: `ItemIn`'s defaults."""
    return {name: _default(name) for name in CATALOG_FIELDS}


def _column(column: features_pb2.FeatureColumn | None, kind: str, count: int) -> Sequence[Any] | None:
    """A column's raw values, or None when it is missing or not one value per item."""
    if column is None:
        return None
    if kind == TEXT:
        values: Sequence[Any] = column.texts
    elif kind == STRINGS:
        values = [entry.values for entry in column.lists]
    else:
        values = column.numbers
    return values if len(values) == count else None


def _value(value: features_pb2.FeatureValue, kind: str) -> Any:
    if kind == TEXT:
        return value.text
    if kind == STRINGS:
        return value.strings.values
    return value.number


def decode(item_ids: Sequence[str], reply: features_pb2.GetItemFeaturesResponse) -> dict[str, Attributes]:
    """Each item's attributes from a `GetItemFeatures` answer: columns, or one row per item
    from a server that answers that way. A value the answer lacks is the default."""
    count = len(item_ids)
    decoded = [default_attributes() for _ in item_ids]
    if reply.columns:
        by_name = {column.name: column for column in reply.columns}
        for name in CATALOG_FIELDS:
            kind, convert = _CARRIED[name]
            values = _column(by_name.get(name), kind, count)
            if values is not None:
                for attributes, value in zip(decoded, values, strict=True):
                    attributes[name] = convert(value)
    else:
        position = {item_id: index for index, item_id in enumerate(item_ids)}
        for row in reply.rows:
            index = position.get(row.entity_id)
            if index is None:
                continue
            for name, value in row.values.items():
                if name in _CARRIED:
                    kind, convert = _CARRIED[name]
                    decoded[index][name] = convert(_value(value, kind))
    return dict(zip(item_ids, decoded, strict=True))


class ItemAttributeCache:
    """item id -> attributes, bounded (the oldest entries go first when full). Each entry
    lives `ttl_seconds` plus up to 10% jitter, so items read together do not all expire
    in the same request. `ttl_seconds` 0 turns the cache off. Pure: the clock is
    injectable."""

    def __init__(
        self,
        ttl_seconds: float = ATTRIBUTE_CACHE_SECONDS,
        max_items: int = ATTRIBUTE_CACHE_MAX_ITEMS,
        clock: Callable[[], float] = time.monotonic,
    ):
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds must be >= 0")
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.ttl_seconds = ttl_seconds
        self.max_items = max_items
        self.clock = clock
        # Insertion order is age order: a refreshed entry is re-inserted at the end.
        self._entries: dict[str, tuple[float, Attributes]] = {}
        self._jitter = random.Random(0)
        # Counts forgets and clears: a read that started before one must not store what
        # it read (the catalog may have changed after the feature store answered).
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, item_ids: Iterable[str]) -> tuple[dict[str, Attributes], list[str]]:
        """(fresh entries by id, ids to read: missing or expired)."""
        now = self.clock()
        found: dict[str, Attributes] = {}
        missing: list[str] = []
        for item_id in item_ids:
            entry = self._entries.get(item_id)
            if entry is not None and entry[0] > now:
                found[item_id] = entry[1]
            else:
                missing.append(item_id)
        return found, missing

    def stale(self, item_ids: Iterable[str]) -> dict[str, Attributes]:
        """Entries still held, expired or not: better than nothing when the feature store is down."""
        entries = self._entries
        return {item_id: entries[item_id][1] for item_id in item_ids if item_id in entries}

    def store(self, read: Mapping[str, Attributes], generation: int) -> None:
        """Keep what a read that started at `generation` answered, unless the catalog
        changed since."""
        if not self.ttl_seconds or not read or generation != self.generation:
            return
        entries = self._entries
        overflow = len(entries) + len(read) - self.max_items
        if overflow > 0:
            for item_id in list(entries)[:overflow]:
                del entries[item_id]
        now = self.clock()
        for item_id, attributes in read.items():
            entries.pop(item_id, None)
            entries[item_id] = (now + self.ttl_seconds * (1.0 + 0.1 * self._jitter.random()), attributes)

    def forget(self, item_ids: Iterable[str]) -> None:
        """Drop these items: their catalog fields changed."""
        self.generation += 1
        for item_id in item_ids:
            self._entries.pop(item_id, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


class ItemAttributes:
    """Attaches catalog attributes to the items of an answer, from the cache or one
    feature-store read per answer, and follows catalog changes while started."""

    def __init__(self, settings: GatewaySettings, fleet: Fleet, cache: ItemAttributeCache | None = None):
        self.settings = settings
        self.fleet = fleet
        self.cache = cache if cache is not None else ItemAttributeCache()
        self._follower: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        self._stopped.clear()
        self._follower = asyncio.create_task(follow_catalog_changes(self.settings.redis_url, self.cache, self._stopped))

    async def stop(self) -> None:
        if self._follower is not None:
            self._stopped.set()
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            self._follower = None

    def forget(self, item_ids: Iterable[str]) -> None:
        """This process changed these items in the catalog."""
        self.cache.forget(item_ids)

    async def attach(self, answer: Mapping[str, Any], fields: Sequence[str], user_id: str | None = None) -> dict:
        """A copy of `answer` whose items carry `fields`, and whose `degraded` (added when
        the answer has none) names `ATTRIBUTES_UNAVAILABLE` when some could not be read:
        those items come without attributes."""
        items = answer["items"]
        held, unavailable = await self.attributes_of(list(dict.fromkeys(item["item_id"] for item in items)), user_id)
        attached = []
        for item in items:
            attributes = held.get(item["item_id"])
            attached.append({**item, **{name: attributes[name] for name in fields}} if attributes else dict(item))
        degraded = list(answer.get("degraded", ()))
        if unavailable and ATTRIBUTES_UNAVAILABLE not in degraded:
            degraded.append(ATTRIBUTES_UNAVAILABLE)
        return {**answer, "items": attached, "degraded": degraded}

    async def attributes_of(self, item_ids: list[str], user_id: str | None) -> tuple[dict[str, Attributes], bool]:
        """(attributes by id, whether the feature store failed for the ids not held). On a
        failure, expired entries still serve; ids with none are left out."""
        found, missing = self.cache.lookup(item_ids)
        if not missing:
            return found, False
        generation = self.cache.generation
        client = self.fleet.feature_store.pick(self.fleet.router, user_id)
        request = features_pb2.GetItemFeaturesRequest(item_ids=missing, feature_names=CATALOG_FIELDS, columnar=True)
        try:
            # The same budget as the popular rung's item-feature read.
            reply = await client.get_item_features(request, timeout=self.settings.candidate_gen_timeout)
        except DOWNSTREAM_ERRORS as error:
            log.warning("item attributes not read; answering without them", error=str(error), items=len(missing))
            found.update(self.cache.stale(missing))
            return found, True
        read = decode(missing, reply)
        self.cache.store(read, generation)
        found.update(read)
        return found, False
