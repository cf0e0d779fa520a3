"""`recfleet.ranking.v1.RankingService`: maps protobuf to the ranking pipeline and back."""

from __future__ import annotations

import random
import re
import time

import grpc
import numpy as np
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from recfleet_models.ranking.features import CandidateColumns, ItemColumns, UserContext, objects, retrieval_ranks
from recfleet_runtime.batching import OK_STATUS, EntryAbortedError, EntryContext, entry_status

from .adapters.feature_store import FeatureStoreDownstream, load_item_features, load_item_features_of_each
from .adapters.models import RankerVersions
from .item_cache import ItemFeatureCache
from .metrics import CORE_SECONDS, DEGRADED, FILTERED, RANK_CALLS
from .pipeline import RANKER_UNAVAILABLE, RankedEntry, RankingPipeline, RankJob, RankOutcome, RankQuery

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


def _check_ids(ids: list[str], field: str) -> None:
    """`field[i]` names the first malformed id."""
    if not _all_valid_ids(ids):
        for index, item_id in enumerate(ids):
            _check_id(item_id, field.format(index))


def _check_scores(scores: np.ndarray, field: str) -> None:
    finite = np.isfinite(scores)
    if not finite.all():
        index = int(np.argmin(finite))
        raise InvalidArgument(f"{field.format(index)}: must be a finite number, got {float(scores[index])}")


def _is_packed(request: ranking_pb2.RankRequest) -> bool:
    """The candidates come in `candidate_list` (only read when `candidates` is empty)."""
    return not request.candidates and request.HasField("candidate_list")


def _candidates(request: ranking_pb2.RankRequest, max_candidates: int) -> tuple[list[str], np.ndarray, list[str]]:
    """(ids, scores, sources) of the request's candidates, from `candidates` or, when that
    is empty, from the parallel arrays of `candidate_list`; the count is checked here, the
    ids and scores by the caller."""
    if not _is_packed(request):
        scored = request.candidates
        if len(scored) > max_candidates:
            raise InvalidArgument(f"candidates: at most {max_candidates} per call, got {len(scored)}")
        ids = [item.item_id for item in scored]
        scores = np.array([item.score for item in scored], dtype=np.float64)
        return ids, scores, [item.source for item in scored]
    arrays = request.candidate_list
    ids = list(arrays.item_ids)
    if len(ids) > max_candidates:
        raise InvalidArgument(f"candidate_list.item_ids: at most {max_candidates} per call, got {len(ids)}")
    if len(arrays.scores) != len(ids):
        raise InvalidArgument(
            f"candidate_list.scores: one score per item id, got {len(arrays.scores)} for {len(ids)} item ids"
        )
    if arrays.sources and len(arrays.sources) != len(ids):
        raise InvalidArgument(
            "candidate_list.sources: empty or one source per item id, "
            f"got {len(arrays.sources)} for {len(ids)} item ids"
        )
    sources = list(arrays.sources) if arrays.sources else [""] * len(ids)
    return ids, np.array(arrays.scores, dtype=np.float64), sources


def _best_of_duplicates(ids: list[str], scores: np.ndarray) -> np.ndarray | None:
    """A candidate id given twice counts once, at its first position, with its best score
    (and that score's source and source scores; the first of equal scores): the positions
    to keep, or None when every id is given once."""
    if len(set(ids)) == len(ids):
        return None
    best: dict[str, tuple[float, int]] = {}
    for position, (item_id, score) in enumerate(zip(ids, scores.tolist(), strict=True)):
        known = best.get(item_id)
        if known is None or score > known[0]:
            best[item_id] = (score, position)
    return np.fromiter((position for _, position in best.values()), np.int64, len(best))


MAX_SOURCE_COLUMNS = 8


