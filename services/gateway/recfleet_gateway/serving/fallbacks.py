"""The rungs below the learned ranker that need no user vector: popular and trending
items, the cold-start candidates (onboarding categories, items similar to liked items,
trending), and the last rung, popular items minus what the user saw."""

from __future__ import annotations

import asyncio

from recfleet.common.v1 import common_pb2
from recfleet.features.v1 import features_pb2
from recfleet_runtime.logging import get_logger
from recfleet_runtime.periodic import Periodic

from ..downstream.clients import DOWNSTREAM_ERRORS
from ..downstream.fleet import Fleet
from ..rest.problems import Problem
from ..settings import GatewaySettings
from .query import RecommendationQuery
from .retrieval import CandidateRetrieval
from .user_context import UserContext

log = get_logger("recfleet.gateway.pipeline")
# How often the remembered popular list (the ladder's last rung) is read again.
POPULAR_MEMORY_REFRESH_SECONDS = 30.0


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


class Fallbacks:
    """Popular items from the feature store, and the last popular list seen per category
    for when it cannot answer."""

    def __init__(self, settings: GatewaySettings, fleet: Fleet, retrieval: CandidateRetrieval):
        self.settings = settings
        self.fleet = fleet
        self.retrieval = retrieval
        # The last popular list seen per category: the ladder's final rung when the feature
        # store cannot answer (its breaker open, Redis down, the machine overloaded). The
        # overall list is read at start and every POPULAR_MEMORY_REFRESH_SECONDS, so the rung
        # holds even when no request needed popular items before the failure.
        self._last_popular: dict[str, list[common_pb2.ScoredItem]] = {}
        self._refresher = Periodic(POPULAR_MEMORY_REFRESH_SECONDS, self.remember_popular)

    async def start(self) -> None:
        await self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    async def remember_popular(self) -> None:
        """Read the overall popular list into memory; a failure keeps the last one."""
        try:
            await self.popular_items("all", "", self.settings.snapshot_size * 2, [])
        except DOWNSTREAM_ERRORS as error:
            log.warning("popular list not refreshed; keeping the last one", error=str(error))

    async def popular_items(
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
        reply = await client.get_popular_items(request, timeout=budget)
        items = list(reply.items)
        if window == "all" and not exclude:
            self._last_popular[category] = items
        for item in items:
            item.source = "trending" if window == "trending" else "popular"
        return items

    async def cold_start_candidates(
        self, query: RecommendationQuery, user: UserContext, seen: list[str], degraded: list[str]
    ) -> list[common_pb2.ScoredItem]:
        """Items the user's history predicts (`ease`, for a user with history but no vector
        yet), onboarding-category popular items (source `category-popular`), items similar
        to liked items (`similar`), trending and popular items."""
        per_category = self.settings.popular_candidates_per_category
        categories = list(user.constraints.preferred_categories)
        if query.category and query.category not in categories:
            categories.insert(0, query.category)
        liked = list(dict.fromkeys(user.liked_items))[:10]
        jobs = [self._category_candidates(category, per_category, seen) for category in categories]
        history = list(user.constraints.seen_item_ids)
        if history and not user.vector:
            jobs.insert(0, self.retrieval.from_history(query.user_id, history, seen, per_category))
        jobs.extend(self._similar_candidates(item_id, seen) for item_id in liked)
        jobs.append(self.popular_items("trending", "", per_category, seen))
        jobs.append(self.popular_items("all", "", per_category, seen))
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

    async def _category_candidates(self, category: str, limit: int, exclude: list[str]) -> list[common_pb2.ScoredItem]:
        """A category's popular items, as new messages: the remembered popular list keeps its own."""
        found = await self.popular_items("all", category, limit, exclude)
        return [
            common_pb2.ScoredItem(item_id=item.item_id, score=item.score, source="category-popular") for item in found
        ]

    async def _similar_candidates(self, item_id: str, exclude: list[str]) -> list[common_pb2.ScoredItem]:
        try:
            found, _, _ = await self.retrieval.similar(
                item_id, self.settings.similar_candidates_per_liked_item, exclude
            )
        except Problem:
            return []
        for item in found:
            item.source = "similar"
        return found

    async def popular_rung(
        self, query: RecommendationQuery, constraints: common_pb2.UserConstraints, degraded: list[str]
    ) -> list[dict]:
        """The last rung: popular items minus what the user saw, blocked categories removed
        when item features can be read."""
        want = self.settings.snapshot_size
        try:
            # The last rung: it may use what is left of the request's budget.
            last_rung = max(self.settings.candidate_gen_timeout, self.settings.ranking_timeout)
            popular = await self.popular_items(
                "all", query.category, want * 2, list(constraints.seen_item_ids), query.user_id, last_rung
            )
        except DOWNSTREAM_ERRORS as error:
            remembered = self._last_popular.get(query.category)
            if remembered is None:
                raise Problem(503, "recommendations are unavailable: ranking and popular items both failed") from error
            popular = remembered
            degraded.append("popular-from-memory")
        seen = set(constraints.seen_item_ids)
        popular = [item for item in popular if item.item_id not in seen]
        blocked = set(constraints.blocked_categories)
        if blocked and popular:
            client = self.fleet.feature_store.pick(self.fleet.router, query.user_id)
            try:
                reply = await client.get_item_features(
                    features_pb2.GetItemFeaturesRequest(
                        item_ids=[i.item_id for i in popular], feature_names=["categories"]
                    ),
                    timeout=self.settings.candidate_gen_timeout,
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
