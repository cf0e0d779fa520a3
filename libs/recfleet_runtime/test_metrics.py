"""The metrics port: /metrics exactly as prometheus_client renders it, and the liveness and
readiness probes of a loop's heartbeat."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from recfleet_runtime.metrics import Heartbeat, start_probe_server


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def serve():
    servers = []

    def start(*args, **kwargs):
        server = start_probe_server(0, *args, addr="127.0.0.1", **kwargs)
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_metrics_are_what_prometheus_client_serves_itself(serve):
    registry = CollectorRegistry()
    Counter("recfleet_test_things_total", "Things.", ["kind"], registry=registry).labels("a").inc(3)
    ours = serve(registry=registry)
    theirs, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        for headers in ({}, {"Accept": "application/openmetrics-text; version=1.0.0"}, {"Accept-Encoding": "gzip"}):
            mine = httpx.get(f"{ours}/metrics", headers=headers)
            reference = httpx.get(f"http://127.0.0.1:{theirs.server_port}/metrics", headers=headers)
            assert mine.status_code == reference.status_code == 200
            assert mine.headers["content-type"] == reference.headers["content-type"]
            assert mine.content == reference.content
            assert b'recfleet_test_things_total{kind="a"} 3.0' in mine.content
    finally:
        theirs.shutdown()
        theirs.server_close()


def test_without_a_heartbeat_both_probes_pass(serve):
    url = serve()
    assert httpx.get(f"{url}/healthz/live").status_code == 200
    assert httpx.get(f"{url}/healthz/ready").status_code == 200


def test_liveness_follows_the_age_of_the_last_beat_and_readiness_the_loop(serve):
    clock = Clock()
    heartbeat = Heartbeat(60.0, clock=clock)
    url = serve(heartbeat)
    # Starting up: alive (the start counts as a beat), not ready until the loop polls.
    assert httpx.get(f"{url}/healthz/live").status_code == 200
    assert httpx.get(f"{url}/healthz/ready").status_code == 503

    heartbeat.beat()
    heartbeat.set_ready(True)
    assert httpx.get(f"{url}/healthz/ready").status_code == 200
    clock.now += 59.0
    assert httpx.get(f"{url}/healthz/live").status_code == 200

    clock.now += 2.0
    stale = httpx.get(f"{url}/healthz/live")
    assert stale.status_code == 503
    assert stale.json() == {"status": "stalled", "heartbeat_age_seconds": 61.0, "liveness_seconds": 60.0}
    assert httpx.get(f"{url}/healthz/ready").status_code == 503

    heartbeat.beat()
    assert httpx.get(f"{url}/healthz/live").json() == {
        "status": "ok",
        "heartbeat_age_seconds": 0.0,
        "liveness_seconds": 60.0,
    }
    heartbeat.set_ready(False)
    assert httpx.get(f"{url}/healthz/ready").status_code == 503