def _source_scores(request: ranking_pb2.RankRequest, count: int) -> dict[str, np.ndarray]:
    """`candidate_list.source_scores` as columns by source name, checked: at most 8, each
    named once, one finite score per candidate."""
    if not _is_packed(request):
        return {}
    given = request.candidate_list.source_scores
    if len(given) > MAX_SOURCE_COLUMNS:
        raise InvalidArgument(f"candidate_list.source_scores: at most {MAX_SOURCE_COLUMNS} sources, got {len(given)}")
    columns: dict[str, np.ndarray] = {}
    for index, column in enumerate(given):
        field = f"candidate_list.source_scores[{index}]"
        _check_id(column.source, f"{field}.source")
        if column.source in columns:
            raise InvalidArgument(f"{field}.source: {column.source!r} is given twice")
        if len(column.scores) != count:
            raise InvalidArgument(
                f"{field}.scores: one score per item id, got {len(column.scores)} for {count} item ids"
            )
        scores = np.array(column.scores, dtype=np.float64)
        _check_scores(scores, f"{field}.scores[{{}}]")
        columns[column.source] = scores
    return columns


def parse_request(request: ranking_pb2.RankRequest, max_candidates: int) -> RankQuery:
    """The domain query for a request; InvalidArgument when a field is malformed. Its
    candidates' item features are still unknown (the servicer loads them)."""
    _check_id(request.user_id, "user_id")
    if request.limit < 0:
        raise InvalidArgument(f"limit: must be 0 (all) or positive, got {request.limit}")
    ids, scores, sources = _candidates(request, max_candidates)
    if request.ranker_version:
        _check_id(request.ranker_version, "ranker_version")
    constraints = request.constraints
    if constraints.age < 0 or constraints.age > 150:
        raise InvalidArgument(f"constraints.age: must be 0 (unknown) to 150, got {constraints.age}")
    if constraints.country and not re.fullmatch(r"[A-Za-z]{2}", constraints.country):
        raise InvalidArgument(f"constraints.country: must be ISO 3166 alpha-2, got {constraints.country!r}")
    if _is_packed(request):
        _check_ids(ids, "candidate_list.item_ids[{}]")
        _check_scores(scores, "candidate_list.scores[{}]")
    else:
        _check_ids(ids, "candidates[{}].item_id")
        _check_scores(scores, "candidates[{}].score")
    source_scores = _source_scores(request, len(ids))
    kept = _best_of_duplicates(ids, scores)
    if kept is not None:
        picked = kept.tolist()
        ids, sources = [ids[i] for i in picked], [sources[i] for i in picked]
        scores = scores[kept]
        source_scores = {source: column[kept] for source, column in source_scores.items()}
    count = len(ids)
    candidates = CandidateColumns(
        objects(ids, count),
        scores,
        objects(sources, count),
        ItemColumns.unknown(count),
        retrieval_ranks(scores),
        source_scores,
    )
    user = UserContext(
        user_id=request.user_id,
        age=constraints.age,
        country=constraints.country.upper(),
        blocked_categories=frozenset(constraints.blocked_categories),
        preferred_categories=frozenset(constraints.preferred_categories),
        seen_item_ids=frozenset(constraints.seen_item_ids),
        features=dict(request.user_features),
    )
    return RankQuery(user, candidates, request.limit, request.explain, request.category, request.cold_start)


def _columns(query: RankQuery) -> CandidateColumns:
    """A parsed query's candidates (`parse_request` always gives columns)."""
    assert isinstance(query.candidates, CandidateColumns)
    return query.candidates


