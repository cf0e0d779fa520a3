"""Stable assignment of items to FAISS shards."""

from __future__ import annotations

import hashlib

ASSIGNMENT_RULE = "blake2b64(item_id) mod shard_count"


def shard_of(item_id: str, shard_count: int) -> int:
    """The shard that owns an item: the same on every process, machine and run."""
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count
