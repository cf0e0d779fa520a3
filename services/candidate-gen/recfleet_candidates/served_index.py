"""The shard this process serves, and the hot swap that replaces it.

A reload loads the candidate version in a worker thread, verifies it (checksums,
dimension, shard layout) and runs the sanity queries there, and only then swaps the
reference. Requests read the reference once, so each request sees one whole version; a
refused version leaves the last good one serving and is reported in the status and the
`recfleet_candidates_reload_total{outcome="refused"}` counter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import faiss
import structlog
from recfleet_models.index import LoadedShard, ShardRejected

from . import metrics
from .sanity import check_shard

log = structlog.get_logger("recfleet.candidates")

ShardLoader = Callable[[str, int], LoadedShard]


@dataclass(frozen=True)
class Status:
    shard: int
    shard_count: int
    model_version: str
    index_type: str
    item_count: int
    dimension: int
    last_reload: str
    refused_version: str


class ServedIndex:
    """Holds the serving `LoadedShard` and swaps in verified new versions."""

    def __init__(
        self,
        shard: int,
        shard_count: int,
        load: ShardLoader,
        sanity_sample: int,
        min_sanity_recall: float,
        search_threads: int = 1,
        keep_previous_seconds: float = 0.0,
    ):
        self.shard = shard
        self.shard_count = shard_count
        self._load = load
        self._sanity_sample = sanity_sample
        self._min_recall = min_sanity_recall
        self._threads = search_threads
        self._keep_previous = keep_previous_seconds
        self.current: LoadedShard | None = None
        # The version swapped out, still answering requests pinned to it until the
        # deadline, so a fleet mid-way through a swap never has to mix versions.
        self._previous: LoadedShard | None = None
        self._previous_until = 0.0
        self.last_reload = ""
        self.refused_version = ""
        self.refused_at = 0.0
        self._lock = asyncio.Lock()
        self._label = str(shard)

    @property
    def version(self) -> str:
        return self.current.version if self.current is not None else ""

    def _prepare(self, version: str) -> LoadedShard:
        # OpenMP thread counts are per thread: set it in the worker too.
        faiss.omp_set_num_threads(self._threads)
        loaded = self._load(version, self.shard)
        manifest = loaded.manifest
        if manifest.shard_count != self.shard_count:
            raise ShardRejected(
                f"index has {manifest.shard_count} shards but this fleet runs {self.shard_count}; "
                "rebuild the index or redeploy with the new shard count"
            )
        report = check_shard(loaded, self._sanity_sample, self._min_recall)
        log.info(
            "sanity queries passed",
            version=version,
            shard=self.shard,
            sampled=report.sampled,
            self_found=report.self_found,
            recall_at_10=round(report.recall_at_10, 4),
        )
        return loaded

    async def reload(self, version: str) -> bool:
        """Load, verify and swap in `version`; False (and the last good one kept) when refused."""
        async with self._lock:
            if self.current is not None and self.current.version == version:
                return True
            started = time.perf_counter()
            kept = self.for_version(version)
            try:
                # Going back to the version just swapped out (a rollback) needs no reload:
                # it passed every check when it was loaded.
                loaded = kept if kept is not None else await asyncio.to_thread(self._prepare, version)
            except ShardRejected as error:
                return self._refuse(version, error.reason)
            except Exception as error:  # an unreadable store must not take the shard down
                log.exception("reload failed", version=version, shard=self.shard)
                return self._refuse(version, f"load failed: {type(error).__name__}: {error}")
            previous = self.current
            self.current = loaded
            if previous is not None and self._keep_previous > 0:
                self._previous, self._previous_until = previous, time.monotonic() + self._keep_previous
            else:
                self._previous = None
            self.last_reload = "ok"
            self.refused_version = ""
            metrics.RELOADS.labels(self._label, "ok").inc()
            if previous is not None:
                metrics.INDEX_VERSION.remove(self._label, previous.version, previous.manifest.index_type)
            metrics.INDEX_VERSION.labels(self._label, version, loaded.manifest.index_type).set(1)
            metrics.INDEX_ITEMS.labels(self._label).set(loaded.item_count)
            if loaded.manifest.built_at:
                built = datetime.fromisoformat(loaded.manifest.built_at)
                metrics.INDEX_BUILT.labels(self._label).set(built.timestamp())
            log.info(
                "index swapped",
                version=version,
                previous=previous.version if previous else None,
                shard=self.shard,
                items=loaded.item_count,
                seconds=round(time.perf_counter() - started, 3),
            )
            return True

    def for_version(self, version: str) -> LoadedShard | None:
        """The loaded shard of `version`: the current one, or the one just swapped out
        while its grace period lasts; None otherwise."""
        current = self.current
        if current is not None and current.version == version:
            return current
        previous = self._previous
        if previous is not None and previous.version == version:
            if time.monotonic() < self._previous_until:
                return previous
            self._previous = None
        return None

    def _refuse(self, version: str, reason: str) -> bool:
        self.last_reload = reason
        self.refused_version = version
        self.refused_at = time.monotonic()
        metrics.RELOADS.labels(self._label, "refused").inc()
        log.error(
            "index version refused; last good version keeps serving",
            version=version,
            reason=reason,
            serving=self.version or None,
            shard=self.shard,
        )
        return False

    def status(self) -> Status:
        current = self.current
        return Status(
            shard=self.shard,
            shard_count=self.shard_count,
            model_version=current.version if current else "",
            index_type=current.manifest.index_type if current else "",
            item_count=current.item_count if current else 0,
            dimension=current.dimension if current else 0,
            last_reload=self.last_reload,
            refused_version=self.refused_version,
        )
