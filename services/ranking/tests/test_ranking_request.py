import pytest
from recfleet.common.v1 import common_pb2
from recfleet.ranking.v1 import ranking_pb2
from recfleet_ranking.servicer import InvalidArgument, parse_request


def request(**fields):
    fields.setdefault("user_id", "u1")
    return ranking_pb2.RankRequest(**fields)


def test_duplicate_candidates_count_once_with_their_best_score():
    query = parse_request(
        request(
            candidates=[
                common_pb2.ScoredItem(item_id="a", score=0.2, source="popular"),
                common_pb2.ScoredItem(item_id="b", score=0.5, source="als"),
                common_pb2.ScoredItem(item_id="a", score=0.9, source="als"),
            ]
        ),
        max_candidates=10,
    )
    candidates = query.candidates
    assert list(zip(candidates.item_ids, candidates.scores.round(3).tolist(), candidates.sources, strict=True)) == [
        ("a", 0.9, "als"),
        ("b", 0.5, "als"),
    ]


def test_user_fields_reach_the_query():
    query = parse_request(
        request(
            constraints=common_pb2.UserConstraints(age=15, country="de", seen_item_ids=["x"], blocked_categories=["H"]),
            user_features={"interaction_count": 3.0, "affinity:Drama": 0.5},
            category="Drama",
            limit=7,
            explain=True,
        ),
        max_candidates=10,
    )
    assert query.user.country == "DE" and query.user.age == 15
    assert query.user.seen_item_ids == {"x"} and query.user.blocked_categories == {"H"}
    assert query.user.affinity("Drama") == 0.5 and query.user.interaction_count == 3.0
    assert (query.limit, query.explain, query.category) == (7, True, "Drama")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user_id": ""}, "user_id"),
        ({"limit": -2}, "limit"),
        ({"ranker_version": "bad version"}, "ranker_version"),
        ({"constraints": common_pb2.UserConstraints(age=-1)}, "constraints.age"),
        ({"constraints": common_pb2.UserConstraints(country="DEU")}, "constraints.country"),
        ({"candidates": [common_pb2.ScoredItem(item_id="a/b")]}, "candidates[0].item_id"),
        ({"candidates": [common_pb2.ScoredItem(item_id="a", score=float("nan"))]}, "candidates[0].score"),
        ({"candidates": [common_pb2.ScoredItem(item_id=str(i)) for i in range(11)]}, "candidates: at most 10"),
    ],
)
def test_malformed_fields_are_named(fields, message):
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_request(request(**fields), max_candidates=10)


@pytest.mark.parametrize("bad", ["a\nb", "ok\n", "", "x" * 129, "sp ace"])
def test_every_malformed_candidate_id_is_named(bad):
    candidates = [common_pb2.ScoredItem(item_id="fine", score=1.0), common_pb2.ScoredItem(item_id=bad)]
    with pytest.raises(InvalidArgument, match=r"candidates\[1\]\.item_id"):
        parse_request(request(candidates=candidates), 1000)
