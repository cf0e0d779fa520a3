"""Shards from the artifact store, checked against their model version."""

from __future__ import annotations

import json

import numpy as np
from recfleet_models.index import LoadedShard, ShardRejected, als_prefix, load_shard, read_item_factors
from recfleet_store.artifacts import ArtifactStore


class ArtifactShardSource:
    """Loads verified shards (see `recfleet_models.index.load_shard`) from one store."""

    def __init__(self, store: ArtifactStore):
        self.store = store

    def load(self, version: str, shard: int) -> LoadedShard:
        loaded = load_shard(self.store, version, shard)
        # The index must be as wide as the model's factors, or user vectors of this
        # version could not query it.
        meta_key = f"{als_prefix(version)}meta.json"
        if self.store.exists(meta_key):
            factors = json.loads(self.store.get_bytes(meta_key)).get("factors")
            if factors is not None and int(factors) != loaded.dimension:
                raise ShardRejected(f"index dimension {loaded.dimension} != model factors {factors}")
        return loaded

    def item_factors(self, version: str) -> tuple[list[str], np.ndarray]:
        """Every item id of the version and its factors (checked against checksums.json)."""
        return read_item_factors(self.store, version)
