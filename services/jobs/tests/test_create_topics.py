"""`recfleet-jobs create-topics` against a real Kafka-protocol broker: every fleet topic
with the configured partitions and replication, and a second run changes nothing."""

from __future__ import annotations

import json
import uuid

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from recfleet_jobs.__main__ import _load, app
from typer.testing import CliRunner


@pytest.fixture
def topic_env(kafka_bootstrap):
    tag = uuid.uuid4().hex[:8]
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "RECFLEET_EVENTS_TOPIC": f"jobs.events.{tag}",
        "RECFLEET_DEAD_LETTER_TOPIC": f"jobs.dlq.{tag}",
        "RECFLEET_USERS_TOPIC": f"jobs.users.{tag}",
        "RECFLEET_KAFKA_TOPIC_PARTITIONS": "6",
        "RECFLEET_KAFKA_REPLICATION_FACTOR": "3",
        "RECFLEET_KAFKA_MIN_INSYNC_REPLICAS": "2",
    }


@pytest.fixture
def admin(kafka_bootstrap):
    client = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    yield client
    client.close()


def create_topics(env: dict[str, str]) -> dict:
    _load()
    result = CliRunner().invoke(app, ["create-topics"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def layout(admin: KafkaAdminClient, names: list[str]) -> dict[str, tuple[int, int]]:
    """Topic -> (partitions, replicas of each partition)."""
    found = {}
    for topic in admin.describe_topics(names):
        assert topic["error_code"] == 0, topic
        found[topic["name"]] = (len(topic["partitions"]), len(topic["partitions"][0]["replica_nodes"]))
    return found


def test_creates_every_fleet_topic_as_configured_and_a_second_run_changes_nothing(topic_env, admin):
    events, dlq, users = (topic_env[f"RECFLEET_{n}_TOPIC"] for n in ("EVENTS", "DEAD_LETTER", "USERS"))
    first = create_topics(topic_env)
    assert sorted(first["created"]) == sorted([events, dlq, users])
    assert first["found"] == []
    assert layout(admin, [events, dlq, users]) == {events: (6, 3), dlq: (1, 3), users: (6, 3)}
    assert first["topics"][users]["config"] == {"cleanup.policy": "compact", "min.insync.replicas": "2"}
    assert first["topics"][events]["config"] == {"min.insync.replicas": "2"}

    second = create_topics(topic_env)
    assert second["created"] == []
    assert sorted(second["found"]) == sorted([events, dlq, users])
    assert second["warnings"] == []
    assert layout(admin, [events, dlq, users]) == {events: (6, 3), dlq: (1, 3), users: (6, 3)}


def test_an_existing_topic_with_fewer_partitions_is_left_alone_and_reported(topic_env, admin):
    events = topic_env["RECFLEET_EVENTS_TOPIC"]
    admin.create_topics([NewTopic(events, num_partitions=2, replication_factor=1)])
    result = create_topics(topic_env)
    assert events in result["found"] and events not in result["created"]
    assert result["topics"][events]["partitions"] == 2
    assert any(events in warning and "2 partitions" in warning for warning in result["warnings"])
    assert layout(admin, [events])[events] == (2, 1)


def test_min_insync_replicas_above_the_replication_factor_is_refused(topic_env):
    _load()
    result = CliRunner().invoke(app, ["create-topics"], env={**topic_env, "RECFLEET_KAFKA_MIN_INSYNC_REPLICAS": "4"})
    assert result.exit_code != 0
    assert "min_insync_replicas" in str(result.exception) or "min_insync_replicas" in result.output
