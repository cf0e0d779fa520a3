"""The producer puts each user's events on the partition Kafka's default partitioner picks
for that key, so their order holds whichever client wrote them."""

from __future__ import annotations

import uuid

from kafka import KafkaProducer
from recfleet_ingest.adapters.producer import producer_config
from recfleet_store.kafka import ensure_topics


def partitions_of(producer: KafkaProducer, topic: str, keys: list[bytes]) -> list[int]:
    futures = [producer.send(topic, key=key, value=b"{}") for key in keys]
    return [future.get(timeout=10).partition for future in futures]


def test_keys_land_where_the_default_partitioner_puts_them(kafka_bootstrap):
    topic = f"test.partitions.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, {topic: {"partitions": 4}})
    keys = [f"user-{n}".encode() for n in range(200)] * 2
    ours = KafkaProducer(**producer_config(kafka_bootstrap, 5.0))
    reference = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        placed = partitions_of(ours, topic, keys)
        assert placed == partitions_of(reference, topic, keys)
        assert len(set(placed)) == 4
    finally:
        ours.close(timeout=5)
        reference.close(timeout=5)