class RankingServicer(ranking_pb2_grpc.RankingServiceServicer):
    """Rank and RankBatch: validate, fetch item features, run the pipeline, answer;
    GetModelStatus."""

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
        query = await self._parse(request, context)
        items, degraded = await load_item_features(
            self.feature_store, _columns(query).item_ids.tolist(), self.item_cache
        )
        job = await self._job(request, query, items, degraded)
        started = time.perf_counter()
        outcome = self.pipeline.rank_many([job])[0]
        CORE_SECONDS.observe(time.perf_counter() - started)
        return self._answer(request, outcome)

    async def RankBatch(
        self, request: ranking_pb2.RankBatchRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RankBatchResponse:
        """Each entry answered as `Rank` would answer it alone (an invalid entry gets its
        status, its neighbours are unaffected). Cheaper than a Rank per entry: one
        `GetItemFeatures` for what the cache lacks of as many entries as one read may
        carry, and one model predict for the entries one ranker scores."""
        entry_context = EntryContext(context)
        parsed: list[RankQuery | ranking_pb2.RankResult] = []
        for entry in request.requests:
            try:
                parsed.append(await self._parse(entry, entry_context))
            except EntryAbortedError as aborted:
                parsed.append(ranking_pb2.RankResult(status=entry_status(aborted.code, aborted.details)))
        valid = [
            (entry, query)
            for entry, query in zip(request.requests, parsed, strict=True)
            if isinstance(query, RankQuery)
        ]
        loaded = await load_item_features_of_each(
            self.feature_store,
            [_columns(query).item_ids.tolist() for _, query in valid],
            self.item_cache,
            max_per_read=self.max_candidates,
        )
        jobs = [
            await self._job(entry, query, items, degraded)
            for (entry, query), (items, degraded) in zip(valid, loaded, strict=True)
        ]
        started = time.perf_counter()
        outcomes = iter(self.pipeline.rank_many(jobs))
        if jobs:
            share = (time.perf_counter() - started) / len(jobs)
            for _ in jobs:
                CORE_SECONDS.observe(share)
        response = ranking_pb2.RankBatchResponse()
        for entry, query in zip(request.requests, parsed, strict=True):
            if isinstance(query, RankQuery):
                response.results.add(response=self._answer(entry, next(outcomes)), status=OK_STATUS)
            else:
                response.results.append(query)
        return response

    async def _parse(
        self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext | EntryContext
    ) -> RankQuery:
        """The validated query; aborts the call (or the batch entry) with the status Rank
        answers: the fault drill's INTERNAL, INVALID_ARGUMENT naming the field."""
        if self.inject_error_rate and random.random() < self.inject_error_rate:
            await context.abort(grpc.StatusCode.INTERNAL, "injected error (inject_error_rate drill)")
        try:
            return parse_request(request, self.max_candidates)
        except InvalidArgument as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

    async def _job(
        self, request: ranking_pb2.RankRequest, query: RankQuery, items: ItemColumns, degraded: list[str]
    ) -> RankJob:
        """The query with its item features and the ranker chosen for it."""
        _columns(query).items = items
        ranker = None if request.force_rules else await self.versions.get(request.ranker_version)
        if ranker is None and request.ranker_version and not request.force_rules:
            degraded.append(RANKER_VERSION_UNAVAILABLE)
            ranker = self.versions.serving
        return RankJob(query, ranker, degraded)

    def _answer(self, request: ranking_pb2.RankRequest, outcome: RankOutcome) -> ranking_pb2.RankResponse:
        if request.force_rules or (self.versions.none_promoted and not request.ranker_version):
            # Rules were asked for (an experiment's "rules" variant), or no ranker is
            # promoted (none beat the candidate order: the registry says why): not a
            # degradation, and the gateway may cache the answer.
            outcome.degraded = [reason for reason in outcome.degraded if reason != RANKER_UNAVAILABLE]
        RANK_CALLS.labels(outcome.served_by).inc()
        for reason in outcome.degraded:
            DEGRADED.labels(reason).inc()
        for reason, count in outcome.filtered.items():
            FILTERED.labels(reason).inc(count)
        return to_packed_response(outcome) if request.packed else to_response(outcome)

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
        if _explained(entry):
            _explain(item.explanation, entry)
    return response


def _explained(entry: RankedEntry) -> bool:
    return bool(entry.contributions or entry.rules or entry.source_scores)


def _explain(explanation: ranking_pb2.Explanation, entry: RankedEntry) -> None:
    explanation.candidate_score = entry.candidate_score
    explanation.contributions.update(entry.contributions)
    explanation.rules.extend(entry.rules)
    explanation.source_scores.update(entry.source_scores)


def to_packed_response(outcome: RankOutcome) -> ranking_pb2.RankResponse:
    """The same answer as `to_response` with the items as parallel arrays in `ranked`
    (rank = position from 1) and, when explanations were computed, `explanations`."""
    response = ranking_pb2.RankResponse(
        served_by=outcome.served_by,
        ranker_version=outcome.ranker_version,
        degraded=outcome.degraded,
        filtered=outcome.filtered,
    )
    items = outcome.items
    ranked = response.ranked
    ranked.item_ids.extend([entry.item_id for entry in items])
    ranked.scores.extend([entry.score for entry in items])
    ranked.sources.extend([entry.source for entry in items])
    if any(_explained(entry) for entry in items):
        for entry in items:
            explanation = response.explanations.add()
            if _explained(entry):
                _explain(explanation, entry)
    return response
