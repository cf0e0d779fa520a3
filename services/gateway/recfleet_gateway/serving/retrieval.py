"""Candidate retrieval over the candidate-gen shards: the user's vector scattered to every
shard (`Retrieve`), similar items from the shard that owns an item and then the others
(`SimilarItems`), the answers merged by score."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

import grpc
from recfleet.candidates.v1 import candidates_pb2
from recfleet.common.v1 import common_pb2
from recfleet_models.ease import EASE_SOURCE
from recfleet_models.sharding import shard_of
from recfleet_runtime.grpcclient import DeadlineSpentError
from recfleet_runtime.resilience import CircuitOpenError

from ..downstream.clients import DOWNSTREAM_ERRORS, CandidateClient
from ..downstream.fleet import Fleet
from ..downstream.tracks import CANDIDATE_GEN, STABLE
from ..rest.problems import Problem
from ..settings import GatewaySettings
from .items import ItemList, merge_by_score, retrieved
from .shadow import Shadow, item_overlap
from .user_context import UserContext

ReplyT = TypeVar("ReplyT")


def merge_similar(
    groups: list[list[common_pb2.ScoredItem]], k: int, exclude: Collection[str] = frozenset()
) -> list[common_pb2.ScoredItem]:
    """Shard answers -> one list by descending score, each item once (`merge_by_score` on
    the answers' items, as the messages the similar-items callers read)."""
    kept = [ItemList.of(item for item in group if item.item_id not in exclude) for group in groups]
    merged = merge_by_score(kept, k)
    return [
        common_pb2.ScoredItem(item_id=item_id, score=score, source=source)
        for item_id, score, source in zip(merged.item_ids, merged.scores, merged.sources, strict=True)
    ]


def answered(
    shards: Sequence[CandidateClient],
    replies: Sequence[ReplyT | BaseException],
    degraded: list[str],
    failure: Callable[[BaseException], str] = lambda error: "unavailable",
) -> list[ReplyT]:
    """The replies of the shards that answered; each shard that did not is named in
    `degraded` as `<shard>-<failure(error)>`. An error no downstream call raises is a bug,
    raised again."""
    replied = []
    for shard, reply in zip(shards, replies, strict=True):
        if isinstance(reply, BaseException):
            if not isinstance(reply, DOWNSTREAM_ERRORS):
                raise reply
            degraded.append(f"{shard.name}-{failure(reply)}")
        else:
            replied.append(reply)
    return replied


# `degraded` ends so for a shard that serves another model version than the user's vector.
SHARD_VERSION_MISMATCH = "version-mismatch"


def shard_failure(error: BaseException) -> str:
    """How a shard failed, for `degraded`: a shard serving another model version than the
    user's vector refuses (FAILED_PRECONDITION) rather than mixing versions."""
    if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return SHARD_VERSION_MISMATCH
    return "unavailable"


def shards_refused_version(degraded: Sequence[str]) -> bool:
    """Whether a shard refused the user's vector's model version (named in `degraded`)."""
    return any(reason.endswith(f"-{SHARD_VERSION_MISMATCH}") for reason in degraded)


class CandidateRetrieval:
    """Scatter-gather over the candidate-gen shards of the user's track."""

    def __init__(self, settings: GatewaySettings, fleet: Fleet, shadow: Shadow):
        self.settings = settings
        self.fleet = fleet
        self.shadow = shadow

    async def retrieve(
        self, user_id: str, user: UserContext, seen: list[str], degraded: list[str]
    ) -> tuple[ItemList, str]:
        """(the shards' best items for the user, merged by score; the model version they
        come from). A shard that fails is named in `degraded`.

        The user's history goes along for a version with an EASE source (the shards then
        answer by fused score, with each source's scores), and stays in the exclusions
        too, so a shard of an older build that ignores it still excludes it."""
        shards = self.fleet.candidate_gen.pick(self.fleet.router, user_id)
        request = candidates_pb2.RetrieveRequest(
            query_vector=user.vector,
            k=self.settings.candidates_per_shard,
            exclude_item_ids=seen,
            model_version=user.vector_version,
            packed=True,
            history_item_ids=user.constraints.seen_item_ids,
        )
        replies = await asyncio.gather(*(shard.retrieve(request) for shard in shards), return_exceptions=True)
        canaries = self.fleet.candidate_gen.canary
        if shards and shards[0].track == STABLE and len(canaries) == len(shards) and self.shadow.wanted(CANDIDATE_GEN):
            for canary, reply in zip(canaries, replies, strict=True):
                if not isinstance(reply, BaseException):
                    self.shadow.mirror(
                        CANDIDATE_GEN, canary.retrieve, request, item_overlap(retrieved(reply).item_ids, retrieved)
                    )
        groups = [retrieved(reply) for reply in answered(shards, replies, degraded, shard_failure)]
        merged = merge_by_score(groups, self.settings.candidates_per_shard * max(1, len(shards)), "als")
        return merged, user.vector_version

    async def from_history(
        self, user_id: str, history: Sequence[str], seen: Sequence[str], limit: int
    ) -> list[common_pb2.ScoredItem]:
        """Items the user's history predicts, for a user without a vector (new since the
        last training): each shard's EASE source alone, merged by score (source "ease").
        Nothing from a version without EASE; a shard that fails leaves its part out."""
        shards = self.fleet.candidate_gen.pick(self.fleet.router, user_id)
        request = candidates_pb2.RetrieveRequest(k=limit, history_item_ids=history, exclude_item_ids=seen, packed=True)
        replies = await asyncio.gather(*(shard.retrieve(request) for shard in shards), return_exceptions=True)
        failed: list[str] = []
        groups = [retrieved(reply) for reply in answered(shards, replies, failed, shard_failure)]
        merged = merge_by_score(groups, limit, EASE_SOURCE)
        return [
            common_pb2.ScoredItem(item_id=item_id, score=score, source=source)
            for item_id, score, source in zip(merged.item_ids, merged.scores, merged.sources, strict=True)
        ]

    async def similar(
        self, item_id: str, limit: int, exclude: Sequence[str] = ()
    ) -> tuple[list[common_pb2.ScoredItem], str, list[str]]:
        """(items similar to `item_id`, the model version, degradations). The owning shard
        answers and returns the item's vector; the other shards are asked with that vector;
        the answers merge by score."""
        shards = self.fleet.candidate_gen.pick(self.fleet.router, None)
        if not shards:
            raise Problem(503, "no candidate-gen shard is configured")
        owner_index = shard_of(item_id, len(shards))
        owner = shards[owner_index]
        excluded = [item_id, *exclude]
        try:
            first = await owner.similar_items(
                candidates_pb2.SimilarItemsRequest(item_id=item_id, k=limit, exclude_item_ids=excluded)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise Problem(404, f"item {item_id!r} is not in the serving index", kind="item-not-found") from None
            raise Problem(503, f"the shard that owns item {item_id!r} is unavailable") from error
        except (CircuitOpenError, DeadlineSpentError) as error:
            raise Problem(503, f"the shard that owns item {item_id!r} is unavailable") from error
        degraded: list[str] = []
        others: list[CandidateClient] = [s for index, s in enumerate(shards) if index != owner_index]
        groups = [list(first.items)]
        if others and first.query_vector:
            request = candidates_pb2.SimilarItemsRequest(
                item_id=item_id,
                k=limit,
                exclude_item_ids=excluded,
                query_vector=first.query_vector,
                model_version=first.model_version,
            )
            replies = await asyncio.gather(*(s.similar_items(request) for s in others), return_exceptions=True)
            groups.extend(list(reply.items) for reply in answered(others, replies, degraded))
        return merge_similar(groups, limit, set(excluded)), first.model_version, degraded
