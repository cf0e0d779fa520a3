"""The recommendation path: cache -> user context -> candidates -> ranking -> response,
with the degradation ladder (learned ranker -> rules -> popular items) and cursor
pagination over a snapshot of the ranked list; and the similar and popular reads.

This module owns orchestration only. Each hop lives in its own module: the user context
(`user_context`), retrieval over the shards (`retrieval`), the ranking call
(`ranking_call`), the popular and cold-start rungs (`fallbacks`), and mirroring to canaries
(`shadow`). It maps protobuf replies to plain dicts that the routes return as JSON.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping

from prometheus_client import Counter
from recfleet.common.v1 import common_pb2
from recfleet_runtime.context import deadline_var, request_id_var
from recfleet_runtime.logging import get_logger

from ..downstream.clients import DOWNSTREAM_ERRORS
from ..downstream.fleet import Fleet
from ..downstream.tracks import CANDIDATE_GEN, FEATURE_STORE, RANKING, record_track, tracks_var
from ..experiments import SERVING, Assignment
from ..rest.problems import Problem
from ..rest.ratelimit import PendingHit
from ..settings import GatewaySettings
from .attributes import ItemAttributes
from .cache import CursorCodec, ResultCache, parameters_digest
from .experiment_book import ExperimentBook
from .fallbacks import Fallbacks
from .items import ItemList
from .query import RecommendationQuery
from .ranking_call import RankingCall, ranked_items
from .retrieval import CandidateRetrieval, shards_refused_version
from .shadow import Shadow
from .user_context import NO_VECTOR, VERSION_MISMATCH, UserContext, read_user_context

log = get_logger("recfleet.gateway.pipeline")

# The services a recommendation calls: the tracks they route a user to key the cache.
PATH_SERVICES = (CANDIDATE_GEN, RANKING, FEATURE_STORE)

# Why a user with history got a cold-start list (named in `degraded`): their vectors are of
# other model versions than the serving one, or the shards serve another version than
# their vector; they have the history for a personal list but no vector at all; or
# retrieval found nothing for their vector.
USER_VECTOR_STALE = "user-vector-stale"
NO_USER_VECTOR = "no-user-vector"
NO_PERSONAL_CANDIDATES = "no-personal-candidates"
COLD_START_FALLBACKS = Counter(
    "recfleet_gateway_cold_start_fallbacks_total",
    "Lists for users with history served from the cold-start rungs, by reason.",
    ["reason"],
)


class NoCandidatesError(Exception):
    """No candidate source answered with anything to rank."""


def replay_tracks(tracks: dict[str, str]) -> None:
    """A cached list names the tracks that produced it."""
    for service, track in tracks.items():
        record_track(service, track)


def model_version(als_version: str, served_by: str, ranker_version: str) -> str:
    retrieval = als_version or "cold-start"
    if served_by == "ranker" and ranker_version:
        return f"{retrieval}+{ranker_version}"
    return f"{retrieval}+rules"


def personal_fallback(user: UserContext, threshold: int, retrieved: bool, degraded: list[str]) -> str | None:
    """Why a user with history is served a cold-start list (None: they are not, or are
    new): a vector of another version than the serving one (the feature store's status,
    or shards refusing the vector's version), enough interactions but no vector, or a
    vector that retrieval found nothing for."""
    if user.vector_status.startswith(VERSION_MISMATCH):
        return USER_VECTOR_STALE
    if user.interaction_count < threshold or retrieved:
        return None
    if not user.vector:
        return NO_USER_VECTOR if user.vector_status == NO_VECTOR else None
    return USER_VECTOR_STALE if shards_refused_version(degraded) else NO_PERSONAL_CANDIDATES


def made_by_serving(made: Mapping[str, str], serving: Mapping[str, str | None], chosen: Assignment | None) -> bool:
    """Whether a fresh list came from the model versions serving now (`serving`, as this
    process knows them; an unknown one matches any). A list made while the fleet is still
    moving to a new version is served but not cached under the new version's key."""
    als, ranker = made.get("als", ""), made.get("ranker", "")
    if als and serving.get("als") and als != serving["als"]:
        return False
    follows_serving_ranker = chosen is None or chosen.ranker_version == SERVING
    return not (ranker and follows_serving_ranker and serving.get("ranker") and ranker != serving["ranker"])


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
        # `shadow(service)`: whether to mirror this call to the service's canary (the
        # traffic controller's shadow share).
        self.shadow = Shadow(shadow)
        self.retrieval = CandidateRetrieval(settings, fleet, self.shadow)
        self.ranking = RankingCall(settings, fleet, self.shadow)
        self.fallbacks = Fallbacks(settings, fleet, self.retrieval)
        # Running experiments: assignment, and the exposure log every response feeds.
        self.experiments = experiments
        # Catalog attributes for `fields=`, attached to answers after they are made.
        self.attributes = ItemAttributes(settings, fleet)

    async def start(self) -> None:
        """Background work: the remembered popular list behind the ladder's last rung, and
        the serving model versions that key the cache, and catalog changes that drop
        item attributes."""
        await self.fallbacks.start()
        await self.cache.models.start()
        await self.attributes.start()

    async def stop(self) -> None:
        await self.attributes.stop()
        await self.cache.models.stop()
        await self.fallbacks.stop()

    # -- recommendations -------------------------------------------------------------

    async def recommend(self, query: RecommendationQuery, hit: PendingHit | None = None) -> dict:
        """The page `query` asks for. `hit`: the request's rate-limit windows, counted in
        the cache lookup's round trip (or on their own for a later page)."""
        deadline_var.set(time.monotonic() + self.settings.request_timeout)
        fixed_digest = parameters_digest(query.fixed_parameters())
        if query.cursor:
            if hit is not None:
                await hit.count()
            return self._exposed(await self._page(query, fixed_digest))
        chosen = self.experiments.assign(query.user_id, query.surface) if self.experiments else None
        # The tracks this user is routed to are part of the key: a weight change that
        # moves the user to another track must not be answered from the old track's list.
        # So is the experiment variant: starting or stopping an experiment changes the list;
        # and so are the serving model versions: a promotion or rollback changes it too.
        router = self.fleet.router
        routed = {service: router.track_for(service, query.user_id) for service in PATH_SERVICES}
        serving = self.cache.models.versions
        cache_digest = parameters_digest(
            {
                "query": query.cache_digest(),
                "tracks": routed,
                "experiment": chosen.as_response() if chosen else None,
                "models": serving,
            }
        )
        cached = await self.cache.get(query.user_id, cache_digest, hit)
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
        # Nor is one made by other model versions than the key names. Its snapshot is, so
        # that the cursor just issued stays valid.
        made = snapshot.pop("made_by", {})
        digest = cache_digest if not snapshot["degraded"] and made_by_serving(made, serving, chosen) else None
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
        """The ranked list for a cache miss, walking down the ladder as hops fail."""
        degraded: list[str] = []
        user = await read_user_context(self.fleet, self.shadow, query.user_id, degraded)
        seen = list(dict.fromkeys([*user.constraints.seen_item_ids, *query.exclude]))
        threshold = self.settings.cold_start_threshold
        cold_start = not user.vector or user.interaction_count < threshold
        als_version = ""
        candidates = ItemList()
        if not cold_start:
            candidates, als_version = await self.retrieval.retrieve(query.user_id, user, seen, degraded)
            if not candidates:
                cold_start = True
        fallback = personal_fallback(user, threshold, bool(candidates), degraded)
        if fallback is not None:
            degraded.append(fallback)
            COLD_START_FALLBACKS.labels(fallback).inc()
        if cold_start:
            candidates = ItemList.of(await self.fallbacks.cold_start_candidates(query, user, seen, degraded))
        constraints = common_pb2.UserConstraints()
        constraints.CopyFrom(user.constraints)
        del constraints.seen_item_ids[:]
        constraints.seen_item_ids.extend(seen)
        try:
            if not candidates:
                raise NoCandidatesError
            ranked = await self.ranking.rank(query, user, candidates, constraints, chosen, cold_start)
        except (*DOWNSTREAM_ERRORS, NoCandidatesError) as error:
            log.warning("ranking not possible; serving popular items", error=str(error) or "no candidates")
            degraded.append("no-candidates" if isinstance(error, NoCandidatesError) else "ranking-unavailable")
            return await self._popular_snapshot(query, constraints, degraded, cold_start)
        degraded.extend(d for d in ranked.degraded if d not in degraded)
        items = ranked_items(ranked, query.explain)
        if not items:
            # Ranking answered but kept nothing (its own dependencies failed, or every
            # candidate was filtered): an empty list helps no one, popular items might.
            log.warning("ranking returned no items; serving popular items", degraded=list(ranked.degraded))
            degraded.append("ranking-empty")
            return await self._popular_snapshot(query, constraints, degraded, cold_start)
        served_by = ranked.served_by or "rules"
        return {
            "items": items,
            "model_version": model_version(als_version, served_by, ranked.ranker_version),
            "served_by": served_by,
            "degraded": degraded,
            "cold_start": cold_start,
            "made_by": {"als": als_version, "ranker": ranked.ranker_version if served_by == "ranker" else ""},
        }

    async def _popular_snapshot(
        self, query: RecommendationQuery, constraints: common_pb2.UserConstraints, degraded: list[str], cold_start: bool
    ) -> dict:
        items = await self.fallbacks.popular_rung(query, constraints, degraded)
        return {
            "items": items,
            "model_version": "popular",
            "served_by": "popular",
            "degraded": degraded,
            "cold_start": cold_start,
        }

    # -- similar items ---------------------------------------------------------------

    async def similar(self, item_id: str, limit: int) -> dict:
        deadline_var.set(time.monotonic() + self.settings.request_timeout)
        found, version, degraded = await self.retrieval.similar(item_id, limit)
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
            found = await self.fallbacks.popular_items(window, category, limit, [])
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
