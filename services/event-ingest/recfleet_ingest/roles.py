"""Process bootstrap shared by the consumer roles (logs, metrics, topics, SIGTERM)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import structlog
from recfleet_runtime.heap import settle_heap
from recfleet_runtime.logging import configure_logging
from recfleet_runtime.metrics import start_metrics_server
from recfleet_store.kafka import ensure_topics, fleet_topics

from .settings import IngestSettings

log = structlog.get_logger("recfleet.ingest")


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
