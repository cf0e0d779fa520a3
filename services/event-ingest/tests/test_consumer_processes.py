"""The sink as the process a pod runs, seen through its metrics port: the lag gauge
follows the partitions the process owns across a rebalance, and a consumer waits for its
topics instead of creating them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from recfleet_ingest.roles import wait_for_fleet_topics
from recfleet_ingest.validation import validate_event
from recfleet_runtime.ports import free_port
from recfleet_store.kafka import TopicsMissing

from .conftest import create_topics, make_settings
from .helpers import wait_until

PARTITIONS = 4


class ConsumerProcess:
    """`python -m recfleet_ingest.<role>` with its metrics and probes on a port of its own."""

    def __init__(self, settings, log_path, role: str = "sink"):
        self.port = free_port()
        self.log_path = log_path
        env = {
            **os.environ,
            "RECFLEET_POSTGRES_DSN": settings.postgres_dsn,
            "RECFLEET_REDIS_URL": settings.redis_url,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "RECFLEET_EVENTS_TOPIC": settings.events_topic,
            "RECFLEET_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
            "RECFLEET_USERS_TOPIC": settings.users_topic,
            "RECFLEET_INGEST_SINK_GROUP": settings.sink_group,
            "RECFLEET_INGEST_REALTIME_GROUP": settings.realtime_group,
            "RECFLEET_INGEST_METRICS_PORT": str(self.port),
            "RECFLEET_INGEST_SINK_MAX_WAIT_MS": "100",
        }
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"recfleet_ingest.{role}"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=2)
        except httpx.TransportError:
            return None

    def lag_partitions(self, group: str) -> set[int]:
        """The partitions this process publishes a lag for."""
        reply = self.get("/metrics")
        if reply is None:
            return set()
        return {
            int(sample.labels["partition"])
            for family in text_string_to_metric_families(reply.text)
            if family.name == "recfleet_ingest_consumer_lag"
            for sample in family.samples
            if sample.labels["group"] == group
        }

    def logs(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def processes():
    started: list[ConsumerProcess] = []
    yield started
    for process in started:
        process.stop()


def fill_every_partition(settings, per_partition: int = 5) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    try:
        for partition in range(PARTITIONS):
            for _ in range(per_partition):
                record = validate_event(
                    {"user_id": f"u{partition}", "item_id": "i1", "type": "view"}, datetime.now(UTC)
                )
                producer.send(
                    settings.events_topic, key=f"u{partition}".encode(), value=record.to_json(), partition=partition
                )
        producer.flush()
    finally:
        producer.close()


@pytest.mark.slow
def test_lag_gauges_follow_the_partitions_across_a_rebalance(settings, processes, tmp_path):
    fill_every_partition(settings)
    group = settings.sink_group
    first = ConsumerProcess(settings, tmp_path / "first.log")
    processes.append(first)
    everything = set(range(PARTITIONS))
    assert wait_until(lambda: first.lag_partitions(group) == everything, 60.0, 0.2), first.logs()

    second = ConsumerProcess(settings, tmp_path / "second.log")
    processes.append(second)

    def split() -> bool:
        mine, theirs = first.lag_partitions(group), second.lag_partitions(group)
        return bool(mine) and bool(theirs) and mine | theirs == everything and not mine & theirs

    assert wait_until(split, 60.0, 0.2), (first.lag_partitions(group), second.lag_partitions(group))
    # Each process answers for its own partitions only: summed over pods, the lag the
    # HPA and the alert see counts every partition once.
    assert len(first.lag_partitions(group)) == len(second.lag_partitions(group)) == PARTITIONS // 2

    # The second one leaves: the first takes every partition back.
    second.stop()
    assert wait_until(lambda: first.lag_partitions(group) == everything, 60.0, 0.2)


@pytest.mark.slow
@pytest.mark.parametrize("role", ["sink", "realtime"])
def test_a_consumer_waits_for_its_topics_and_creates_none(
    pg_dsn, redis_url, kafka_bootstrap, processes, tmp_path, role
):
    settings = make_settings(pg_dsn, redis_url, kafka_bootstrap)
    consumer = ConsumerProcess(settings, tmp_path / f"{role}.log", role)
    processes.append(consumer)
    assert wait_until(lambda: "waiting for topics" in consumer.logs(), 30.0, 0.2), consumer.logs()
    assert consumer.get("/healthz/live").status_code == 200
    assert consumer.get("/healthz/ready").status_code == 503
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert settings.events_topic not in admin.list_topics()
    finally:
        admin.close()
    assert consumer.process.poll() is None

    create_topics(settings)
    ready = wait_until(lambda: (r := consumer.get("/healthz/ready")) is not None and r.status_code == 200, 60.0, 0.2)
    assert ready, consumer.logs()
    assert settings.events_topic in consumer.logs()
    consumer.stop()
    assert consumer.process.returncode == 0


def test_the_topics_wait_names_what_creates_them(pg_dsn, redis_url, kafka_bootstrap):
    """Bounded: a pod whose topics never appear stops with a reason (its restarts show)."""
    settings = make_settings(pg_dsn, redis_url, kafka_bootstrap)
    with pytest.raises(TopicsMissing) as raised:
        wait_for_fleet_topics(settings, timeout=1.0)
    assert settings.events_topic in str(raised.value)
    assert "recfleet-jobs create-topics" in str(raised.value)
