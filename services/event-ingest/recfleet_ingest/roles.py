"""Process bootstrap shared by the consumer roles (logs, metrics, topics, SIGTERM), and the
heap settling every event-ingest process does once started."""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Callable

import structlog
from recfleet_runtime.logging import configure_logging
from recfleet_runtime.metrics import start_metrics_server
from recfleet_store.kafka import ensure_topics, fleet_topics

from .settings import IngestSettings

log = structlog.get_logger("recfleet.ingest")


# Container allocations between young-generation collections (CPython's default is 700).
YOUNG_GC_THRESHOLD = 50_000


def settle_heap() -> None:
    """Once start-up is done: keep what it allocated (modules, classes, clients) out of
    every later collection, and collect young objects less often.

    Each batch allocates thousands of short-lived objects (and kafka-python a few per
    record that live until the broker answers); with the defaults the collector rescanned
    the whole start-up heap every second or so and took 10-20% of these processes' CPU
    under load. Plain reference counting still frees almost everything at once.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])


def ensure_fleet_topics(settings: IngestSettings, timeout: float = 30.0) -> None:
    ensure_topics(
        settings.kafka_bootstrap_servers,
        fleet_topics(settings.events_topic, settings.dead_letter_topic, settings.users_topic),
        timeout=timeout,
    )


def run_role(name: str, run: Callable[[IngestSettings, threading.Event], None]) -> None:
    """Run a consumer role until SIGTERM/SIGINT; the batch in hand is finished and committed."""
    settings = IngestSettings()
    configure_logging(name, settings.log_level, settings.track)
    start_metrics_server(settings.metrics_port)
    stop = threading.Event()

    def request_stop(signum, _frame):
        log.info("stop requested", signal=signal.Signals(signum).name, role=name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    ensure_fleet_topics(settings)
    settle_heap()
    run(settings, stop)
