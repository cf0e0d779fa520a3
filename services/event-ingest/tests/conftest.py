"""Fixtures for event-ingest: settings on topics of their own, the API on port 0, and the
consumer roles running in threads of the test process."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import grpc
import pytest
from recfleet.ingest.v1 import ingest_pb2_grpc
from recfleet_ingest.app import IngestApi
from recfleet_ingest.settings import IngestSettings
from recfleet_store.kafka import ensure_topics, fleet_topics


def make_settings(pg: str, redis_url: str, bootstrap: str, **overrides) -> IngestSettings:
    tag = uuid.uuid4().hex[:8]
    values = {
        "postgres_dsn": pg,
        "redis_url": redis_url,
        "kafka_bootstrap_servers": bootstrap,
        "events_topic": f"test.events.{tag}",
        "dead_letter_topic": f"test.dlq.{tag}",
        "users_topic": f"test.users.{tag}",
        "sink_group": f"sink-{tag}",
        "realtime_group": f"realtime-{tag}",
        "grpc_port": 0,
        "metrics_port": 0,
        "drain_seconds": 0.0,
        "grace_seconds": 1.0,
        "produce_timeout_seconds": 5.0,
        "erased_refresh_seconds": 0.5,
        "sink_max_wait_ms": 100,
    }
    values.update(overrides)
    return IngestSettings(**values)


def create_topics(settings: IngestSettings, partitions: int = 4) -> None:
    """The test's topics, as `recfleet-jobs create-topics` makes them before a release:
    the services only wait for them."""
    ensure_topics(
        settings.kafka_bootstrap_servers,
        fleet_topics(settings.events_topic, settings.dead_letter_topic, settings.users_topic, partitions=partitions),
    )


@pytest.fixture
def settings(fresh_pg_dsn, redis_url, kafka_bootstrap) -> IngestSettings:
    """Settings on topics of their own, which exist."""
    values = make_settings(fresh_pg_dsn, redis_url, kafka_bootstrap)
    create_topics(values)
    return values


@pytest.fixture
async def api(settings):
    """The API served in-process on a free port, warmed up; yields (api, stub)."""
    ingest = IngestApi(settings, warm_up_seconds=30)
    await ingest.service.start("127.0.0.1:0")
    assert await ingest.warm_up()
    await ingest.service.health.set_serving(True)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ingest.service.port}")
    yield ingest, ingest_pb2_grpc.EventIngestStub(channel)
    await channel.close()
    await ingest.service.stop()
    await ingest.close()


class RoleThread:
    """A consumer role (`sink.run` or `realtime.run`) in a thread, stopped on exit."""

    def __init__(self, run: Callable, settings: IngestSettings):
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._main, args=(run, settings), daemon=True)
        self.thread.start()

    def _main(self, run, settings):
        try:
            run(settings, self.stop)
        except Exception as error:
            self.errors.append(error)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "consumer did not stop"
        assert not self.errors, self.errors


@pytest.fixture
def start_role():
    started: list[RoleThread] = []

    def start(run: Callable, settings: IngestSettings) -> RoleThread:
        role = RoleThread(run, settings)
        started.append(role)
        return role

    yield start
    for role in started:
        role.close()
