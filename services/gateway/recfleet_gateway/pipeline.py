"""The recommendation path: cache -> user features -> candidates -> ranking -> response,
with the degradation ladder (learned ranker -> rules -> popular items) and cursor
pagination over a snapshot of the ranked list.

This module owns orchestration only; it maps protobuf replies to plain dicts that the
API layer returns as JSON.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from prometheus_client import Counter, Histogram
from recfleet.candidates.v1 import candidates_pb2
from recfleet.common.v1 import common_pb2
from recfleet.features.v1 import features_pb2
from recfleet.ranking.v1 import ranking_pb2
from recfleet_models.sharding import shard_of
from recfleet_runtime.context import deadline_var, request_id_var
from recfleet_runtime.grpcclient import DeadlineSpentError, Downstream
from recfleet_runtime.logging import get_logger
from recfleet_runtime.metrics import LATENCY_BUCKETS
from recfleet_runtime.resilience import CircuitOpenError

from .cache import CursorCodec, ResultCache, parameters_digest
from .clients import CANDIDATE_GEN, FEATURE_STORE, RANKING, STABLE, Fleet, record_track, tracks_var
from .experiments import Assignment, ranking_choice
from .problems import Problem
from .settings import GatewaySettings

if TYPE_CHECKING:
    from .exposures import ExperimentBook

log = get_logger("recfleet.gateway.pipeline")

PATH_SERVICES = (CANDIDATE_GEN, RANKING, FEATURE_STORE)
SHADOW_REQUESTS = Counter(
    "recfleet_gateway_shadow_requests_total",
    "Calls mirrored to a canary, by service and outcome.",
    ["service", "outcome"],
)
SHADOW_SECONDS = Histogram(
    "recfleet_gateway_shadow_seconds", "Latency of mirrored canary calls.", ["service"], buckets=LATENCY_BUCKETS
)
SHADOW_OVERLAP = Histogram(
    "recfleet_gateway_shadow_overlap_ratio",
    "Agreement of the mirrored canary answer with the stable one: overlap@10 of the items (ranking,"
    " candidate-gen shards), the share of equal feature values (feature-store).",
    ["service"],
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0),
)
DOWNSTREAM_ERRORS = (grpc.aio.AioRpcError, CircuitOpenError, DeadlineSpentError)
# The feature store's `vector_status` when no model version serves (a fresh install).
NO_SERVING_MODEL = "no-serving-model"


def is_timeout(error: BaseException) -> bool:
    if isinstance(error, DeadlineSpentError):
        return True
    return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


class NoCandidatesError(Exception):
    """No candidate source answered with anything to rank."""


@dataclass(frozen=True)
class RecommendationQuery:
    """The validated parameters of `GET /v1/recommendations`."""

    user_id: str
    limit: int = 20
    surface: str = ""
    cursor: str | None = None
    explain: bool = False
    exclude: tuple[str, ...] = ()
    category: str = ""

    def fixed_parameters(self) -> dict:
        """What a cursor is bound to (the page size may change between pages)."""
        return {
            "user_id": self.user_id,
            "surface": self.surface,
            "explain": self.explain,
            "exclude": sorted(self.exclude),
            "category": self.category,
        }

    def cache_digest(self) -> str:
        return parameters_digest({**self.fixed_parameters(), "limit": self.limit})


@dataclass
class UserContext:
    """What the feature store said about the user (defaults when it could not answer)."""

    constraints: common_pb2.UserConstraints = field(default_factory=common_pb2.UserConstraints)
    vector: list[float] = field(default_factory=list)
    vector_version: str = ""
    interaction_count: int = 0
    numeric_features: dict[str, float] = field(default_factory=dict)
    liked_items: list[str] = field(default_factory=list)


def scored(item: common_pb2.ScoredItem) -> dict:
    return {"item_id": item.item_id, "score": float(item.score), "source": item.source}


def merge_by_score(groups: list[list[common_pb2.ScoredItem]], k: int, exclude: set[str] = frozenset()) -> list:
    """Shard answers -> one list by descending score, each item once."""
    best: dict[str, common_pb2.ScoredItem] = {}
    for group in groups:
        for item in group:
            if item.item_id in exclude:
                continue
            current = best.get(item.item_id)
            if current is None or item.score > current.score:
                best[item.item_id] = item
    return sorted(best.values(), key=lambda item: (-item.score, item.item_id))[:k]


def interleave(groups: list[list[common_pb2.ScoredItem]]) -> list[common_pb2.ScoredItem]:
    """Round-robin over candidate sources whose scores are not comparable, each item once."""
    seen: set[str] = set()
    out: list[common_pb2.ScoredItem] = []
    for position in range(max((len(g) for g in groups), default=0)):
        for group in groups:
            if position < len(group) and group[position].item_id not in seen:
                seen.add(group[position].item_id)
                out.append(group[position])
    return out


def shard_failure(error: BaseException) -> str:
    """How a shard failed, for `degraded`: a shard serving another model version than the
    user's vector refuses (FAILED_PRECONDITION) rather than mixing versions."""
    if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return "version-mismatch"
    return "unavailable"


