"""The whole fleet as processes, once per test session, on free ports, against a fresh
Postgres database, its own Redis database index and a broker of its own."""

from __future__ import annotations

import os

import httpx
import pytest
from psycopg.conninfo import make_conninfo
from recfleet_ctl.localfleet import FleetConfig, LocalFleet

ADMIN_KEY = "e2e-admin-key"
# Every process of the session fleet gets its DSN with this password (the local server
# trusts 127.0.0.1 and ignores it): test_no_secrets looks for it in every log file.
PG_PASSWORD = "e2e-pg-password-7Kq2Zr"


@pytest.fixture(scope="session")
def fleet(pg_dsn, kafka_bootstrap, tmp_path_factory):
    redis_db = int(os.environ.get("RECFLEET_TEST_E2E_REDIS_DB", "14"))
    import redis

    redis_url = f"{os.environ['RECFLEET_TEST_REDIS']}/{redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    from recfleet_runtime.ports import free_port

    config = FleetConfig(
        state_dir=tmp_path_factory.mktemp("fleet"),
        postgres_dsn=make_conninfo(pg_dsn, password=PG_PASSWORD),
        redis_url=redis_url,
        kafka_bootstrap=kafka_bootstrap,
        shard_count=2,
        gateway_port=free_port(),
        admin_key=ADMIN_KEY,
        train_ranker=os.environ.get("RECFLEET_TEST_E2E_RANKER", "1") != "0",
        free_ports=True,
        # A canary ranking instance for the traffic tests; weight 0 until a test moves it.
        canaries=("ranking",),
        # Every process shares two cores here, so latency says more about the machine than
        # about the canary: the latency gate is wide and the error-rate gate does the work.
        extra_env={
            "RECFLEET_GATEWAY_TRAFFIC_REFRESH_SECONDS": "0.5",
            "RECFLEET_GATEWAY_CANARY_ANALYSIS_SECONDS": "2",
            "RECFLEET_GATEWAY_CANARY_MAX_P99_SECONDS": "5",
        },
    )
    local = LocalFleet(config)
    try:
        local.start()
        yield local
    finally:
        local.stop()
        redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture(scope="session")
def api(fleet):
    with httpx.Client(
        base_url=fleet.gateway_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ) as client:
        yield client
