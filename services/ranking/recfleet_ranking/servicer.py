"""`recfleet.ranking.v1.RankingService`: maps protobuf to the ranking pipeline and back."""

from __future__ import annotations

import math
import random
import re
import time

import grpc
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from recfleet_models.ranking.features import Candidate, UserContext

from .adapters.feature_store import FeatureStoreDownstream, load_item_features
from .adapters.models import RankerVersions
from .item_cache import ItemFeatureCache
from .metrics import CORE_SECONDS, DEGRADED, FILTERED, RANK_CALLS
from .pipeline import RANKER_UNAVAILABLE, RankingPipeline, RankOutcome, RankQuery

ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
IDS_RE = re.compile(r"(?:[A-Za-z0-9_.:-]{1,128}\n)*")
RANKER_VERSION_UNAVAILABLE = "ranker-version-unavailable"


class InvalidArgument(ValueError):
    """A request field is malformed; the message names the field and why."""


def _all_valid_ids(ids: list[str]) -> bool:
    """Every id at once, newline-terminated: one regex pass instead of one per id. (An id
    holding a newline would split in two, so the newlines are counted too.)"""
    joined = "\n".join(ids) + "\n" if ids else ""
    return joined.count("\n") == len(ids) and IDS_RE.fullmatch(joined) is not None


def _check_id(value: str, field: str) -> None:
    if not ID_RE.fullmatch(value):
        raise InvalidArgument(f"{field}: must be 1-128 characters of [A-Za-z0-9_.:-], got {value[:140]!r}")


def parse_request(request: ranking_pb2.RankRequest, max_candidates: int) -> RankQuery:
    """The domain query for a request; InvalidArgument when a field is malformed."""
    _check_id(request.user_id, "user_id")
    if request.limit < 0:
        raise InvalidArgument(f"limit: must be 0 (all) or positive, got {request.limit}")
    if len(request.candidates) > max_candidates:
        raise InvalidArgument(f"candidates: at most {max_candidates} per call, got {len(request.candidates)}")
    if request.ranker_version:
        _check_id(request.ranker_version, "ranker_version")
    constraints = request.constraints
    if constraints.age < 0 or constraints.age > 150:
        raise InvalidArgument(f"constraints.age: must be 0 (unknown) to 150, got {constraints.age}")
    if constraints.country and not re.fullmatch(r"[A-Za-z]{2}", constraints.country):
        raise InvalidArgument(f"constraints.country: must be ISO 3166 alpha-2, got {constraints.country!r}")
    scored = request.candidates
    ids = [item.item_id for item in scored]
    scores = [item.score for item in scored]
    sources = [item.source for item in scored]
    if not _all_valid_ids(ids):
        for index, item_id in enumerate(ids):
            _check_id(item_id, f"candidates[{index}].item_id")
    if not all(map(math.isfinite, scores)):
        index = next(i for i, score in enumerate(scores) if not math.isfinite(score))
        raise InvalidArgument(f"candidates[{index}].score: must be a finite number, got {scores[index]}")
    candidates: dict[str, Candidate] = {}
    for item_id, score, source in zip(ids, scores, sources, strict=True):
        known = candidates.get(item_id)
        if known is None or score > known.score:
            candidates[item_id] = Candidate(item_id, score, source)
    user = UserContext(
        user_id=request.user_id,
        age=constraints.age,
        country=constraints.country.upper(),
        blocked_categories=frozenset(constraints.blocked_categories),
        preferred_categories=frozenset(constraints.preferred_categories),
        seen_item_ids=frozenset(constraints.seen_item_ids),
        features=dict(request.user_features),
    )
    return RankQuery(user, list(candidates.values()), request.limit, request.explain, request.category)


class RankingServicer(ranking_pb2_grpc.RankingServiceServicer):
    """Rank: validate, fetch item features, run the pipeline, answer; GetModelStatus."""

    def __init__(
        self,
        pipeline: RankingPipeline,
        versions: RankerVersions,
        feature_store: FeatureStoreDownstream,
        max_candidates: int = 1000,
        inject_error_rate: float = 0.0,
        item_cache: ItemFeatureCache | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.versions = versions
        self.feature_store = feature_store
        self.max_candidates = max_candidates
        self.inject_error_rate = inject_error_rate
        self.item_cache = item_cache if item_cache is not None else ItemFeatureCache(0)

    async def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        if self.inject_error_rate and random.random() < self.inject_error_rate:
            await context.abort(grpc.StatusCode.INTERNAL, "injected error (inject_error_rate drill)")
        try:
            query = parse_request(request, self.max_candidates)
        except InvalidArgument as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        degraded = await load_item_features(self.feature_store, query.candidates, self.item_cache)
        ranker = None if request.force_rules else await self.versions.get(request.ranker_version)
        if ranker is None and request.ranker_version and not request.force_rules:
            degraded.append(RANKER_VERSION_UNAVAILABLE)
            ranker = self.versions.serving
        started = time.perf_counter()
        outcome = self.pipeline.rank(query, ranker, degraded=degraded)
        CORE_SECONDS.observe(time.perf_counter() - started)
        if request.force_rules:
            # Rules were asked for (an experiment's "rules" variant): not a degradation.
            outcome.degraded = [reason for reason in outcome.degraded if reason != RANKER_UNAVAILABLE]
        RANK_CALLS.labels(outcome.served_by).inc()
        for reason in outcome.degraded:
            DEGRADED.labels(reason).inc()
        for reason, count in outcome.filtered.items():
            FILTERED.labels(reason).inc(count)
        return to_response(outcome)

    async def GetModelStatus(
        self, request: ranking_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.ModelStatus:
        serving = self.versions.serving
        return ranking_pb2.ModelStatus(
            ranker_version=serving.version if serving else "",
            model_loaded=serving is not None,
            catalog_items=self.versions.catalog_items,
        )


def to_response(outcome: RankOutcome) -> ranking_pb2.RankResponse:
    """The RankResponse for a pipeline outcome; explanations only where they were computed."""
    response = ranking_pb2.RankResponse(
        served_by=outcome.served_by,
        ranker_version=outcome.ranker_version,
        degraded=outcome.degraded,
        filtered=outcome.filtered,
    )
    for entry in outcome.items:
        item = response.items.add(item_id=entry.item_id, rank=entry.rank, score=entry.score, source=entry.source)
        if entry.contributions or entry.rules:
            item.explanation.candidate_score = entry.candidate_score
            item.explanation.contributions.update(entry.contributions)
            item.explanation.rules.extend(entry.rules)
    return response
