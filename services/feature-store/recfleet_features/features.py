"""What the feature store does, independent of gRPC: reads with defaults, writes to both
stores, popular lists, catalog and profile upserts, export and erasure."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from recfleet_store.features.registry import ENTITIES, FeatureView, Registry

from . import metrics
from .rows import (
    CONSTRAINT_FIELDS,
    Constraints,
    Row,
    build_row,
    build_row_from_list,
    choose_vector,
    constraints_from,
    decode_values,
    stored_fields,
)
from .stores import OfflineFeatureStore, OnlineFeatureStore, UserReadResult
from .validation import CatalogItem, Profile, ValidationError, check_id, check_ids, validate_items, validate_profile

POPULAR_WINDOWS = ("all", "7d", "trending")
MAX_POPULAR = 1000
# User hash fields a user read needs besides the rows' own.
USER_READ_FIELDS = (*CONSTRAINT_FIELDS, "interaction_count")
# `vector_status` when no model version serves at all (before the first training run).
NO_SERVING_MODEL = "no-serving-model"
# Distinct lists of feature names whose user read plan is kept (callers use a handful).
MAX_USER_PLANS = 256
# Users per GetUserFeaturesBatch call: their read is one script run, during which Redis
# serves nobody else.
MAX_USERS_PER_BATCH = 256


def check_batch_size(count: int) -> None:
    """ValidationError when a batch holds more users than one read may take."""
    if count > MAX_USERS_PER_BATCH:
        raise ValidationError(f"requests: at most {MAX_USERS_PER_BATCH} per call (got {count})")


@dataclass
class UserFeatures:
    row: Row
    vector: list[float] | None
    vector_version: str
    vector_status: str
    constraints: Constraints
    interaction_count: int


@dataclass(frozen=True)
class UserQuery:
    """One GetUserFeatures request: the user, the features asked for (all when empty) and
    the model version of the vector (the serving one when empty)."""

    user_id: str
    names: tuple[str, ...]
    model_version: str


@dataclass(frozen=True)
class _UserPlan:
    """What a user read with given feature names needs, worked out once per list of names:
    the views of the row and the hash fields to read."""

    views: list[FeatureView]
    fields: list[str]


class FeatureService:
    """The feature store over an online (Redis) and an offline (Postgres) store."""

    def __init__(
        self,
        registry: Registry,
        online: OnlineFeatureStore,
        offline: OfflineFeatureStore,
        max_items_per_read: int = 1000,
        item_row_cache_size: int = 20000,
    ):
        self.registry = registry
        self.online = online
        self.offline = offline
        self.max_items_per_read = max_items_per_read
        self.item_row_cache_size = item_row_cache_size
        # Rows by the fields they were read from, then by (item id, stored values' text).
        self._item_rows: dict[tuple[str, ...], dict[tuple[str, str], Row]] = {}
        self._user_plans: dict[tuple[str, ...], _UserPlan] = {}

    def views(self, entity: str, names: list[str], where: str = "feature_names") -> list[FeatureView]:
        """The views `names` asks for (all of the entity's when empty), or ValidationError."""
        views = self.registry.for_entity(entity)
        if not names:
            return list(views.values())
        unknown = self.registry.unknown(entity, names)
        if unknown:
            raise ValidationError(f"{where}: unknown {entity} feature(s) {', '.join(map(repr, unknown))}")
        return [views[name] for name in dict.fromkeys(names)]

    def _user_plan(self, names: tuple[str, ...]) -> _UserPlan:
        """The plan for a user read of `names`, or ValidationError. Callers ask for the
        same few lists of names over and over: the plans are kept (a bounded number)."""
        plan = self._user_plans.get(names)
        if plan is None:
            views = self.views("user", list(names))
            plan = _UserPlan(views, list(dict.fromkeys([*stored_fields(views), *USER_READ_FIELDS])))
            if len(self._user_plans) >= MAX_USER_PLANS:
                self._user_plans.clear()
            self._user_plans[names] = plan
        return plan

    async def get_users(self, queries: list[UserQuery]) -> list[UserFeatures | ValidationError]:
        """For each query, in order, what a user read answers, or the ValidationError that
        rejects that query alone: features (defaults for missing/stale), the vector of the
        model version (or of the serving version), constraints and the interaction count.
        All valid queries are read in one Redis round trip, however many there are."""
        errors: dict[int, ValidationError] = {}
        to_read: list[tuple[int, UserQuery, _UserPlan]] = []
        for index, query in enumerate(queries):
            try:
                check_id(query.user_id, "user_id")
                to_read.append((index, query, self._user_plan(query.names)))
            except ValidationError as error:
                errors[index] = error
        found: dict[int, UserFeatures] = {}
        if to_read:
            read = await self.online.read_users(
                [(query.user_id, plan.fields) for _, query, plan in to_read],
                need_serving_version=any(not query.model_version for _, query, _ in to_read),
            )
            now = time.time()
            for (index, query, plan), user in zip(to_read, read.users, strict=True):
                found[index] = self._user_features(query, plan, user, read.serving_version, now)
        return [found[index] if index in found else errors[index] for index in range(len(queries))]

    def _user_features(
        self, query: UserQuery, plan: _UserPlan, read: UserReadResult, serving_version: str | None, now: float
    ) -> UserFeatures:
        version = query.model_version or serving_version or ""
        if version:
            vector, status = choose_vector(read.vectors, version)
        else:
            # No model version serves yet (a fresh install): no vector can be used.
            vector, status = None, NO_SERVING_MODEL
        row = build_row(query.user_id, read.stored, plan.views, now)
        count = read.stored.get("interaction_count")
        metrics.count_user_read(status)
        if row.defaulted:
            metrics.USER_DEFAULTED.inc(len(row.defaulted))
        return UserFeatures(
            row=row,
            vector=vector,
            vector_version=version if vector is not None else "",
            vector_status=status,
            constraints=constraints_from(read.stored, read.seen),
            interaction_count=int(count) if isinstance(count, (int, float)) else 0,
        )

    async def get_items(self, item_ids: list[str], names: list[str]) -> list[Row]:
        """Rows for up to `max_items_per_read` items in one round trip, defaults for missing.

        Rows built from the same stored values are reused while fresh (bounded cache of
        `item_row_cache_size`); callers must not mutate them."""
        if len(item_ids) > self.max_items_per_read:
            raise ValidationError(f"item_ids: at most {self.max_items_per_read} per call (got {len(item_ids)})")
        check_ids(item_ids, "item_ids")
        views = self.views("item", names)
        fields = stored_fields(views)
        texts = await self.online.read_items(item_ids, fields) if item_ids else []
        now = time.time()
        # A row is a function of the stored values (and time, through expires_at), so
        # the text read from Redis is a safe cache key. Usually every row is cached:
        # lookups and the freshness test run as bulk operations, not a loop per item.
        cache = self._item_rows.setdefault(tuple(fields), {})
        cache_keys = list(zip(item_ids, texts, strict=False))
        rows = list(map(cache.get, cache_keys))
        to_build = [index for index, row in enumerate(rows) if row is None or row.expires_at <= now]
        for index in to_build:
            item_id = item_ids[index]
            values = decode_values(texts[index], len(fields))
            if values is None:
                values = await self.online.read_item_values(item_id, fields)
            rows[index] = build_row_from_list(item_id, fields, values, views, now)
        built = cast("list[Row]", rows)  # every row that was missing (None) or stale was built above
        if to_build:
            if sum(map(len, self._item_rows.values())) + len(to_build) > self.item_row_cache_size:
                self._item_rows.clear()
                cache = self._item_rows[tuple(fields)] = {}
            cache.update((cache_keys[index], built[index]) for index in to_build[: self.item_row_cache_size])
        defaulted = sum([len(row.defaulted) for row in built])
        metrics.ITEMS_PER_READ.observe(len(item_ids))
        metrics.ITEM_ROWS.labels("built").inc(len(to_build))
        metrics.ITEM_ROWS.labels("cache_hit").inc(len(built) - len(to_build))
        if defaulted:
            metrics.DEFAULTED.labels("item").inc(defaulted)
        return built

    async def write(self, entity: str, rows: list[tuple[str, dict[str, Any]]], event_time: datetime | None) -> int:
        """Write values to the offline store (with event_time, default now) and the online
        store; returns the number of values written."""
        if entity not in ENTITIES:
            raise ValidationError(f"entity: must be one of {', '.join(ENTITIES)} (got {entity!r})")
        if not rows:
            raise ValidationError("rows: at least one row is required")
        views = self.registry.for_entity(entity)
        by_entity: dict[str, dict[str, Any]] = {}
        for index, (entity_id, values) in enumerate(rows):
            check_id(entity_id, f"rows[{index}].entity_id")
            if not values:
                raise ValidationError(f"rows[{index}].values: at least one value is required")
            for name, value in values.items():
                view = views.get(name)
                if view is None:
                    raise ValidationError(f"rows[{index}].values[{name!r}]: unknown {entity} feature")
                if not view.accepts(value):
                    raise ValidationError(f"rows[{index}].values[{name!r}]: must be of type {view.type}")
                by_entity.setdefault(entity_id, {})[name] = value
        when = event_time or datetime.now(UTC)
        # Offline first: it is the source of truth, and a failed online write is repaired
        # by the next materialization.
        written = await self.offline.write_features(entity, by_entity, when)
        await self.online.write(entity, by_entity, when.timestamp())
        return written

    async def popular(self, window: str, category: str, limit: int, exclude: list[str]) -> tuple[list, str]:
        """(item id, score) pairs and their source ("popular" or "trending")."""
        window = window or "all"
        if window not in POPULAR_WINDOWS:
            raise ValidationError(f"window: must be one of {', '.join(POPULAR_WINDOWS)} (got {window!r})")
        limit = limit or 20
        if not 1 <= limit <= MAX_POPULAR:
            raise ValidationError(f"limit: must be between 1 and {MAX_POPULAR} (got {limit})")
        if len(category) > 128:
            raise ValidationError("category: at most 128 characters")
        check_ids(exclude, "exclude_item_ids")
        items = await self.online.popular(window, category, limit, set(exclude))
        return items, "trending" if window == "trending" else "popular"

    async def upsert_items(self, items: list[CatalogItem]) -> tuple[int, int]:
        """Catalog upsert into Postgres, then the online item hashes and popular sets;
        returns (upserted, created)."""
        items = validate_items(items)
        created, previous = await self.offline.upsert_items(items)
        await self.online.upsert_items(items, previous)
        return len(items), len(created)

    async def put_profile(self, profile: Profile) -> Profile:
        profile = validate_profile(profile)
        stored = await self.offline.upsert_profile(profile)
        await self.online.put_profile(stored)
        return stored

    async def export_user(self, user_id: str) -> dict:
        """Everything stored about the user, offline and online."""
        check_id(user_id, "user_id")
        offline = await self.offline.export_user(user_id)
        online = await self.online.export_user(user_id)
        return {
            "user_id": user_id,
            "exported_at": datetime.now(UTC).isoformat(),
            "profile": offline["profile"],
            "online_features": online["features"],
            "offline_features": offline["offline_features"],
            "user_vectors": {"postgres": offline["user_vectors"], "redis": online["vectors"]},
            "seen_items": online["seen_items"],
            "recent_items": online["recent_items"],
            "events": offline["events"],
        }

    async def erase_user(self, user_id: str) -> dict[str, int]:
        """Remove the user from Postgres (profile, offline features, vectors) and Redis
        (every key of the user); returns records removed per store."""
        check_id(user_id, "user_id")
        removed = await self.offline.erase_user(user_id)
        removed["redis.keys"] = await self.online.erase_user(user_id)
        return removed
