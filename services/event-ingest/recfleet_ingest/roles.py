"""Process bootstrap shared by the consumer roles (logs, metrics and probes, topics, SIGTERM)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

import structlog
from kafka.errors import KafkaError
from recfleet_runtime.heap import settle_heap
from recfleet_runtime.logging import configure_logging
from recfleet_runtime.metrics import Heartbeat, start_metrics_server
from recfleet_store.kafka import TopicsMissing, wait_for_topics

from .settings import IngestSettings

log = structlog.get_logger("recfleet.ingest")

# How long a process waits for `recfleet-jobs create-topics` before it gives up (and the
# kubelet's restarts with backoff make the missing topics visible).
TOPICS_WAIT_SECONDS = 300.0

Role = Callable[[IngestSettings, threading.Event, Heartbeat], None]


def fleet_topic_names(settings: IngestSettings) -> list[str]:
    return [settings.events_topic, settings.dead_letter_topic, settings.users_topic]


def wait_for_fleet_topics(
    settings: IngestSettings,
    timeout: float = TOPICS_WAIT_SECONDS,
    stop: threading.Event | None = None,
    heartbeat: Heartbeat | None = None,
) -> None:
    """Block until the fleet's topics exist (they are made by `recfleet-jobs create-topics`,
    never by a service); raises TopicsMissing after `timeout`."""
    wait_for_topics(
        settings.kafka_bootstrap_servers,
        fleet_topic_names(settings),
        timeout,
        stop,
        heartbeat.beat if heartbeat is not None else None,
    )


def run_role(name: str, run: Role) -> None:
    """Run a consumer role until SIGTERM/SIGINT; the batch in hand is finished and committed.

    The metrics port also answers /healthz/live (the poll loop's heartbeat is younger than
    `liveness_seconds`) and /healthz/ready (the loop polls).
    """
    settings = IngestSettings()
    configure_logging(name, settings.log_level, settings.track)
    heartbeat = Heartbeat(settings.liveness_seconds)
    start_metrics_server(settings.metrics_port, heartbeat)
    stop = threading.Event()

    def request_stop(signum, _frame):
        log.info("stop requested", signal=signal.Signals(signum).name, role=name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        wait_for_fleet_topics(settings, stop=stop, heartbeat=heartbeat)
    except (TopicsMissing, KafkaError, OSError) as error:
        if stop.is_set():
            return
        log.error("topics never appeared", role=name, reason=str(error), waited_seconds=TOPICS_WAIT_SECONDS)
        sys.exit(1)
    settle_heap()
    run(settings, stop, heartbeat)
