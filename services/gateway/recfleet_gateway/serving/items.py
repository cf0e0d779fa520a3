"""Scored item lists as the recommendation path carries them: parallel lists of ids,
scores and sources, read from the packed lists shards and ranking answer with
(`recfleet.common.v1.ScoredItemList`), or from a message per item when an older server
answers that way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from recfleet.candidates.v1 import candidates_pb2
from recfleet.common.v1 import common_pb2
from recfleet.ranking.v1 import ranking_pb2


class Scored(Protocol):
    """An item message with a score and a source (`ScoredItem`, `RankedItem`)."""

    @property
    def item_id(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def source(self) -> str: ...


@dataclass
class ItemList:
    """Scored items: item_ids[i] has scores[i] and sources[i]."""

    item_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def of(cls, items: Iterable[Scored]) -> ItemList:
        listed = cls()
        for item in items:
            listed.item_ids.append(item.item_id)
            listed.scores.append(item.score)
            listed.sources.append(item.source)
        return listed

    @classmethod
    def unpack(cls, packed: common_pb2.ScoredItemList) -> ItemList:
        ids = list(packed.item_ids)
        sources = list(packed.sources) if packed.sources else [""] * len(ids)
        return cls(ids, list(packed.scores), sources)

    def pack(self) -> common_pb2.ScoredItemList:
        return common_pb2.ScoredItemList(item_ids=self.item_ids, scores=self.scores, sources=self.sources)


def retrieved(reply: candidates_pb2.RetrieveResponse) -> ItemList:
    """A shard's answer, packed or one message per item."""
    return ItemList.unpack(reply.packed_items) if reply.HasField("packed_items") else ItemList.of(reply.items)


def ranked(reply: ranking_pb2.RankResponse) -> ItemList:
    """Ranking's answer in rank order, packed or one message per item."""
    return ItemList.unpack(reply.ranked) if reply.HasField("ranked") else ItemList.of(reply.items)


def explanations(reply: ranking_pb2.RankResponse) -> list[ranking_pb2.Explanation]:
    """The explanation of each ranked item, in rank order (empty when none were asked)."""
    if reply.HasField("ranked"):
        return list(reply.explanations)
    return [item.explanation for item in reply.items]


def merge_by_score(groups: list[ItemList], k: int, default_source: str = "") -> ItemList:
    """Shard answers -> one list by descending score (ties by id), each item once with its
    best score; an item with no source gets `default_source`."""
    ids = [item_id for group in groups for item_id in group.item_ids]
    scores = [score for group in groups for score in group.scores]
    sources = [source or default_source for group in groups for source in group.sources]
    if len(set(ids)) != len(ids):
        # Shards own disjoint items, so this is rare: keep each item's best score.
        best: dict[str, tuple[float, str]] = {}
        for item_id, score, source in zip(ids, scores, sources, strict=True):
            current = best.get(item_id)
            if current is None or score > current[0]:
                best[item_id] = (score, source)
        ids, scores, sources = list(best), [s for s, _ in best.values()], [src for _, src in best.values()]
    # Tuples sort in C, without a key function per item: (-score, id) orders by score, then id.
    top = sorted(zip([-score for score in scores], ids, sources, strict=True))[:k]
    return ItemList([item_id for _, item_id, _ in top], [-neg for neg, _, _ in top], [src for _, _, src in top])
