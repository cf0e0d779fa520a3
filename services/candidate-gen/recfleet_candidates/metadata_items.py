"""Cold-start items: catalog items the served model version has no factors for.

When a version is loaded, the category and tag vectors of that version are computed once
(`recfleet_models.metadata_vectors`) from its item factors and the catalog's metadata.
Every poll after that reads the catalog rows changed since the last one; the available
items this shard owns that are not in the version get a vector from their metadata and
are served from a small exact index next to the main shard. Each change builds a new
`MetadataIndex` and replaces the reference, so a search sees either the old or the new
one, never a half-built one. Items marked unavailable, or whose metadata no longer
places them, leave it on the next refresh. A failed refresh keeps the last index.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import faiss
import numpy as np
import structlog
from recfleet_models.index import LoadedShard
from recfleet_models.metadata_vectors import ItemMetadata, MetadataVectors
from recfleet_models.sharding import shard_of

from . import metrics
from .adapters.catalog import CatalogReader, CatalogRow

log = structlog.get_logger("recfleet.candidates")

FactorReader = Callable[[str], tuple[list[str], np.ndarray]]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class MetadataIndex:
    """An immutable exact (flat inner product) index over one version's metadata-placed items."""

    version: str
    item_ids: list[str]
    vectors: np.ndarray
    index: faiss.Index
    rows: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, version: str, dimension: int, placed: dict[str, np.ndarray]) -> MetadataIndex:
        item_ids = sorted(placed)
        vectors = np.ascontiguousarray(
            np.stack([placed[item] for item in item_ids]) if item_ids else np.zeros((0, dimension)),
            dtype=np.float32,
        )
        index = faiss.IndexFlatIP(dimension)
        if item_ids:
            index.add(vectors)
        return cls(version, item_ids, vectors, index, {item: row for row, item in enumerate(item_ids)})

    @property
    def item_count(self) -> int:
        return len(self.item_ids)

    @property
    def same_candidates_up_to(self) -> int:
        """Exact search scans every item whatever k is (see `LoadedShard`)."""
        return sys.maxsize

    def vector_of(self, item_id: str) -> np.ndarray | None:
        row = self.rows.get(item_id)
        return None if row is None else self.vectors[row]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) like `LoadedShard.search`; row -1 where fewer than k exist."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), max(1, min(k, self.item_count)))


class MetadataItems:
    """Keeps this shard's `MetadataIndex` in step with the served version and the catalog."""

    def __init__(
        self,
        shard: int,
        shard_count: int,
        catalog: CatalogReader,
        read_factors: FactorReader,
        min_tag_items: int,
    ):
        self.shard = shard
        self.shard_count = shard_count
        self._catalog = catalog
        self._read_factors = read_factors
        self._min_tag_items = min_tag_items
        self.current: MetadataIndex | None = None
        self._vectors: MetadataVectors | None = None
        self._version = ""
        self._read_at = EPOCH
        self._placed: dict[str, np.ndarray] = {}
        self._lock = asyncio.Lock()
        self._label = str(shard)

    def for_version(self, version: str) -> MetadataIndex | None:
        """The metadata index to search next to `version`'s shard; None when there is none
        for that version (its vectors live in another version's space)."""
        current = self.current
        if current is None or current.version != version or current.item_count == 0:
            return None
        return current

    async def refresh(self, shard: LoadedShard) -> None:
        """Bring the index up to date with `shard`'s version and the catalog's changes.

        The reads and the computation run in a worker thread; only the swap of the
        reference happens on the event loop."""
        async with self._lock:
            rebuilt = await asyncio.to_thread(self._refresh, shard)
            if rebuilt is None:
                return
            self.current = rebuilt
            metrics.METADATA_ITEMS.labels(self._label).set(rebuilt.item_count)
            log.info("metadata items refreshed", version=shard.version, shard=self.shard, items=rebuilt.item_count)

    def _refresh(self, shard: LoadedShard) -> MetadataIndex | None:
        """The new index when anything changed, else None."""
        if shard.version != self._version:
            read = self._catalog.all_items()
            changed = self._load_version(shard, read.rows)
        else:
            read = self._catalog.changed_since(self._read_at)
            changed = self._apply(shard, read.rows)
        self._read_at = read.read_at
        return MetadataIndex.build(shard.version, shard.dimension, dict(self._placed)) if changed else None

    def _load_version(self, shard: LoadedShard, rows: list[CatalogRow]) -> bool:
        item_ids, factors = self._read_factors(shard.version)
        if factors.shape[1] != shard.dimension:
            raise ValueError(
                f"version {shard.version} factors have dimension {factors.shape[1]}, not {shard.dimension}"
            )
        metadata = {row.item_id: ItemMetadata(row.categories, row.tags) for row in rows}
        self._vectors = MetadataVectors.from_version(item_ids, factors, metadata, self._min_tag_items)
        self._version = shard.version
        self._placed = {}
        self._apply(shard, rows)
        log.info(
            "metadata vectors computed",
            version=shard.version,
            shard=self.shard,
            categories=len(self._vectors.categories),
            tags=len(self._vectors.tags),
        )
        # Always publish: the index of the previous version must not outlive it.
        return True

    def _apply(self, shard: LoadedShard, rows: Iterable[CatalogRow]) -> bool:
        """Place, move or drop the owned new items among `rows`; True when anything changed."""
        if self._vectors is None:
            return False
        changed = False
        for row in rows:
            if row.item_id in shard.rows or shard_of(row.item_id, self.shard_count) != self.shard:
                continue
            vector = self._vectors.vector_for(ItemMetadata(row.categories, row.tags)) if row.available else None
            if vector is None:
                changed |= self._placed.pop(row.item_id, None) is not None
                continue
            known = self._placed.get(row.item_id)
            if known is None or not np.array_equal(known, vector):
                self._placed[row.item_id] = vector
                changed = True
        return changed

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._catalog.close)
