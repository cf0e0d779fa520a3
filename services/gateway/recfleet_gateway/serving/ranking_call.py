"""The ranking hop: one `Rank` call over the candidates (mirrored to the ranking canary
when a shadow share is set), and its answer as the snapshot's items."""

from __future__ import annotations

from recfleet.common.v1 import common_pb2
from recfleet.ranking.v1 import ranking_pb2

from ..downstream.fleet import Fleet
from ..downstream.tracks import RANKING, STABLE
from ..experiments import Assignment, ranking_choice
from ..settings import GatewaySettings
from .items import ItemList, explanations, ranked
from .query import RecommendationQuery
from .shadow import Shadow, item_overlap
from .user_context import UserContext


def ranked_items(reply: ranking_pb2.RankResponse, explain: bool) -> list[dict]:
    """The ranked items as the snapshot keeps them (with explanations when asked)."""
    listed = ranked(reply)
    items: list[dict] = [
        {"item_id": item_id, "score": round(score, 6), "source": source}
        for item_id, score, source in zip(listed.item_ids, listed.scores, listed.sources, strict=True)
    ]
    if explain:
        for entry, explanation in zip(items, explanations(reply), strict=False):
            entry["explanation"] = {
                "candidate_score": round(float(explanation.candidate_score), 6),
                "ranker_contributions": {
                    name: round(float(value), 6) for name, value in explanation.contributions.items()
                },
                "rules": list(explanation.rules),
                "source_scores": {
                    name: round(float(value), 6) for name, value in sorted(explanation.source_scores.items())
                },
            }
    return items


class RankingCall:
    """Ranks candidates on the user's ranking track, as the experiment variant asks."""

    def __init__(self, settings: GatewaySettings, fleet: Fleet, shadow: Shadow):
        self.settings = settings
        self.fleet = fleet
        self.shadow = shadow

    async def rank(
        self,
        query: RecommendationQuery,
        user: UserContext,
        candidates: ItemList,
        constraints: common_pb2.UserConstraints,
        chosen: Assignment | None = None,
        cold_start: bool = False,
    ) -> ranking_pb2.RankResponse:
        client = self.fleet.ranking.pick(self.fleet.router, query.user_id)
        request = ranking_pb2.RankRequest(
            user_id=query.user_id,
            candidate_list=candidates.pack(),
            packed=True,
            limit=self.settings.snapshot_size,
            constraints=constraints,
            explain=query.explain,
            surface=query.surface,
            category=query.category,
            user_features=user.numeric_features,
            # Ranking gives a cold user's preferred categories their share of the list; the
            # recommender's word counts too (a user whose retrieval found nothing is served
            # cold-start candidates).
            cold_start=cold_start or not user.vector or user.interaction_count < self.settings.cold_start_threshold,
            **(ranking_choice(chosen.ranker_version) if chosen else {}),
        )
        canary = self.fleet.ranking.canary
        if client.track == STABLE and self.shadow.wanted(RANKING) and canary is not None:
            primary = await client.rank(request)
            self.shadow.mirror(RANKING, canary.rank, request, item_overlap(ranked(primary).item_ids, ranked))
            return primary
        return await client.rank(request)
