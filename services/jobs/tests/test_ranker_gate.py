"""`train-ranker --promote` behind the ranker's gate, on synthetic event logs in a real
Postgres, with Redis and a directory artifact store.

Two logs whose right answer is known: in one the candidate score is already the truth
(every user's unseen items of their own cluster are exactly the ones they go on to
interact with), so no ranker can beat the candidate order; in the other users go on to
pick items published in the last few weeks, which the ALS score cannot see (a new item
has had little time to collect interactions) but the ranker's freshness and item-age
features can.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest
import redis
import typer
from recfleet_jobs import ranker, registry
from recfleet_store import keys
from recfleet_store.registry import get_version, serving_version
from typer.testing import CliRunner

DAY = 86_400.0
START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
Event = tuple[str, str, float]  # user, item, epoch seconds


def cluster_log(rng: np.random.Generator) -> tuple[list[Event], dict[str, float]]:
    """20 clusters of 8 items and 40 users; every user interacts with all 8 items of their
    cluster, in random order: the last two (the labels) are the only unseen items of the
    cluster, which is what ALS puts first."""
    events: list[Event] = []
    for cluster in range(20):
        items = [f"c{cluster}-i{n}" for n in range(8)]
        for member in range(40):
            times = np.sort(rng.uniform(START, START + 100 * DAY, len(items)))
            events += [
                (f"c{cluster}-u{member}", item, t) for item, t in zip(rng.permutation(items), times, strict=True)
            ]
    published = {item: START - 400 * DAY for _, item, _ in events}
    return events, published


def fresh_log(rng: np.random.Generator) -> tuple[list[Event], dict[str, float]]:
    """200 items published over 300 days; 400 users, each with 12 interactions with items
    already published, at random over the 80 days before their moment, then 3 with
    items published in the 20 days before it."""
    published = {f"i{n}": START + t for n, t in enumerate(np.sort(rng.uniform(0, 300 * DAY, 200)))}
    names = np.array(list(published))
    times = np.array(list(published.values()))
    events: list[Event] = []
    for user in range(400):
        moment = START + rng.uniform(100, 300) * DAY
        history = np.sort(rng.uniform(moment - 80 * DAY, moment - DAY, 12))
        picked: set[str] = set()
        for t in history:
            item = str(rng.choice(names[times < t]))
            picked.add(item)
            events.append((f"u{user}", item, t))
        fresh = [str(i) for i in names[(times < moment) & (times >= moment - 20 * DAY)] if i not in picked]
        for n, item in enumerate(rng.choice(fresh, size=min(3, len(fresh)), replace=False)):
            events.append((f"u{user}", str(item), moment + n * 600.0))
    return events, published


def load(dsn: str, events: list[Event], published: dict[str, float]) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy("COPY items (item_id, title, categories, published_at) FROM STDIN") as copy:
            for item, at in published.items():
                copy.write_row((item, item, ["Drama"], datetime.fromtimestamp(at, UTC)))
        with cur.copy("COPY events (event_id, user_id, item_id, type, value, ts) FROM STDIN") as copy:
            for n, (user, item, at) in enumerate(events):
                copy.write_row(
                    (f"00000000-0000-0000-0000-{n:012d}", user, item, "click", None, datetime.fromtimestamp(at, UTC))
                )


def _app() -> typer.Typer:
    app = typer.Typer()
    ranker.register(app)
    registry.register(app)
    return app


def run(*args: str):
    return CliRunner().invoke(_app(), list(args))


@pytest.fixture
def fleet(monkeypatch, fresh_pg_dsn, redis_url, artifact_dir):
    monkeypatch.setenv("RECFLEET_POSTGRES_DSN", fresh_pg_dsn)
    monkeypatch.setenv("RECFLEET_REDIS_URL", redis_url)
    monkeypatch.setenv("RECFLEET_ARTIFACT_URL", f"file://{artifact_dir}")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield fresh_pg_dsn, client
    client.close()


def test_a_ranker_that_does_not_beat_the_candidate_order_stays_a_candidate_and_the_registry_says_why(fleet):
    dsn, client = fleet
    load(dsn, *cluster_log(np.random.default_rng(7)))
    result = run("train-ranker", "--promote")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    version, metrics, gate = summary["version"], summary["metrics"], summary["validation_gate"]
    assert metrics["validation_ndcg@10_candidate_order"] > 0.95  # the candidate score is the truth
    assert metrics["validation_ndcg@10"] < metrics["validation_ndcg@10_candidate_order"] + 0.002
    assert gate["passed"] is False and gate["serves"] in ("candidate-order", "rules")
    assert gate["reason"].startswith("the ranker does not beat the")
    assert summary["promoted"] is False and summary["refusals"] == [gate["reason"]]
    assert summary["serving"] is None and client.get(keys.serving_version_key("ranker")) is None

    with psycopg.connect(dsn) as conn:
        row = get_version(conn, version)
        assert row["status"] == "candidate" and row["metrics"]["validation_gate"] == gate
    listed = {row["version"]: row for row in json.loads(run("models", "--kind", "ranker").stdout)}
    assert listed[version]["refusals"] == [gate["reason"]]
    refused = run("promote", "--kind", "ranker", "--version", version)
    assert refused.exit_code == 1 and json.loads(refused.stderr)["reasons"] == [gate["reason"]]

    forced = run("promote", "--kind", "ranker", "--version", version, "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["overridden"] == [gate["reason"]]
    assert client.get(keys.serving_version_key("ranker")) == version


def test_a_ranker_that_sees_what_the_candidate_score_misses_is_promoted_and_published(fleet):
    dsn, client = fleet
    load(dsn, *fresh_log(np.random.default_rng(11)))
    result = run("train-ranker", "--promote")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    version, metrics, gate = summary["version"], summary["metrics"], summary["validation_gate"]
    best_other = max(metrics["validation_ndcg@10_candidate_order"], metrics["validation_ndcg@10_rules"])
    assert metrics["validation_ndcg@10"] > best_other + 0.05
    assert gate["passed"] is True and gate["serves"] == "ranker"
    assert summary["promoted"] is True and summary["refusals"] == [] and summary["serving"] == version
    assert client.get(keys.serving_version_key("ranker")) == version
    with psycopg.connect(dsn) as conn:
        assert serving_version(conn, "ranker") == version
    listed = {row["version"]: row for row in json.loads(run("models", "--kind", "ranker").stdout)}
    assert listed[version]["status"] == "serving" and listed[version]["refusals"] == []


def test_the_margin_and_the_candidate_count_are_settings(fleet, monkeypatch):
    dsn, _ = fleet
    load(dsn, *fresh_log(np.random.default_rng(11)))
    monkeypatch.setenv("RECFLEET_JOBS_RANKER_MIN_GAIN", "0.9")
    monkeypatch.setenv("RECFLEET_JOBS_RANKER_CANDIDATES_PER_SHARD", "30")
    monkeypatch.setenv("RECFLEET_JOBS_SHARD_COUNT", "3")
    result = run("train-ranker", "--promote", "--rounds", "10")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["promoted"] is False and summary["validation_gate"]["min_gain"] == 0.9
    assert "does not beat" in summary["refusals"][0] and "by at least 0.9 and" in summary["refusals"][0]
    with psycopg.connect(dsn) as conn:
        assert get_version(conn, summary["version"])["params"]["als_candidates"] == 90


def test_train_ranker_can_promote_past_the_gate_and_says_what_it_overrode(fleet):
    dsn, client = fleet
    load(dsn, *cluster_log(np.random.default_rng(7)))
    result = run("train-ranker", "--promote", "--force")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    reason = summary["validation_gate"]["reason"]
    assert summary["validation_gate"]["passed"] is False
    assert summary["promoted"] is True and summary["refusals"] == [] and summary["overridden"] == [reason]
    assert client.get(keys.serving_version_key("ranker")) == summary["version"] == summary["serving"]
