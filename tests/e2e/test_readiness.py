"""Readiness does not cascade: a hung or killed downstream degrades answers and never
makes the gateway unready; a fresh install with no model becomes ready and serves the
fallback rungs, saying why."""

from __future__ import annotations

import itertools
import os
import signal
import time

import httpx
import pytest
import redis
from recfleet_ctl.localfleet import FleetConfig, LocalFleet
from recfleet_runtime.ports import free_port

ADMIN_KEY = "e2e-admin-key"  # the session fleet's (tests/e2e/conftest.py)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
USERS = itertools.cycle(str(user) for user in range(1, 60))


def probe_for(api: httpx.Client, seconds: float) -> list[tuple[str, int]]:
    """Readiness and a recommendation every 0.2 s; every answer that was not a 200."""
    failures = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready = api.get("/healthz/ready")
        if ready.status_code != 200:
            failures.append(("ready", ready.status_code))
        reply = api.get("/v1/recommendations", params={"user_id": next(USERS), "limit": 10})
        if reply.status_code != 200 or not reply.json()["items"]:
            failures.append(("recommendations", reply.status_code))
        time.sleep(0.2)
    return failures


def wait_whole(api: httpx.Client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (down := api.get("/healthz/ready").json()["not_serving"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not down, f"still not serving after {timeout:.0f}s: {down}"


@pytest.mark.parametrize("name", ["candidate-gen-1", "event-ingest"])
def test_a_hung_downstream_leaves_the_gateway_ready_and_answering(fleet, api, name):
    wait_whole(api)
    pid = fleet.processes[name].popen.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        failures = probe_for(api, 4.0)
        ready = api.get("/healthz/ready").json()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert failures == []
    assert ready["not_serving"], "readiness should still name the hung downstream"
    wait_whole(api)


@pytest.mark.parametrize("name", ["candidate-gen-1", "event-ingest"])
def test_a_killed_downstream_leaves_the_gateway_ready_and_comes_back(fleet, api, name):
    wait_whole(api)
    os.kill(fleet.processes[name].popen.pid, signal.SIGKILL)
    failures = probe_for(api, 4.0)
    assert failures == []
    # The local runner restarts it, as the kubelet would.
    wait_whole(api)


@pytest.fixture(scope="module")
def empty_fleet(kafka_bootstrap, tmp_path_factory):
    """A second fleet on an empty database: migrations only, no data, no model."""
    import psycopg

    name = f"recfleet_empty_{os.getpid()}"
    admin_dsn = os.environ["RECFLEET_TEST_POSTGRES_ADMIN_DSN"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    redis_url = f"{os.environ['RECFLEET_TEST_REDIS']}/{int(os.environ.get('RECFLEET_TEST_EMPTY_REDIS_DB', '11'))}"
    redis.Redis.from_url(redis_url).flushdb()
    suffix = f".empty{os.getpid()}"
    config = FleetConfig(
        state_dir=tmp_path_factory.mktemp("empty-fleet"),
        postgres_dsn=psycopg.conninfo.make_conninfo(admin_dsn, dbname=name),
        redis_url=redis_url,
        kafka_bootstrap=kafka_bootstrap,
        shard_count=2,
        gateway_port=free_port(),
        admin_key=ADMIN_KEY,
        free_ports=True,
        pipeline=False,
        # Topics and consumer groups of its own: the session fleet's consumers must not see
        # its events, nor lose their partitions to a rebalance when its consumers join or
        # leave the same group.
        extra_env={
            "RECFLEET_EVENTS_TOPIC": f"recfleet.events.v1{suffix}",
            "RECFLEET_DEAD_LETTER_TOPIC": f"recfleet.events.dlq.v1{suffix}",
            "RECFLEET_USERS_TOPIC": f"recfleet.users.v1{suffix}",
            "RECFLEET_INGEST_SINK_GROUP": f"recfleet-sink{suffix}",
            "RECFLEET_INGEST_REALTIME_GROUP": f"recfleet-realtime{suffix}",
        },
    )
    local = LocalFleet(config)
    try:
        local.start()
        yield local
    finally:
        local.stop()
        redis.Redis.from_url(redis_url).flushdb()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_fresh_install_with_no_model_is_ready_and_serves_the_fallback(empty_fleet):
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=empty_fleet.gateway_url, headers=headers, timeout=10) as api:
        ready = api.get("/healthz/ready")
        assert ready.status_code == 200, ready.text
        # Every process is up and every gRPC service SERVING, the shards included.
        assert ready.json()["not_serving"] == []
        assert all(p.popen.poll() is None for p in empty_fleet.processes.values())
        reply = api.get("/v1/recommendations", params={"user_id": "1", "limit": 10})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["served_by"] == "popular"
        assert "no-serving-model" in body["degraded"]
