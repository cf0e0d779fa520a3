"""Fixtures every test suite shares: a fresh Postgres database with the schema, a Redis
database index, a Kafka-protocol broker and an artifact directory. All are real.

A test that uses a server, through these fixtures or any fixture built on them, is marked
`integration` here, so `make test-unit` (`-m "not integration and not e2e"`) runs with no
server at all."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
import redis
from recfleet_store.kafka import LocalBroker
from recfleet_store.postgres import migrate

PG_ADMIN_DSN = os.environ.get("RECFLEET_TEST_POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("RECFLEET_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("RECFLEET_TEST_REDIS_DB", "15"))


SERVER_FIXTURES = frozenset({"pg_dsn", "fresh_pg_dsn", "redis_url", "kafka_bootstrap"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _create_database() -> tuple[str, str]:
    name = f"recfleet_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=name)


def _drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_dsn():
    """A migrated database for the whole session, dropped afterwards."""
    name, dsn = _create_database()
    migrate(dsn)
    yield dsn
    _drop_database(name)


@pytest.fixture
def fresh_pg_dsn():
    """A migrated database for one test."""
    name, dsn = _create_database()
    migrate(dsn)
    yield dsn
    _drop_database(name)


@pytest.fixture
def redis_url():
    """A Redis database index of its own, emptied before and after the test."""
    url = f"{REDIS_BASE}/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """KAFKA_BOOTSTRAP_SERVERS when given, else a broker started for this session."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    broker = LocalBroker.start()
    yield broker.bootstrap
    broker.stop()


@pytest.fixture
def artifact_dir(tmp_path):
    path = tmp_path / "artifacts"
    path.mkdir()
    return path
