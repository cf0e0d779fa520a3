"""Ranker versions: artifacts in the artifact store, versions in the Postgres registry.

The artifact format (files, checksums, loading) is `recfleet_models.ranking.artifacts`;
this adapter chooses which version serves and keeps it loaded. A version whose checksums
do not match is refused and the last good one kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import psycopg
import structlog
from recfleet_models.ranking.artifacts import KIND, ModelLoadError, artifact_prefix, load_ranker
from recfleet_models.ranking.learned import LearnedRanker
from recfleet_store.artifacts import ArtifactStore
from recfleet_store.registry import serving_version_async

log = structlog.get_logger("recfleet.ranking.models")


class RankerVersions:
    """The serving ranker plus a small LRU of versions asked for by experiments.

    `pinned` (the `ranker_version` setting) overrides the registry, for canaries.
    """

    def __init__(
        self,
        store: ArtifactStore,
        postgres_dsn: str,
        pinned: str = "",
        cache_size: int = 3,
        retry_failed_seconds: float = 30.0,
    ):
        self.store = store
        self.postgres_dsn = postgres_dsn
        self.pinned = pinned
        self.cache_size = cache_size
        self.retry_failed_seconds = retry_failed_seconds
        self.serving: LearnedRanker | None = None
        # The version the registry (or `pinned`) says should serve: "" when no ranker is
        # promoted (none trained yet, or none beat the candidate order: by decision, not a
        # fault), None until the registry was first read.
        self.wanted: str | None = None
        self.catalog_items = 0
        self._extra: OrderedDict[str, LearnedRanker] = OrderedDict()
        self._failed: dict[str, float] = {}
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.postgres_dsn, autocommit=True, connect_timeout=5)
        return self._conn

    async def _artifact_prefix(self, version: str) -> str | None:
        conn = await self._connection()
        cursor = await conn.execute(
            "SELECT artifact_uri FROM model_versions WHERE version = %s AND kind = %s", (version, KIND)
        )
        row = await cursor.fetchone()
        return row[0] if row else None

    async def refresh(self) -> None:
        """Load the version that should serve, when it changed. Keeps the last good one on errors."""
        try:
            conn = await self._connection()
            target = self.pinned or await serving_version_async(conn, KIND)
            cursor = await conn.execute("SELECT count(*) FROM items")
            row = await cursor.fetchone()
            self.catalog_items = int(row[0]) if row else 0
        except psycopg.Error as error:
            log.warning("registry unreachable; keeping the loaded ranker", error=str(error))
            if self._conn is not None:
                await self._conn.close()
            self._conn = None
            return
        self.wanted = target or ""
        if not target:
            if self.serving is not None:
                log.info("no ranker serves any more", previous=self.serving.version)
            self.serving = None
            return
        if self.serving is not None and self.serving.version == target:
            return
        ranker = await self._load(target)
        if ranker is not None:
            log.info("ranker loaded", version=target, previous=self.serving.version if self.serving else None)
            self.serving = ranker

    async def _load(self, version: str) -> LearnedRanker | None:
        failed_at = self._failed.get(version)
        if failed_at is not None and time.monotonic() - failed_at < self.retry_failed_seconds:
            return None
        try:
            prefix = await self._artifact_prefix(version) or artifact_prefix(version)
            ranker = await asyncio.to_thread(load_ranker, self.store, version, prefix)
        except (ModelLoadError, psycopg.Error) as error:
            log.error("ranker version not loaded", version=version, error=str(error))
            self._failed[version] = time.monotonic()
            return None
        self._failed.pop(version, None)
        return ranker

    @property
    def none_promoted(self) -> bool:
        """No ranker is meant to serve: rules answer by decision, not as a degradation."""
        return self.wanted == ""

    async def get(self, version: str = "") -> LearnedRanker | None:
        """The serving ranker, or a specific version (loaded on demand); None when unavailable."""
        if not version or (self.serving is not None and self.serving.version == version):
            return self.serving
        if version in self._extra:
            self._extra.move_to_end(version)
            return self._extra[version]
        async with self._lock:
            if version not in self._extra:
                ranker = await self._load(version)
                if ranker is None:
                    return None
                self._extra[version] = ranker
                while len(self._extra) > self.cache_size:
                    self._extra.popitem(last=False)
        return self._extra[version]

    async def poll(self, interval: float) -> None:
        """Refresh forever (a background task of the server)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # the poller must outlive any one bad refresh; the reason is logged
                log.exception("ranker refresh failed; keeping the loaded ranker")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
