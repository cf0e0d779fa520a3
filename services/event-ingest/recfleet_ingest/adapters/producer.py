"""The Kafka producer behind `Ingest` and `EraseUser`: idempotent, acks=all, and an answer
only once the broker acknowledged every record.

kafka-python blocks, so sends and waits run in a worker thread; one producer is shared by
every call (it is thread-safe and batches records of concurrent calls together).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Sequence

import structlog
from kafka import KafkaProducer
from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from kafka.partitioner.default import DefaultPartitioner, murmur2

log = structlog.get_logger("recfleet.ingest.producer")

# After a failed attempt to connect, sends fail at once for this long before the next attempt.
RECONNECT_PAUSE_SECONDS = 1.0
# Distinct keys whose hash is remembered (a few MiB at most).
KEY_HASH_CACHE_SIZE = 65_536


class ProduceFailed(RuntimeError):
    """The broker did not acknowledge every record in time: nothing may be reported accepted."""


class KeyHashPartitioner(DefaultPartitioner):
    """Kafka's default keyed partitioning (murmur2 of the key, as the Java client does, so
    a user's events share a partition whichever client wrote them), remembering the hash
    of recent keys: kafka-python hashes in pure Python, a few microseconds a record, and
    the same users send event after event."""

    def __init__(self, cache_size: int = KEY_HASH_CACHE_SIZE):
        super().__init__()
        self._hash = functools.lru_cache(maxsize=cache_size)(murmur2)

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        if serialized_key is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        partitions = cluster.partitions_for_topic(topic)
        if partitions is None:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        ordered = sorted(partitions)
        return ordered[(self._hash(serialized_key) & 0x7FFFFFFF) % len(ordered)]


def producer_config(bootstrap: str, timeout_seconds: float) -> dict:
    timeout_ms = int(timeout_seconds * 1000)
    return {
        "bootstrap_servers": bootstrap,
        "bootstrap_timeout_ms": max(1000, timeout_ms),
        "acks": "all",
        "enable_idempotence": True,
        "retries": 5,
        "retry_backoff_ms": 100,
        "request_timeout_ms": max(1000, timeout_ms),
        # A send never blocks longer than the call may wait (metadata of a dead broker).
        "max_block_ms": timeout_ms,
        "delivery_timeout_ms": max(timeout_ms + 1000, 2000),
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        # gzip costs less CPU than no compression: kafka-python computes each batch's
        # CRC-32C in pure Python over the compressed bytes, about a sixth of the raw
        # JSON here (lz4 would need the lz4 package, which is not installed).
        "compression_type": "gzip",
        "max_in_flight_requests_per_connection": 5,
        "partitioner": KeyHashPartitioner(),
    }


class EventProducer:
    """Sends keyed records and waits for the broker's acknowledgement of all of them.

    A send that fails for any reason but a timeout replaces the producer: a broker that
    restarted without its state (it no longer knows the producer's id) leaves kafka-python's
    idempotent producer in a fatal error that no later send gets out of. The records of a
    failed send were never reported accepted, so the caller's retry loses nothing; the sink
    drops a record that reached the broker twice by its event id.
    """

    def __init__(self, bootstrap: str, timeout_seconds: float):
        self.bootstrap = bootstrap
        self.timeout_seconds = timeout_seconds
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._retry_at = 0.0

    @property
    def connected(self) -> bool:
        return self._producer is not None

    def connect(self) -> KafkaProducer:
        """The producer, created first when there is none (it fetches broker metadata);
        raises when no broker answers."""
        with self._lock:
            if self._producer is None:
                if time.monotonic() < self._retry_at:
                    raise KafkaConnectionError("the last connection attempt failed moments ago")
                try:
                    self._producer = KafkaProducer(**producer_config(self.bootstrap, self.timeout_seconds))
                except KafkaError:
                    # Sends while the broker is away fail at once rather than queue on this lock.
                    self._retry_at = time.monotonic() + RECONNECT_PAUSE_SECONDS
                    raise
                log.info("producer connected", bootstrap=self.bootstrap)
            return self._producer

    def _replace(self, failed: KafkaProducer) -> None:
        with self._lock:
            current = self._producer is failed  # else another send replaced it already
            if current:
                self._producer = None
        if not current:
            return
        log.warning("producer replaced after a failed send")
        failed.close(timeout=0)

    def send_and_wait(self, topic: str, records: Sequence[tuple[str, bytes | None]]) -> None:
        """Blocking: produce (key, value) records and wait until every one is acknowledged."""
        try:
            producer = self._producer or self.connect()
        except KafkaError as error:
            raise ProduceFailed(f"not connected to the broker: {type(error).__name__}: {error}") from error
        deadline = time.monotonic() + self.timeout_seconds
        try:
            futures = [producer.send(topic, key=key.encode(), value=value) for key, value in records]
            for future in futures:
                # Records of one broker batch complete together: only the first of them waits.
                if not future.is_done:
                    future.get(timeout=max(0.0, deadline - time.monotonic()))
                if future.failed():
                    raise future.exception
        except KafkaTimeoutError as error:
            raise ProduceFailed(f"broker did not acknowledge in time: {error}") from error
        except KafkaError as error:
            self._replace(producer)
            raise ProduceFailed(f"broker did not acknowledge: {type(error).__name__}: {error}") from error

    async def send(self, topic: str, records: Sequence[tuple[str, bytes | None]]) -> None:
        await asyncio.to_thread(self.send_and_wait, topic, records)

    def close(self) -> None:
        """Flush what is pending, then close."""
        if self._producer is not None:
            try:
                self._producer.flush(timeout=self.timeout_seconds)
            except KafkaError:
                log.warning("flush on close timed out")
            self._producer.close(timeout=self.timeout_seconds)
            self._producer = None
