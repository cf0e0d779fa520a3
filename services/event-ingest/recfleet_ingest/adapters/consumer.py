"""A consumer-group loop shared by the sink and the real-time updater: poll a batch,
hand it to the role's handler, commit offsets only after the handler returned.

The handler either finishes the batch (its writes are durable) or raises; on a raise the
offsets stay uncommitted, so a restart re-reads the batch and the handler's idempotency
absorbs the repeat.

Each process publishes the lag of the partitions it owns, and only those: a partition's
gauge is removed when the partition is revoked (rebalance, close), so the lag summed over
pods counts every partition once and the HPA and alerts see the group's real lag.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, IllegalStateError
from kafka.structs import OffsetAndMetadata
from prometheus_client import Gauge
from recfleet_runtime.metrics import Heartbeat

log = structlog.get_logger("recfleet.ingest.consumer")

CONSUMER_LAG = Gauge(
    "recfleet_ingest_consumer_lag",
    "Records on the events topic not yet processed by this consumer, by group and partition.",
    ["group", "partition"],
)

Handler = Callable[[list[ConsumerRecord]], None]


def consumer_config(bootstrap: str, group: str, batch_size: int) -> dict[str, Any]:
    return {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        # Short sessions: the group rebalances within seconds when a consumer dies.
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "max_poll_records": batch_size,
        "max_poll_interval_ms": 300_000,
    }


class PartitionLag:
    """The lag gauge's children this consumer publishes, one per owned partition."""

    def __init__(self, group: str, gauge: Gauge = CONSUMER_LAG):
        self.group = group
        self.gauge = gauge
        self._lock = threading.Lock()
        self._published: set[int] = set()

    def set(self, partition: int, lag: int) -> None:
        with self._lock:
            self.gauge.labels(self.group, str(partition)).set(lag)
            self._published.add(partition)

    def remove(self, partitions: AbstractSet[int]) -> None:
        with self._lock:
            for partition in partitions & self._published:
                self.gauge.remove(self.group, str(partition))
            self._published -= partitions

    def keep_only(self, partitions: AbstractSet[int]) -> None:
        """Remove every child but those of `partitions` (a revoke that raced a `set`)."""
        with self._lock:
            stale = self._published - partitions
        self.remove(stale)


class RevokedLagCleanup(ConsumerRebalanceListener):
    """Drops the lag of partitions this consumer gives up; their new owner publishes it."""

    def __init__(self, lag: PartitionLag):
        self.lag = lag

    def on_partitions_revoked(self, revoked):
        self.lag.remove({tp.partition for tp in revoked})
        if revoked:
            log.info("partitions revoked", group=self.lag.group, partitions=sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned):
        log.info("partitions assigned", group=self.lag.group, partitions=sorted(tp.partition for tp in assigned))


class BatchConsumer:
    """Runs `handler` over batches of one topic until `stop` is set; beats `heartbeat`
    every time round the loop (an idle poll included)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        handler: Handler,
        batch_size: int,
        max_wait_ms: int,
        stop: threading.Event | None = None,
        heartbeat: Heartbeat | None = None,
    ):
        self.topic = topic
        self.group = group
        self.handler = handler
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.stop = stop or threading.Event()
        self.heartbeat = heartbeat or Heartbeat(float("inf"))
        self.lag = PartitionLag(group)
        self._config = consumer_config(bootstrap, group, batch_size)
        self.consumer: KafkaConsumer | None = None

    def _poll_batch(self, consumer: KafkaConsumer) -> list[ConsumerRecord]:
        """Gather up to batch_size records, waiting at most max_wait_ms once the first arrived."""
        records: list[ConsumerRecord] = []
        deadline = None
        while len(records) < self.batch_size and not self.stop.is_set():
            wait_ms = self.max_wait_ms if deadline is None else int(max(0.0, deadline - time.monotonic()) * 1000)
            polled = consumer.poll(timeout_ms=wait_ms, max_records=self.batch_size - len(records))
            for partition_records in polled.values():
                records.extend(partition_records)
            if deadline is None:
                if not records:
                    return records
                deadline = time.monotonic() + self.max_wait_ms / 1000
            elif time.monotonic() >= deadline:
                break
        return records

    def _record_lag(self, consumer: KafkaConsumer) -> None:
        assigned = consumer.assignment()
        for tp in assigned:
            highwater = consumer.highwater(tp)
            try:
                position = consumer.position(tp, timeout_ms=1000) if highwater is not None else None
            except IllegalStateError:
                continue  # revoked since assignment() was read
            if highwater is not None and position is not None:
                self.lag.set(tp.partition, max(0, highwater - position))
        self.lag.keep_only({tp.partition for tp in assigned})

    @staticmethod
    def _next_offsets(records: list[ConsumerRecord]) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets to commit once `records` are handled: one past the last per partition."""
        last: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            last[tp] = max(record.offset, last.get(tp, -1))
        return {tp: OffsetAndMetadata(offset + 1, "", -1) for tp, offset in last.items()}

    def _commit(self, consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            consumer.commit(offsets)
        except CommitFailedError:
            # The group rebalanced while the batch was written: its new owner re-reads it
            # and the handler's idempotency absorbs the repeat.
            log.warning("commit failed after a rebalance", group=self.group)

    def run(self) -> None:
        """Blocking: consume until stop is set; the batch in hand is finished and committed.

        The handler of one batch runs in a worker thread while the next batch is fetched
        and decoded, so the database's time overlaps with ours. Offsets of a batch are
        committed only after its handler returned, and batches are handled in order.
        """
        consumer = self.consumer = KafkaConsumer(**self._config)
        consumer.subscribe([self.topic], listener=RevokedLagCleanup(self.lag))
        log.info("consumer started", topic=self.topic, group=self.group)
        pending: tuple[Future[None], dict[TopicPartition, OffsetAndMetadata]] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.group}-handler") as worker:
            try:
                while not self.stop.is_set():
                    self.heartbeat.beat()
                    records = self._poll_batch(consumer)
                    self.heartbeat.set_ready(True)
                    if pending is not None:
                        pending[0].result()
                        self._commit(consumer, pending[1])
                        pending = None
                    if records:
                        pending = (worker.submit(self.handler, records), self._next_offsets(records))
                    self._record_lag(consumer)
                if pending is not None:
                    pending[0].result()
                    self._commit(consumer, pending[1])
            finally:
                self.heartbeat.set_ready(False)
                consumer.close(autocommit=False)
                self.lag.keep_only(set())
                log.info("consumer stopped", group=self.group)
