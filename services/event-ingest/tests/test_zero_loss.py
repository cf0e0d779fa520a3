"""Issue 3's acceptance: 10,000 events posted in batches while the sink is killed
(SIGKILL) and restarted twice and Postgres refuses the sink for a few seconds; afterwards
every accepted event is in Postgres exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
from recfleet.ingest.v1 import ingest_pb2
from recfleet_ingest.adapters.postgres import SINK_APPLICATION_NAME

from .helpers import count_rows, event, wait_until

BATCHES = 40
BATCH_SIZE = 250


class SinkProcess:
    """`python -m recfleet_ingest.sink` as a child process configured for the test."""

    def __init__(self, settings, log_dir):
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            "RECFLEET_POSTGRES_DSN": settings.postgres_dsn,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "RECFLEET_EVENTS_TOPIC": settings.events_topic,
            "RECFLEET_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
            "RECFLEET_USERS_TOPIC": settings.users_topic,
            "RECFLEET_INGEST_SINK_GROUP": settings.sink_group,
            "RECFLEET_INGEST_METRICS_PORT": "0",
            "RECFLEET_INGEST_SINK_BATCH_SIZE": "1000",
            "RECFLEET_INGEST_SINK_MAX_WAIT_MS": "100",
            "RECFLEET_INGEST_LOG_LEVEL": "WARNING",
        }
        self.process: subprocess.Popen | None = None
        self.kills = 0

    def start(self) -> None:
        with open(self.log_dir / f"sink-{self.kills}.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "recfleet_ingest.sink"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def logs(self) -> str:
        return "".join(path.read_text() for path in sorted(self.log_dir.glob("sink-*.log")))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.kills += 1

    def stop(self) -> int:
        """SIGTERM: the sink finishes its batch, commits and exits cleanly."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def postgres_outage(dsn: str, seconds: float) -> None:
    """Refuse new connections to the test database and cut the sink's open ones, for
    `seconds`; the shared server itself keeps running."""
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    admin = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND application_name = %s",
                    (name, SINK_APPLICATION_NAME),
                )
                time.sleep(0.2)
        finally:
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')


def stored(dsn: str) -> int:
    return count_rows(dsn, "SELECT count(*) FROM events")


def progressed(dsn: str, beyond: int, timeout: float = 30.0) -> bool:
    return bool(wait_until(lambda: stored(dsn) > beyond, timeout, 0.1))


def chaos(sink: SinkProcess, dsn: str) -> None:
    """Kill the sink once it writes; cut Postgres once the new one writes; kill again."""
    assert progressed(dsn, 0)
    sink.kill()
    sink.start()
    assert progressed(dsn, stored(dsn))
    postgres_outage(dsn, 3.0)
    assert progressed(dsn, stored(dsn))
    sink.kill()
    sink.start()


@pytest.mark.slow
async def test_every_accepted_event_lands_once_through_sink_kills_and_a_postgres_outage(api, settings, tmp_path):
    _, stub = api
    dsn = settings.postgres_dsn
    sink = SinkProcess(settings, tmp_path)
    sink.start()
    accepted: list[str] = []
    turmoil = asyncio.create_task(asyncio.to_thread(chaos, sink, dsn))
    try:
        for number in range(BATCHES):
            batch = [event(user=f"u{(number * BATCH_SIZE + i) % 300}", item=f"i{i % 97}") for i in range(BATCH_SIZE)]
            reply = await stub.Ingest(ingest_pb2.IngestRequest(events=batch), timeout=30)
            accepted.extend(reply.event_ids)
            if not turmoil.done():
                # Spread the posting over the kills and the outage.
                await asyncio.sleep(0.5)
        await turmoil

        assert len(accepted) == BATCHES * BATCH_SIZE
        await asyncio.to_thread(wait_until, lambda: stored(dsn) >= len(accepted), 40.0, 0.5)
        assert sink.stop() == 0
        with psycopg.connect(dsn) as conn:
            ids = [str(row[0]) for row in conn.execute("SELECT event_id FROM events")]
        assert len(ids) == len(accepted)
        assert set(ids) == set(accepted)
        assert count_rows(dsn, "SELECT count(*) FROM event_ids") == len(accepted)
        assert sink.kills == 2
        # The outage was felt: the sink retried a batch instead of losing or skipping it.
        assert "retrying batch" in sink.logs()
    finally:
        turmoil.cancel()
        if sink.process.poll() is None:
            sink.process.kill()
