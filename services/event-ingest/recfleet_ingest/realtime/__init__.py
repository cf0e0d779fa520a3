"""The real-time feature updater role: events topic -> online features in Redis.

Per batch: re-check the records (bad ones go to the dead-letter topic), drop events of
erased users, read the state the batch needs in one round trip, write the planned
updates in one pipeline (window counts as of the time of the write), and only then let
the consumer commit offsets.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import psycopg
import redis
import structlog
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from prometheus_client import Counter
from recfleet_runtime.metrics import Heartbeat

from ..adapters.consumer import BatchConsumer
from ..adapters.postgres import load_erased_users
from ..adapters.producer import EventProducer, ProduceFailed
from ..adapters.redis_features import OnlineFeatureWriter
from ..erased import ErasedUsers
from ..features import plan_updates
from ..settings import IngestSettings
from ..sink import DEAD_LETTERS, retrying, split_valid

log = structlog.get_logger("recfleet.ingest.realtime")

REALTIME_EVENTS = Counter(
    "recfleet_ingest_realtime_events_total",
    "Events read by the real-time feature updater, by outcome (applied, erased, dead_letter).",
    ["outcome"],
)


class RealtimeHandler:
    """Handles one polled batch for the updater; returns only when Redis has the updates."""

    source = "realtime"

    def __init__(
        self,
        writer: OnlineFeatureWriter,
        dead_letters: EventProducer,
        dead_letter_topic: str,
        erased: ErasedUsers,
        postgres_dsn: str,
        stop: threading.Event,
        heartbeat: Heartbeat | None = None,
    ):
        self.writer = writer
        self.dead_letters = dead_letters
        self.dead_letter_topic = dead_letter_topic
        self.erased = erased
        self.postgres_dsn = postgres_dsn
        self.stop = stop
        self.heartbeat = heartbeat

    def _refresh_erased(self) -> None:
        if not self.erased.stale():
            return
        try:
            self.erased.replace(load_erased_users(self.postgres_dsn, self.erased.hash_key))
        except psycopg.OperationalError as error:
            # Keep the last known list: features of a just-erased user are cleaned by
            # the erasure itself, and the sink (the system of record) checks in SQL.
            log.warning("erased users not refreshed", error=str(error))

    def __call__(self, records: list[ConsumerRecord]) -> None:
        events, dead = split_valid(records, datetime.now(UTC), self.source)
        if dead:
            for attempt in retrying(self.stop, ProduceFailed, heartbeat=self.heartbeat):
                with attempt:
                    self.dead_letters.send_and_wait(self.dead_letter_topic, dead)
            REALTIME_EVENTS.labels("dead_letter").inc(len(dead))
            DEAD_LETTERS.labels(self.source).inc(len(dead))
        self._refresh_erased()
        kept = [e for e in events if e.user_id not in self.erased]
        REALTIME_EVENTS.labels("erased").inc(len(events) - len(kept))
        if not kept:
            return
        for attempt in retrying(self.stop, redis.ConnectionError, redis.TimeoutError, heartbeat=self.heartbeat):
            with attempt:
                users, items = self.writer.read_state({e.user_id for e in kept}, {e.item_id for e in kept})
                now = int(datetime.now(UTC).timestamp())
                self.writer.apply(plan_updates(kept, users, items, self.writer.recent_cap, now))
        REALTIME_EVENTS.labels("applied").inc(len(kept))


def run(settings: IngestSettings, stop: threading.Event, heartbeat: Heartbeat | None = None) -> None:
    """Blocking: the updater's consume loop until `stop` is set; it beats `heartbeat`."""
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    dead_letters = EventProducer(settings.kafka_bootstrap_servers, settings.produce_timeout_seconds)
    for attempt in retrying(stop, KafkaError, heartbeat=heartbeat):
        with attempt:
            dead_letters.connect()
    handler = RealtimeHandler(
        OnlineFeatureWriter(client, settings.recent_items),
        dead_letters,
        settings.dead_letter_topic,
        ErasedUsers(settings.erased_refresh_seconds, settings.erasure_hash_key.get_secret_value()),
        settings.postgres_dsn,
        stop,
        heartbeat,
    )
    consumer = BatchConsumer(
        settings.kafka_bootstrap_servers,
        settings.events_topic,
        settings.realtime_group,
        handler,
        settings.sink_batch_size,
        settings.sink_max_wait_ms,
        stop,
        heartbeat,
    )
    try:
        consumer.run()
    finally:
        dead_letters.close()
        client.close()
