"""Fixtures every test suite shares: a fresh Postgres database with the schema, a Redis
database index, a Kafka-protocol broker and an artifact directory. All are real.

A test that uses a server, through these fixtures or any fixture built on them, is marked
`integration` here, so `make test-unit` (`-m "not integration and not e2e"`) runs with no
server at all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo
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


class CuttablePostgres:
    """The test database reached through a TCP forwarder on a port of its own: `cut()`
    closes the forwarder and every connection through it, as if Postgres died; `freeze()`
    keeps every connection open but passes nothing on, as if Postgres hung."""

    def __init__(self, dsn: str, port: int):
        self.dsn = dsn
        self._target = port
        self._links: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()

    def freeze(self) -> None:
        self._flowing.clear()

    async def start(self, listen: int) -> None:
        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while chunk := await reader.read(65536):
                    await self._flowing.wait()
                    writer.write(chunk)
                    await writer.drain()
            writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target)
            self._links += [writer, upstream_writer]
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

        self._server = await asyncio.start_server(handle, "127.0.0.1", listen)

    def cut(self) -> None:
        self._flowing.set()  # what waits to pass on ends with the connection
        if self._server is not None:
            self._server.close()
        for link in self._links:
            link.close()


@pytest.fixture
async def cuttable_pg_dsn(pg_dsn):
    """(A DSN of the test database through a forwarder, the forwarder): for tests of what a
    service does when Postgres goes away."""
    from recfleet_runtime.ports import free_port

    listen = free_port()
    forwarder = CuttablePostgres(
        make_conninfo(pg_dsn, host="127.0.0.1", port=listen), int(conninfo_to_dict(pg_dsn).get("port") or 5432)
    )
    await forwarder.start(listen)
    yield forwarder
    forwarder.cut()
