"""Scored item lists as the recommendation path carries them: parallel lists of ids,
scores, sources and each candidate source's own scores, read from the packed lists
shards and ranking answer with (`recfleet.common.v1.ScoredItemList`), or from a message
per item when an older server answers that way."""

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
    """Scored items: item_ids[i] has scores[i] and sources[i], and source_scores[name][i]
    is source `name`'s own score for it (empty when the items carry none)."""

    item_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    source_scores: dict[str, list[float]] = field(default_factory=dict)

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
        columns = {column.source: list(column.scores) for column in packed.source_scores}
        return cls(ids, list(packed.scores), sources, columns)

    def pack(self) -> common_pb2.ScoredItemList:
        return common_pb2.ScoredItemList(
            item_ids=self.item_ids,
            scores=self.scores,
            sources=self.sources,
            source_scores=[
                common_pb2.SourceScores(source=source, scores=scores) for source, scores in self.source_scores.items()
            ],
        )


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
    best score; an item with no source gets `default_source`. The source score columns
    that every answer with items carries come along (a column some shard lacks, as while
    shards of two builds serve, is left out)."""
    filled = [group for group in groups if group.item_ids]
    names = [name for name in filled[0].source_scores if all(name in g.source_scores for g in filled)] if filled else []
    ids = [item_id for group in groups for item_id in group.item_ids]
    scores = [score for group in groups for score in group.scores]
    sources = [source or default_source for group in groups for source in group.sources]
    columns = [[value for group in filled for value in group.source_scores[name]] for name in names]
    if len(set(ids)) != len(ids):
        # Shards own disjoint items, so this is rare: keep each item's best score.
        best: dict[str, int] = {}
        for position, (item_id, score) in enumerate(zip(ids, scores, strict=True)):
            current = best.get(item_id)
            if current is None or score > scores[current]:
                best[item_id] = position
        positions = list(best.values())
        ids, scores, sources = (
            [ids[p] for p in positions],
            [scores[p] for p in positions],
            [sources[p] for p in positions],
        )
        columns = [[column[p] for p in positions] for column in columns]
    # Tuples sort in C, without a key function per item: (-score, id, position) orders by
    # score, then id.
    top = sorted(zip([-score for score in scores], ids, range(len(ids)), strict=True))[:k]
    picked = [position for _, _, position in top]
    return ItemList(
        [item_id for _, item_id, _ in top],
        [-neg for neg, _, _ in top],
        [sources[p] for p in picked],
        {name: [column[p] for p in picked] for name, column in zip(names, columns, strict=True)},
    )
