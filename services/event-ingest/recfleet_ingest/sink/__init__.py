"""The Postgres sink role: events topic -> `events`, exactly once by event id.

Per batch: re-check every record (bad ones go to the dead-letter topic with the reason),
write the good ones in one transaction, and only then let the consumer commit offsets.
While Postgres is down the batch is retried with backoff and nothing is committed.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import orjson
import psycopg
import structlog
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from prometheus_client import Counter, Histogram
from recfleet_runtime.metrics import Heartbeat
from tenacity import Retrying, retry_if_exception_type, wait_exponential

from ..adapters.consumer import BatchConsumer
from ..adapters.postgres import EventSink, SinkOutcome
from ..adapters.producer import EventProducer, ProduceFailed
from ..settings import IngestSettings
from ..validation import Event, InvalidEvent, parse_record

log = structlog.get_logger("recfleet.ingest.sink")

SINK_EVENTS = Counter(
    "recfleet_ingest_sink_events_total",
    "Events read by the Postgres sink, by outcome (stored, duplicate, erased, dead_letter).",
    ["outcome"],
)
SINK_BATCH_SECONDS = Histogram(
    "recfleet_ingest_sink_batch_seconds",
    "Time to write one batch to Postgres, retries included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
DEAD_LETTERS = Counter(
    "recfleet_ingest_dead_letters_total",
    "Records sent to the dead-letter topic, by consumer.",
    ["source"],
)


def split_valid(
    records: list[ConsumerRecord], now: datetime, source: str
) -> tuple[list[Event], list[tuple[str, bytes]]]:
    """Valid events, and (key, dead-letter record) for every record that fails the checks."""
    events: list[Event] = []
    dead: list[tuple[str, bytes]] = []
    for record in records:
        try:
            events.append(parse_record(record.value, now))
        except InvalidEvent as error:
            raw = record.value.decode("utf-8", "replace") if record.value is not None else None
            key = record.key.decode("utf-8", "replace") if record.key else ""
            dead.append((key, orjson.dumps({"event": raw, "reason": str(error), "source": source})))
    return events, dead


def retrying(stop: threading.Event, *errors: type[BaseException], heartbeat: Heartbeat | None = None) -> Retrying:
    """Retry `errors` with capped exponential backoff until they pass or `stop` is set.

    Each retry beats `heartbeat`: a consumer waiting out a Postgres or Redis outage is not
    stuck, and restarting it would not bring the dependency back.
    """

    def before_sleep(state) -> None:
        log.warning("retrying batch", attempt=state.attempt_number, error=str(state.outcome.exception()))
        if heartbeat is not None:
            heartbeat.beat()

    return Retrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        stop=lambda _: stop.is_set(),
        reraise=True,
        before_sleep=before_sleep,
    )


class SinkHandler:
    """Handles one polled batch for the sink; returns only when the batch is durable."""

    source = "sink"

    def __init__(
        self,
        sink: EventSink,
        dead_letters: EventProducer,
        dead_letter_topic: str,
        stop: threading.Event,
        heartbeat: Heartbeat | None = None,
    ):
        self.sink = sink
        self.dead_letters = dead_letters
        self.dead_letter_topic = dead_letter_topic
        self.stop = stop
        self.heartbeat = heartbeat

    def _write(self, events: list[Event]) -> SinkOutcome:
        for attempt in retrying(self.stop, psycopg.OperationalError, heartbeat=self.heartbeat):
            with attempt:
                return self.sink.write(events)
        raise AssertionError("unreachable: retrying re-raises")

    def _write_one_by_one(self, events: list[Event]) -> tuple[SinkOutcome, list[tuple[str, bytes]]]:
        """Postgres refused the batch's data (a value it cannot hold, a constraint added
        since the event was accepted): store what it accepts, dead-letter the rest."""
        stored = duplicate = erased = 0
        dead: list[tuple[str, bytes]] = []
        for event in events:
            try:
                outcome = self._write([event])
            except (psycopg.DataError, psycopg.IntegrityError) as error:
                reason = f"postgres: {str(error).splitlines()[0]}"
                dead.append(
                    (
                        event.user_id,
                        orjson.dumps({"event": event.to_json().decode(), "reason": reason, "source": self.source}),
                    )
                )
                continue
            stored, duplicate, erased = stored + outcome.stored, duplicate + outcome.duplicate, erased + outcome.erased
        return SinkOutcome(stored, duplicate, erased), dead

    def __call__(self, records: list[ConsumerRecord]) -> None:
        started = time.perf_counter()
        events, dead = split_valid(records, datetime.now(UTC), self.source)
        try:
            outcome = self._write(events)
        except (psycopg.DataError, psycopg.IntegrityError):
            outcome, refused = self._write_one_by_one(events)
            dead.extend(refused)
        if dead:
            for attempt in retrying(self.stop, ProduceFailed, heartbeat=self.heartbeat):
                with attempt:
                    self.dead_letters.send_and_wait(self.dead_letter_topic, dead)
            SINK_EVENTS.labels("dead_letter").inc(len(dead))
            DEAD_LETTERS.labels(self.source).inc(len(dead))
            log.warning("records sent to the dead-letter topic", count=len(dead))
        SINK_EVENTS.labels("stored").inc(outcome.stored)
        SINK_EVENTS.labels("duplicate").inc(outcome.duplicate)
        SINK_EVENTS.labels("erased").inc(outcome.erased)
        SINK_BATCH_SECONDS.observe(time.perf_counter() - started)


def run(settings: IngestSettings, stop: threading.Event, heartbeat: Heartbeat | None = None) -> None:
    """Blocking: the sink's consume loop until `stop` is set; it beats `heartbeat`."""
    sink = EventSink(settings.postgres_dsn, settings.erasure_hash_key.get_secret_value())
    dead_letters = EventProducer(settings.kafka_bootstrap_servers, settings.produce_timeout_seconds)
    for attempt in retrying(stop, KafkaError, heartbeat=heartbeat):
        with attempt:
            dead_letters.connect()
    handler = SinkHandler(sink, dead_letters, settings.dead_letter_topic, stop, heartbeat)
    consumer = BatchConsumer(
        settings.kafka_bootstrap_servers,
        settings.events_topic,
        settings.sink_group,
        handler,
        settings.sink_batch_size,
        settings.sink_max_wait_ms,
        stop,
        heartbeat,
    )
    try:
        consumer.run()
    finally:
        sink.close()
        dead_letters.close()
