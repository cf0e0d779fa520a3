"""Known-answer tests of the gateway's pure pieces: track assignment, cursors, merging,
the ranked list as a snapshot keeps it, error field paths and key extraction."""

from __future__ import annotations

import pytest
from recfleet.common.v1 import common_pb2
from recfleet.ranking.v1 import ranking_pb2

from .downstream.tracks import CANARY, STABLE, TrackRouter, tracks_header
from .rest.auth import key_from_headers
from .rest.problems import Problem, _field_path
from .serving.cache import CursorCodec, parameters_digest
from .serving.fallbacks import interleave
from .serving.items import ItemList, merge_by_score
from .serving.ranking_call import ranked_items
from .serving.recommender import model_version
from .serving.retrieval import merge_similar
from .serving.shadow import overlap_at_k


def scored(item_id: str, score: float) -> common_pb2.ScoredItem:
    return common_pb2.ScoredItem(item_id=item_id, score=score)


def test_track_router_moves_the_weight_share_sticky_and_monotone():
    router = TrackRouter({"ranking": 10}, canaries={"ranking"})
    users = [f"user-{i}" for i in range(10_000)]
    first = {u: router.track_for("ranking", u) for u in users}
    on_canary = {u for u, t in first.items() if t == CANARY}
    assert 900 <= len(on_canary) <= 1100
    assert {u: router.track_for("ranking", u) for u in users} == first
    router.set_weight("ranking", 20)
    raised = {u for u in users if router.track_for("ranking", u) == CANARY}
    assert on_canary <= raised and 1900 <= len(raised) <= 2100


def test_track_router_without_canary_is_always_stable_and_refuses_weights():
    router = TrackRouter({"ranking": 50}, canaries=set())
    assert router.track_for("ranking", "u1") == STABLE
    with pytest.raises(LookupError):
        router.set_weight("ranking", 10)
    router.set_weight("ranking", 0)
    with pytest.raises(ValueError):
        TrackRouter(canaries={"ranking"}).set_weight("ranking", 101)


def test_tracks_header_uses_the_fleet_order():
    header = tracks_header({"feature-store": "stable", "ranking": "canary", "candidate-gen": "stable"})
    assert header == "candidate-gen=stable, ranking=canary, feature-store=stable"


def test_cursor_round_trip_and_refusals():
    codec = CursorCodec("secret")
    digest = parameters_digest({"user_id": "u1", "category": ""})
    cursor = codec.encode(20, digest, "snap1")
    assert codec.decode(cursor, digest) == (20, "snap1")
    with pytest.raises(Problem):
        codec.decode(cursor, parameters_digest({"user_id": "u2", "category": ""}))
    with pytest.raises(Problem):
        CursorCodec("other-secret").decode(cursor, digest)
    with pytest.raises(Problem):
        codec.decode("not-base64!!", digest)


def test_parameters_digest_ignores_key_order():
    assert parameters_digest({"a": 1, "b": [1, 2]}) == parameters_digest({"b": [1, 2], "a": 1})
    assert parameters_digest({"a": 1}) != parameters_digest({"a": 2})


def test_merge_similar_keeps_best_score_once_and_excludes():
    merged = merge_similar([[scored("a", 0.5), scored("b", 0.9)], [scored("a", 0.7), scored("c", 0.1)]], 3, {"c"})
    assert [(i.item_id, round(i.score, 2)) for i in merged] == [("b", 0.9), ("a", 0.7)]


def test_merge_by_score_of_packed_lists_keeps_best_score_once_and_names_the_source():
    first = ItemList(["a", "b", "e"], [0.5, 0.9, 0.2], ["", "metadata", ""])
    second = ItemList.unpack(common_pb2.ScoredItemList(item_ids=["a", "c", "d"], scores=[0.7, 0.1, 0.7]))
    merged = merge_by_score([first, second], 4, "als")
    assert merged.item_ids == ["b", "a", "d", "e"]
    assert [round(s, 2) for s in merged.scores] == [0.9, 0.7, 0.7, 0.2]
    assert merged.sources == ["metadata", "als", "als", "als"]
    round_trip = ItemList.unpack(merged.pack())
    assert (round_trip.item_ids, round_trip.sources) == (merged.item_ids, merged.sources)


