"""Liveness follows the consume loop, not the process: a loop stuck in its handler fails
/healthz/live once its heartbeat is older than the threshold, and passes again when it
moves on; readiness waits for the loop to poll."""

from __future__ import annotations

import threading
import time

import httpx
from kafka import KafkaProducer
from recfleet_ingest.adapters.consumer import BatchConsumer
from recfleet_runtime.metrics import Heartbeat, start_probe_server

from .helpers import wait_until

LIVENESS_SECONDS = 1.0


def status(port: int, path: str) -> int:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code


def test_a_loop_blocked_past_the_threshold_fails_liveness_and_recovers(settings):
    heartbeat = Heartbeat(LIVENESS_SECONDS)
    server = start_probe_server(0, heartbeat, addr="127.0.0.1")
    port = server.server_port
    entered, release, stop = threading.Event(), threading.Event(), threading.Event()

    def stuck_handler(records):
        entered.set()
        release.wait(60)

    consumer = BatchConsumer(
        settings.kafka_bootstrap_servers,
        settings.events_topic,
        settings.sink_group,
        stuck_handler,
        100,
        100,
        stop,
        heartbeat=heartbeat,
    )
    loop = threading.Thread(target=consumer.run, daemon=True)
    try:
        assert status(port, "/healthz/ready") == 503
        loop.start()
        assert wait_until(lambda: status(port, "/healthz/ready") == 200, 30.0)
        # An idle loop (polls that return nothing) keeps beating past the threshold.
        time.sleep(LIVENESS_SECONDS * 2)
        assert status(port, "/healthz/live") == 200

        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
        producer.send(settings.events_topic, key=b"u1", value=b"{}")
        producer.flush()
        producer.close()
        assert entered.wait(30)
        assert wait_until(lambda: status(port, "/healthz/live") == 503, 10.0)
        reply = httpx.get(f"http://127.0.0.1:{port}/healthz/live", timeout=2)
        assert reply.json()["heartbeat_age_seconds"] > LIVENESS_SECONDS
        assert status(port, "/healthz/ready") == 503

        release.set()
        assert wait_until(lambda: status(port, "/healthz/live") == 200, 10.0)
        assert status(port, "/healthz/ready") == 200
        # Metrics are still served beside the probes.
        assert "recfleet_ingest_consumer_lag" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    finally:
        release.set()
        stop.set()
        loop.join(timeout=30)
        server.shutdown()
        server.server_close()
    assert not loop.is_alive()
