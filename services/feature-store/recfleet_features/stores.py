"""The interfaces the feature service needs from its stores, and the choice of adapter by
URL scheme. The service is written against these Protocols only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from .validation import CatalogItem, Profile


class UserReadResult(Protocol):
    stored: dict[str, Any]
    vectors: dict
    seen: list[str]


class UsersReadResult(Protocol):
    @property
    def serving_version(self) -> str | None: ...

    @property
    def users(self) -> Sequence[UserReadResult]: ...


class OnlineFeatureStore(Protocol):
    """Low-latency features: one round trip per read."""

    async def ping(self) -> bool: ...

    async def warm_up(self) -> None: ...

    async def close(self) -> None: ...

    async def read_users(self, users: list[tuple[str, list[str]]], need_serving_version: bool) -> UsersReadResult:
        """Every user's (user id, fields) read in one round trip, answers in order."""
        ...

    async def read_items(self, item_ids: list[str], fields: list[str]) -> list[str]: ...

    async def read_item_values(self, item_id: str, fields: list[str]) -> list: ...

    async def write(self, entity: str, rows: dict[str, dict[str, Any]], event_time: float) -> None: ...

    async def popular(self, window: str, category: str, limit: int, exclude: set[str]) -> list[tuple[str, float]]: ...

    async def upsert_items(self, items: list[CatalogItem], previous_categories: dict[str, list[str]]) -> None: ...

    async def put_profile(self, profile: Profile) -> None: ...

    async def export_user(self, user_id: str) -> dict: ...

    async def erase_user(self, user_id: str) -> int: ...


class OfflineFeatureStore(Protocol):
    """The source of truth: feature history, catalog, profiles, vectors, events."""

    async def open(self) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...

    async def write_features(self, entity: str, rows: dict[str, dict[str, Any]], event_time: datetime) -> int: ...

    async def upsert_items(self, items: list[CatalogItem]) -> tuple[set[str], dict[str, list[str]]]: ...

    async def upsert_profile(self, profile: Profile) -> Profile: ...

    async def export_user(self, user_id: str) -> dict: ...

    async def erase_user(self, user_id: str) -> dict[str, int]: ...


def open_online_store(url: str, **options) -> OnlineFeatureStore:
    """The online store for a URL: redis:// or rediss:// (unix:// for a Redis socket)."""
    scheme = url.split("://", 1)[0]
    if scheme in ("redis", "rediss", "unix"):
        from .adapters.redis_online import RedisOnlineStore

        return RedisOnlineStore.from_url(url, **options)
    raise ValueError(f"online store URL: unsupported scheme {scheme!r} (expected redis, rediss or unix)")


def open_offline_store(dsn: str, pool_size: int = 10) -> OfflineFeatureStore:
    """The offline store for a DSN: postgresql:// or postgres://, or a libpq
    `key=value` string (connections open in the background after `open`)."""
    scheme = dsn.split("://", 1)[0] if "://" in dsn else "postgresql"
    if scheme in ("postgresql", "postgres"):
        from psycopg_pool import AsyncConnectionPool

        from .adapters.postgres_offline import PostgresOfflineStore

        return PostgresOfflineStore(AsyncConnectionPool(dsn, min_size=1, max_size=pool_size, open=False))
    raise ValueError(f"offline store DSN: unsupported scheme {scheme!r} (expected postgresql)")