def test_merge_by_score_carries_the_source_scores_every_shard_answered_with():
    first = ItemList(["a", "b"], [0.5, 0.9], ["als", "ease"], {"als": [0.5, 0.1], "ease": [0.0, 2.0]})
    second = ItemList(["c", "a"], [0.7, 0.6], ["als+ease", "als"], {"ease": [1.0, 0.5], "als": [0.3, 0.6]})
    merged = merge_by_score([first, ItemList(), second], 3)
    assert merged.item_ids == ["b", "c", "a"] and merged.sources == ["ease", "als+ease", "als"]
    # "a" keeps its better entry (0.6, the second shard's) with that entry's source scores.
    assert merged.source_scores == {"als": [0.1, 0.3, 0.6], "ease": [2.0, 1.0, 0.5]}
    packed = merged.pack()
    assert [(c.source, [round(s, 3) for s in c.scores]) for c in packed.source_scores] == [
        ("als", [0.1, 0.3, 0.6]),
        ("ease", [2.0, 1.0, 0.5]),
    ]
    assert ItemList.unpack(packed).source_scores.keys() == {"als", "ease"}
    older = merge_by_score([first, ItemList(["d"], [0.8], ["als"])], 3)
    assert older.item_ids == ["b", "d", "a"] and older.source_scores == {}


def test_interleave_round_robins_sources_without_duplicates():
    out = interleave([[scored("a", 1), scored("b", 1)], [scored("a", 1), scored("c", 1), scored("d", 1)]])
    assert [i.item_id for i in out] == ["a", "b", "c", "d"]


def test_overlap_at_k():
    assert overlap_at_k(["a", "b", "c", "d"], ["d", "c", "x", "y"], k=4) == 0.5
    assert overlap_at_k([], ["a"]) == 1.0


def test_ranked_items_round_scores_and_explain_only_when_asked():
    ranked = ranking_pb2.RankResponse(
        items=[
            ranking_pb2.RankedItem(
                item_id="a",
                score=0.123456789,
                source="als",
                explanation=ranking_pb2.Explanation(
                    candidate_score=0.5, contributions={"popularity": 0.0625}, rules=["diversity"]
                ),
            ),
            ranking_pb2.RankedItem(item_id="b", score=0.25, source="popular"),
        ]
    )
    assert ranked_items(ranked, explain=False) == [
        {"item_id": "a", "score": 0.123457, "source": "als"},
        {"item_id": "b", "score": 0.25, "source": "popular"},
    ]
    explained = ranked_items(ranked, explain=True)[0]["explanation"]
    assert explained == {
        "candidate_score": 0.5,
        "ranker_contributions": {"popularity": 0.0625},
        "rules": ["diversity"],
        "source_scores": {},
    }
    packed = ranking_pb2.RankResponse(
        ranked=common_pb2.ScoredItemList(
            item_ids=[i.item_id for i in ranked.items],
            scores=[i.score for i in ranked.items],
            sources=[i.source for i in ranked.items],
        ),
        explanations=[i.explanation for i in ranked.items],
    )
    assert ranked_items(packed, explain=True) == ranked_items(ranked, explain=True)
    assert ranked_items(packed, explain=False) == ranked_items(ranked, explain=False)


def test_model_version_names_retrieval_and_the_rung():
    assert model_version("als-7", "ranker", "ranker-3") == "als-7+ranker-3"
    assert model_version("als-7", "rules", "ranker-3") == "als-7+rules"
    assert model_version("", "ranker", "") == "cold-start+rules"


def test_field_paths():
    assert _field_path(("body", "events", 3, "type")) == "body.events[3].type"
    assert _field_path(("query", "limit")) == "query.limit"


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "expected"),
    [
        ("Bearer abc", None, "abc"),
        ("bearer  abc ", None, "abc"),
        ("Basic abc", None, None),
        (None, "xyz", "xyz"),
        ("Bearer ", "xyz", None),
        (None, None, None),
    ],
)
def test_key_from_headers(authorization, x_api_key, expected):
    assert key_from_headers(authorization, x_api_key) == expected