def replay_tracks(tracks: dict[str, str]) -> None:
    """A cached list names the tracks that produced it."""
    for service, track in tracks.items():
        record_track(service, track)


def overlap_at_k(primary: list[str], other: list[str], k: int = 10) -> float:
    top = set(primary[:k])
    return len(top & set(other[:k])) / len(top) if top else 1.0


def item_overlap(primary_items) -> Callable:
    """Agreement of a mirrored answer's items with the stable answer's (overlap@10)."""
    primary_ids = [item.item_id for item in primary_items]
    return lambda reply: overlap_at_k(primary_ids, [item.item_id for item in reply.items])


def feature_agreement(primary: features_pb2.GetUserFeaturesResponse) -> Callable:
    """Agreement of a mirrored user read with the stable one: the share of features (and
    the vector) whose values are equal."""

    def agreement(reply: features_pb2.GetUserFeaturesResponse) -> float:
        names = set(primary.features.values) | set(reply.features.values)
        equal = sum(primary.features.values.get(name) == reply.features.values.get(name) for name in names)
        equal += primary.user_vector == reply.user_vector
        return equal / (len(names) + 1)

    return agreement


def model_version(als_version: str, served_by: str, ranker_version: str) -> str:
    retrieval = als_version or "cold-start"
    if served_by == "ranker" and ranker_version:
        return f"{retrieval}+{ranker_version}"
    return f"{retrieval}+rules"


