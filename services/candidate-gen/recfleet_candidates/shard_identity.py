"""Which shard this process serves."""

from __future__ import annotations

import re

_ORDINAL = re.compile(r"-(\d+)$")


def resolve_shard(shard: int | None, pod_name: str, shard_count: int) -> int:
    """The configured shard, else the ordinal at the end of a StatefulSet pod name
    (`candidate-gen-2` -> 2). Raises ValueError when neither gives a shard in range."""
    if shard is None:
        match = _ORDINAL.search(pod_name or "")
        if match is None:
            raise ValueError(f"no shard configured and POD_NAME {pod_name!r} does not end in an ordinal")
        shard = int(match.group(1))
    if not 0 <= shard < shard_count:
        raise ValueError(f"shard {shard} is outside 0..{shard_count - 1} (shard_count {shard_count})")
    return shard
