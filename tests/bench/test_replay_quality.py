"""bench/replay_quality.py's pure parts: the split as REST payloads, the exclusions sent
with each request, and the scoring of online answers with the offline harness's metrics."""

from __future__ import annotations

import numpy as np
import pytest
from bench_support import bench_script
from recfleet_models.data import Movie, Ratings
from recfleet_models.evaluation import AlsRecommender, evaluate
from recfleet_models.protocols import Split, recbole


@pytest.fixture(scope="module")
def replay():
    with bench_script("replay_quality") as module:
        yield module


def ratings(rows: list[tuple[int, int, float, int]]) -> Ratings:
    users, items, stars, times = zip(*rows, strict=True)
    return Ratings(
        np.array(users, dtype=np.int64),
        np.array(items, dtype=np.int64),
        np.array(stars, dtype=np.float32),
        np.array(times, dtype=np.int64),
    )


def test_ratings_become_rating_events_with_their_value_time_and_a_stable_id(replay):
    events = replay.event_payloads(ratings([(7, 50, 4.5, 964982703), (7, 51, 1.0, 964982224)]))
    assert [(e["user_id"], e["item_id"], e["type"], e["value"]) for e in events] == [
        ("7", "50", "rating", 4.5),
        ("7", "51", "rating", 1.0),
    ]
    assert events[0]["timestamp"] == "2000-07-30T18:45:03Z"
    # The id load-movielens gives the same rating: a retried batch is stored once.
    assert events[0]["event_id"] == replay.event_payloads(ratings([(7, 50, 4.5, 964982703)]))[0]["event_id"]
    assert events[0]["event_id"] != events[1]["event_id"]


def test_catalog_items_carry_genres_as_categories_and_the_release_year(replay):
    movies = [
        Movie(1, "Toy Story (1995)", ("Adventure", "Animation"), 1995),
        Movie(2, "Untitled", (), None),
    ]
    tags = {1: ["pixar", "Pixar", "  ", "x" * 200, "fun"]}
    items = replay.catalog_payloads(movies, tags)
    assert items[0] == {
        "item_id": "1",
        "title": "Toy Story (1995)",
        "categories": ["Adventure", "Animation"],
        "tags": ["pixar", "fun"],  # repeats, blank and over-long labels dropped
        "published_at": "1995-01-01T00:00:00Z",
    }
    assert "published_at" not in items[1] and items[1]["categories"] == []


def test_batches_respect_the_api_limit(replay):
    sizes = [len(batch) for batch in replay.batches(list(range(1201)))]
    assert sizes == [500, 500, 201]


def test_recbole_validation_items_are_sent_as_exclusions(replay):
    rows = [(user, item, 5.0, item) for user in (1, 2) for item in range(100 * user, 100 * user + 20)]
    split = recbole(ratings(rows))
    excluded = replay.exclusions(split)
    assert split.validation is not None
    assert sorted(excluded) == [1, 2]
    assert sum(len(v) for v in excluded.values()) == len(split.validation)
    for user, items in excluded.items():
        trained = set(split.train.movie_ids[split.train.user_ids == user].tolist())
        assert not trained & {int(i) for i in items}
    # A protocol without a validation part excludes nothing beyond what was loaded.
    assert replay.exclusions(Split("recommenders-ml100k", split.train, split.test)) == {}


def test_online_lists_score_as_the_offline_harness_scores_the_same_lists(replay):
    rng = np.random.default_rng(3)
    rows = [
        (user, int(item), float(rng.integers(3, 6)), 0)
        for user in range(1, 31)
        for item in rng.choice(60, size=15, replace=False)
    ]
    split = recbole(ratings(rows))
    model = AlsRecommender()
    offline = evaluate(split, model)
    # The same model's lists, as if a fleet had served them.
    users = sorted({int(u) for u in split.test.user_ids.tolist()})
    served = model.recommend(users, split.k, split.seen())
    online = replay.online_metrics(served, split)
    assert online == offline
    assert replay.differences(online.as_dict(), offline.as_dict()) == {"ndcg@10": 0.0, "recall@10": 0.0}


def test_the_offline_model_is_what_ranked_the_served_lists(replay):
    assert replay.offline_model({"promoted": True, "serves": "ranker"}) == [
        "--model",
        "als+ranker",
        "--ranker-preset",
        "production",
    ]
    assert replay.offline_model({"promoted": False, "serves": "rules"}) == ["--model", "als+rules"]
    assert replay.offline_model({"promoted": False, "serves": "candidate-order"}) == ["--model", "als"]
    # With EASE fused in: the fused order (what the rules rung serves once its other terms
    # are zeroed), or the ranker over the fused candidates.
    ease = ["--ease-l2", "200", "--ease-als-weight", "0.3"]
    assert replay.offline_model({"promoted": False, "serves": "rules"}, ease) == ["--model", "als+ease", *ease]
    assert replay.offline_model({"promoted": True, "serves": "ranker"}, ease) == [
        "--model",
        "als+ease+ranker",
        "--ranker-preset",
        "production",
        *ease,
    ]


def test_each_online_pass_is_compared_with_offline_figures_of_the_same_rule(replay):
    online = [
        {"label": "online", "category_cap": True, "ndcg@10": 0.47, "recall@10": 0.22},
        {"label": "online, no category cap", "category_cap": False, "ndcg@10": 0.49, "recall@10": 0.23},
    ]
    offline = {
        "retrained, serving rule": {"ndcg@10": 0.47, "recall@10": 0.21, "diversity": {"max_per_category": 3}},
        "retrained, no category cap": {"ndcg@10": 0.49, "recall@10": 0.23},
    }
    assert replay.comparisons(online, offline) == {
        "online - offline retrained, serving rule": {"ndcg@10": 0.0, "recall@10": 0.01},
        "online, no category cap - offline retrained, no category cap": {"ndcg@10": 0.0, "recall@10": 0.0},
    }