class Recommender:
    """Serves recommendations, similar items and popular items over the fleet."""

    def __init__(
        self,
        settings: GatewaySettings,
        fleet: Fleet,
        cache: ResultCache,
        cursors: CursorCodec,
        shadow: Callable[[str], bool] = lambda service: False,
        experiments: ExperimentBook | None = None,
    ):
        self.settings = settings
        self.fleet = fleet
        self.cache = cache
        self.cursors = cursors
        # Whether to mirror this call of a service to its canary (the traffic controller).
        self.shadow = shadow
        self._shadow_tasks: set[asyncio.Task] = set()
        # The last popular list seen per category: the ladder's final rung when the feature
        # store cannot answer (its breaker open, or the machine overloaded).
        self._last_popular: dict[str, list[common_pb2.ScoredItem]] = {}
        # Running experiments: assignment, and the exposure log every response feeds.
        self.experiments = experiments

    # -- recommendations -------------------------------------------------------------

    async def recommend(self, query: RecommendationQuery) -> dict:
        deadline_var.set(time.monotonic() + self.settings.request_timeout)
        fixed_digest = parameters_digest(query.fixed_parameters())
        if query.cursor:
            return self._exposed(await self._page(query, fixed_digest))
        chosen = self.experiments.assign(query.user_id, query.surface) if self.experiments else None
        # The tracks this user is routed to are part of the key: a weight change that
        # moves the user to another track must not be answered from the old track's list.
        # So is the experiment variant: starting or stopping an experiment changes the list.
        router = self.fleet.router
        routed = {service: router.track_for(service, query.user_id) for service in PATH_SERVICES}
        cache_digest = parameters_digest(
            {"query": query.cache_digest(), "tracks": routed, "experiment": chosen.as_response() if chosen else None}
        )
        cached = await self.cache.get(query.user_id, cache_digest)
        if cached is not None:
            replay_tracks(cached.get("tracks", {}))
            response = cached["response"]
            # Each response has its own request id, so that events attribute to it.
            response["request_id"] = request_id_var.get()
            return self._exposed(response)
        snapshot = await self._rank_fresh(query, chosen)
        snapshot["tracks"] = dict(tracks_var.get() or {})
        snapshot["experiment"] = chosen.as_response() if chosen else None
        snapshot_id = secrets.token_hex(8)
        response = self._response(query, snapshot, 0, fixed_digest, snapshot_id)
        # A degraded list is not kept: the next request may find the fleet whole again.
        # Its snapshot is, so that the cursor just issued stays valid.
        digest = None if snapshot["degraded"] else cache_digest
        await self.cache.put(
            query.user_id, snapshot_id, snapshot, digest, {"response": response, "tracks": snapshot["tracks"]}
        )
        return self._exposed(response)

    def _exposed(self, response: dict) -> dict:
        """Log the exposure (in the background) when the response is part of an experiment."""
        if self.experiments is not None:
            self.experiments.expose(response)
        return response

    async def _page(self, query: RecommendationQuery, fixed_digest: str) -> dict:
        offset, snapshot_id = self.cursors.decode(query.cursor or "", fixed_digest)
        snapshot = await self.cache.get_snapshot(query.user_id, snapshot_id)
        if snapshot is None:
            raise Problem(
                410,
                "the cursor has expired; request the first page again",
                kind="cursor-expired",
                title="Cursor Expired",
            )
        replay_tracks(snapshot.get("tracks", {}))
        return self._response(query, snapshot, offset, fixed_digest, snapshot_id)

    def _response(self, query: RecommendationQuery, snapshot: dict, offset: int, digest: str, snapshot_id: str) -> dict:
        ranked = snapshot["items"]
        page = ranked[offset : offset + query.limit]
        end = offset + len(page)
        items = []
        for position, item in enumerate(page, start=offset + 1):
            entry = {"item_id": item["item_id"], "rank": position, "score": item["score"], "source": item["source"]}
            if query.explain and "explanation" in item:
                entry["explanation"] = item["explanation"]
            items.append(entry)
        return {
            "request_id": request_id_var.get(),
            "user_id": query.user_id,
            "items": items,
            "next_cursor": self.cursors.encode(end, digest, snapshot_id) if end < len(ranked) else None,
            "model_version": snapshot["model_version"],
            "served_by": snapshot["served_by"],
            "degraded": snapshot["degraded"],
            "cold_start": snapshot["cold_start"],
            "experiment": snapshot.get("experiment"),
        }

    async def _rank_fresh(self, query: RecommendationQuery, chosen: Assignment | None = None) -> dict:
        degraded: list[str] = []
        user = await self._user_context(query.user_id, degraded)
        seen = list(dict.fromkeys([*user.constraints.seen_item_ids, *query.exclude]))
        cold_start = not user.vector or user.interaction_count < self.settings.cold_start_threshold
        als_version = ""
        candidates: list[common_pb2.ScoredItem] = []
        if not cold_start:
            candidates, als_version = await self._retrieve(query.user_id, user, seen, degraded)
            if not candidates:
                cold_start = True
        if cold_start:
            candidates = await self._cold_start_candidates(query, user, seen, degraded)
        constraints = common_pb2.UserConstraints()
        constraints.CopyFrom(user.constraints)
        del constraints.seen_item_ids[:]
        constraints.seen_item_ids.extend(seen)
        try:
            if not candidates:
                raise NoCandidatesError
            ranked = await self._rank(query, user, candidates, constraints, chosen)
        except (*DOWNSTREAM_ERRORS, NoCandidatesError) as error:
            log.warning("ranking not possible; serving popular items", error=str(error) or "no candidates")
            degraded.append("no-candidates" if isinstance(error, NoCandidatesError) else "ranking-unavailable")
            return await self._popular_snapshot(query, constraints, degraded, cold_start)
        degraded.extend(d for d in ranked.degraded if d not in degraded)
        if not ranked.items:
            # Ranking answered but kept nothing (its own dependencies failed, or every
            # candidate was filtered): an empty list helps no one, popular items might.
            log.warning("ranking returned no items; serving popular items", degraded=list(ranked.degraded))
            degraded.append("ranking-empty")
            return await self._popular_snapshot(query, constraints, degraded, cold_start)
        served_by = ranked.served_by or "rules"
        items = []
        for item in ranked.items:
            entry = {"item_id": item.item_id, "score": round(float(item.score), 6), "source": item.source}
            if query.explain:
                entry["explanation"] = {
                    "candidate_score": round(float(item.explanation.candidate_score), 6),
                    "ranker_contributions": {
                        name: round(float(value), 6) for name, value in item.explanation.contributions.items()
                    },
                    "rules": list(item.explanation.rules),
                }
            items.append(entry)
        return {
            "items": items,
            "model_version": model_version(als_version, served_by, ranked.ranker_version),
            "served_by": served_by,
            "degraded": degraded,
            "cold_start": cold_start,
        }

    async def _popular_snapshot(
        self, query: RecommendationQuery, constraints: common_pb2.UserConstraints, degraded: list[str], cold_start: bool
    ) -> dict:
        items = await self._popular_fallback(query, constraints, degraded)
        return {
            "items": items,
            "model_version": "popular",
            "served_by": "popular",
            "degraded": degraded,
            "cold_start": cold_start,
        }

    async def _user_context(self, user_id: str, degraded: list[str]) -> UserContext:
        client = self.fleet.feature_store.pick(self.fleet.router, user_id)
        request = features_pb2.GetUserFeaturesRequest(user_id=user_id)
        try:
            reply = await client.call("GetUserFeatures", request)
        except DOWNSTREAM_ERRORS as error:
            degraded.append("feature-store-timeout" if is_timeout(error) else "feature-store-unavailable")
            return UserContext()
        canary = self.fleet.feature_store.canary
        if client.track == STABLE and canary is not None and self.shadow(FEATURE_STORE):
            self._mirror(FEATURE_STORE, canary, "GetUserFeatures", request, feature_agreement(reply))
        numeric = {
            name: value.number for name, value in reply.features.values.items() if value.WhichOneof("kind") == "number"
        }
        if reply.vector_status == NO_SERVING_MODEL:
            # Before the first training run promotes a model: the answer comes from the
            # popular and cold-start rungs, and says why.
            degraded.append("no-serving-model")
        liked_value = reply.features.values.get("liked_items")
        liked = list(liked_value.strings.values) if liked_value is not None else []
        return UserContext(
            constraints=reply.constraints,
            vector=list(reply.user_vector.values),
            vector_version=reply.user_vector.model_version,
            interaction_count=reply.interaction_count,
            numeric_features=numeric,
            liked_items=liked,
        )

    async def _retrieve(
        self, user_id: str, user: UserContext, seen: list[str], degraded: list[str]
    ) -> tuple[list[common_pb2.ScoredItem], str]:
        shards = self.fleet.candidate_gen.pick(self.fleet.router, user_id)
        request = candidates_pb2.RetrieveRequest(
            query_vector=user.vector,
            k=self.settings.candidates_per_shard,
            exclude_item_ids=seen,
            model_version=user.vector_version,
        )
        replies = await asyncio.gather(*(s.call("Retrieve", request) for s in shards), return_exceptions=True)
        canaries = self.fleet.candidate_gen.canary
        if shards and shards[0].track == STABLE and len(canaries) == len(shards) and self.shadow(CANDIDATE_GEN):
            for canary, reply in zip(canaries, replies, strict=True):
                if not isinstance(reply, BaseException):
                    self._mirror(CANDIDATE_GEN, canary, "Retrieve", request, item_overlap(reply.items))
        groups = []
        for shard, reply in zip(shards, replies, strict=True):
            if isinstance(reply, BaseException):
                if not isinstance(reply, DOWNSTREAM_ERRORS):
                    raise reply
                degraded.append(f"{shard.name}-{shard_failure(reply)}")
                continue
            groups.append(list(reply.items))
        merged = merge_by_score(groups, self.settings.candidates_per_shard * max(1, len(shards)))
        for item in merged:
            item.source = item.source or "als"
        return merged, user.vector_version

    async def _cold_start_candidates(
        self, query: RecommendationQuery, user: UserContext, seen: list[str], degraded: list[str]
    ) -> list[common_pb2.ScoredItem]:
        """Onboarding-category popular items, items similar to liked items, and trending."""
        per_category = self.settings.popular_candidates_per_category
        categories = list(user.constraints.preferred_categories)
        if query.category and query.category not in categories:
            categories.insert(0, query.category)
        liked = list(dict.fromkeys(user.liked_items))[:10]
        jobs = [self._popular_items("all", category, per_category, seen) for category in categories]
        jobs.extend(self._similar_candidates(item_id, seen) for item_id in liked)
        jobs.append(self._popular_items("trending", "", per_category, seen))
        jobs.append(self._popular_items("all", "", per_category, seen))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        groups: list[list[common_pb2.ScoredItem]] = []
        failed = False
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, DOWNSTREAM_ERRORS):
                    raise result
                failed = True
                log.warning("cold-start candidate source failed", error=str(result))
                continue
            groups.append(result)
        if failed:
            degraded.append("cold-start-candidates-partial")
        return interleave(groups)

    async def _popular_items(
        self,
        window: str,
        category: str,
        limit: int,
        exclude: list[str],
        user_id: str | None = None,
        timeout: float | None = None,
    ) -> list[common_pb2.ScoredItem]:
        """Popular items are candidate generation, not a user-feature read: they get the
        candidate budget, not the feature store's tight one."""
        client = self.fleet.feature_store.pick(self.fleet.router, user_id)
        request = features_pb2.GetPopularItemsRequest(
            window=window, category=category, limit=limit, exclude_item_ids=exclude
        )
        budget = timeout if timeout is not None else self.settings.candidate_gen_timeout
        reply = await client.call("GetPopularItems", request, timeout=budget)
        items = list(reply.items)
        if window == "all":
            self._last_popular[category] = items
        for item in items:
            item.source = "trending" if window == "trending" else "popular"
        return items

    async def _similar_candidates(self, item_id: str, exclude: list[str]) -> list[common_pb2.ScoredItem]:
        try:
            found, _, _ = await self._similar(item_id, self.settings.similar_candidates_per_liked_item, exclude)
        except Problem:
            return []
        for item in found:
            item.source = "similar"
        return found

    async def _rank(
        self,
        query: RecommendationQuery,
        user: UserContext,
        candidates: list[common_pb2.ScoredItem],
        constraints: common_pb2.UserConstraints,
        chosen: Assignment | None = None,
    ) -> ranking_pb2.RankResponse:
        client = self.fleet.ranking.pick(self.fleet.router, query.user_id)
        request = ranking_pb2.RankRequest(
            user_id=query.user_id,
            candidates=candidates,
            limit=self.settings.snapshot_size,
            constraints=constraints,
            explain=query.explain,
            surface=query.surface,
            category=query.category,
            user_features=user.numeric_features,
            **(ranking_choice(chosen.ranker_version) if chosen else {}),
        )
        if client.track == STABLE and self.shadow(RANKING) and self.fleet.ranking.canary is not None:
            primary = await client.call("Rank", request)
            self._mirror(RANKING, self.fleet.ranking.canary, "Rank", request, item_overlap(primary.items))
            return primary
        return await client.call("Rank", request)

    def _mirror(self, service: str, canary: Downstream, method: str, request, agreement: Callable) -> None:
        """Send the same read to the canary in the background and record how far its
        answer agrees with the stable one; the caller's response never waits for it.
        Writes (event-ingest) are never mirrored: they would be stored twice."""

        async def run() -> None:
            started = time.perf_counter()
            try:
                reply = await canary.call(method, request)
            except DOWNSTREAM_ERRORS:
                SHADOW_REQUESTS.labels(service, "error").inc()
                return
            SHADOW_REQUESTS.labels(service, "ok").inc()
            SHADOW_SECONDS.labels(service).observe(time.perf_counter() - started)
            SHADOW_OVERLAP.labels(service).observe(agreement(reply))

        task = asyncio.create_task(run())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _popular_fallback(
        self, query: RecommendationQuery, constraints: common_pb2.UserConstraints, degraded: list[str]
    ) -> list[dict]:
        """The last rung: popular items minus what the user saw, blocked categories removed
        when item features can be read."""
        want = self.settings.snapshot_size
        try:
            # The last rung: it may use what is left of the request's budget.
            last_rung = max(self.settings.candidate_gen_timeout, self.settings.ranking_timeout)
            popular = await self._popular_items(
                "all", query.category, want * 2, list(constraints.seen_item_ids), query.user_id, last_rung
            )
        except DOWNSTREAM_ERRORS as error:
            popular = self._last_popular.get(query.category)
            if popular is None:
                raise Problem(503, "recommendations are unavailable: ranking and popular items both failed") from error
            degraded.append("popular-from-memory")
        seen = set(constraints.seen_item_ids)
        popular = [item for item in popular if item.item_id not in seen]
        blocked = set(constraints.blocked_categories)
        if blocked and popular:
            client = self.fleet.feature_store.pick(self.fleet.router, query.user_id)
            try:
                reply = await client.call(
                    "GetItemFeatures",
                    timeout=self.settings.candidate_gen_timeout,
                    request=features_pb2.GetItemFeaturesRequest(
                        item_ids=[i.item_id for i in popular], feature_names=["categories"]
                    ),
                )
                categories = {
                    row.entity_id: set(row.values["categories"].strings.values)
                    for row in reply.rows
                    if "categories" in row.values
                }
                popular = [i for i in popular if not categories.get(i.item_id, set()) & blocked]
            except DOWNSTREAM_ERRORS:
                degraded.append("item-features-unavailable")
        return [{"item_id": i.item_id, "score": round(float(i.score), 6), "source": "popular"} for i in popular[:want]]

    # -- similar items ---------------------------------------------------------------

    async def _similar(
        self, item_id: str, limit: int, exclude: list[str] | tuple = ()
    ) -> tuple[list[common_pb2.ScoredItem], str, list[str]]:
        """The owning shard answers and returns the item's vector; the other shards are
        asked with that vector; the answers merge by score."""
        shards = self.fleet.candidate_gen.pick(self.fleet.router, None)
        if not shards:
            raise Problem(503, "no candidate-gen shard is configured")
        owner_index = shard_of(item_id, len(shards))
        owner = shards[owner_index]
        excluded = [item_id, *exclude]
        try:
            first = await owner.call(
                "SimilarItems", candidates_pb2.SimilarItemsRequest(item_id=item_id, k=limit, exclude_item_ids=excluded)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise Problem(404, f"item {item_id!r} is not in the serving index", kind="item-not-found") from None
            raise Problem(503, f"the shard that owns item {item_id!r} is unavailable") from error
        except (CircuitOpenError, DeadlineSpentError) as error:
            raise Problem(503, f"the shard that owns item {item_id!r} is unavailable") from error
        degraded: list[str] = []
        others: list[Downstream] = [s for index, s in enumerate(shards) if index != owner_index]
        groups = [list(first.items)]
        if others and first.query_vector:
            request = candidates_pb2.SimilarItemsRequest(
                item_id=item_id,
                k=limit,
                exclude_item_ids=excluded,
                query_vector=first.query_vector,
                model_version=first.model_version,
            )
            replies = await asyncio.gather(*(s.call("SimilarItems", request) for s in others), return_exceptions=True)
            for shard, reply in zip(others, replies, strict=True):
                if isinstance(reply, BaseException):
                    if not isinstance(reply, DOWNSTREAM_ERRORS):
                        raise reply
                    degraded.append(f"{shard.name}-unavailable")
                    continue
                groups.append(list(reply.items))
        return merge_by_score(groups, limit, set(excluded)), first.model_version, degraded

    async def similar(self, item_id: str, limit: int) -> dict:
        deadline_var.set(time.monotonic() + self.settings.request_timeout)
        found, version, degraded = await self._similar(item_id, limit)
        return {
            "request_id": request_id_var.get(),
            "item_id": item_id,
            "items": [
                {"item_id": i.item_id, "rank": rank, "score": round(float(i.score), 6), "source": i.source or "similar"}
                for rank, i in enumerate(found, start=1)
            ],
            "model_version": version,
            "degraded": degraded,
        }

    # -- popular -----------------------------------------------------------------------

    async def popular(self, window: str, category: str, limit: int) -> dict:
        deadline_var.set(time.monotonic() + self.settings.request_timeout)
        try:
            found = await self._popular_items(window, category, limit, [])
        except DOWNSTREAM_ERRORS as error:
            raise Problem(503, "popular items are unavailable: the feature store did not answer") from error
        return {
            "request_id": request_id_var.get(),
            "window": window,
            "category": category or None,
            "items": [
                {"item_id": i.item_id, "rank": rank, "score": round(float(i.score), 6), "source": i.source}
                for rank, i in enumerate(found[:limit], start=1)
            ],
        }
