"""Fixtures every test suite shares: a fresh Postgres database with the schema, a Redis
database index, a Kafka-protocol broker and an artifact directory. All are real.

A test that uses a server, through these fixtures or any fixture built on them, is marked
`integration` here, so `make test-unit` (`-m "not integration and not e2e"`) runs with no
server at all.

The tests find PostgreSQL through RECFLEET_TEST_POSTGRES_ADMIN_DSN (a DSN that may create
databases) and Redis through RECFLEET_TEST_REDIS (a URL without a database index). Where a
setting is unset and nothing answers at its default (127.0.0.1:5432, 127.0.0.1:6379), or
where RECFLEET_EMBEDDED=1 asks for it, the session starts an embedded server on a free port
with its data in a temporary directory (`recfleet_ctl.embedded`), sets the setting to it,
and stops it and removes the directory when the run ends, also when it is interrupted. The
settings are in the environment before any test module is imported, so a module reads them
from os.environ, and every process a test starts inherits them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import pytest
import redis
from _pytest.mark.expression import Expression
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from recfleet_ctl import embedded, fleetrecord
from recfleet_runtime.ports import free_port
from recfleet_store.kafka import LocalBroker
from recfleet_store.postgres import migrate

PG_ADMIN_SETTING = "RECFLEET_TEST_POSTGRES_ADMIN_DSN"
REDIS_SETTING = "RECFLEET_TEST_REDIS"
TEST_SERVERS = {
    "postgres": (PG_ADMIN_SETTING, "postgresql://postgres@127.0.0.1:5432/postgres"),
    "redis": (REDIS_SETTING, "redis://127.0.0.1:6379"),
}
REDIS_DB = int(os.environ.get("RECFLEET_TEST_REDIS_DB", "15"))
# Seconds an embedded server gets to stop before it is killed.
EMBEDDED_STOP_TIMEOUT_SECONDS = 15.0


SERVER_FIXTURES = frozenset({"pg_dsn", "fresh_pg_dsn", "redis_url", "kafka_bootstrap"})


class EmbeddedTestServers:
    """The servers this session started, their temporary directory, and the signal
    handlers it replaced so that SIGTERM and SIGHUP end the run as Ctrl-C does."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="recfleet-test-servers-"))
        self.servers: list[embedded.EmbeddedServer] = []
        self.replaced_handlers: dict[signal.Signals, Any] = {}

    def start(self, name: str) -> embedded.EmbeddedServer:
        if name == "postgres":
            # PostgreSQL's fast shutdown is SIGINT, also when the test run dies.
            server = embedded.start_postgres(
                self.directory / "postgres",
                self.directory / "postgres.log",
                free_port(),
                database="postgres",
                child_setup=fleetrecord.parent_death_signal(signal.SIGINT),
            )
            os.environ[PG_ADMIN_SETTING] = server.url
        else:
            server = embedded.start_redis(
                self.directory / "redis",
                self.directory / "redis.log",
                free_port(),
                child_setup=fleetrecord.parent_death_signal(signal.SIGTERM),
            )
            os.environ[REDIS_SETTING] = f"redis://127.0.0.1:{server.port}"
        self.servers.append(server)
        return server

    def interrupt_on_termination(self) -> None:
        """SIGTERM and SIGHUP (a CI job cancelled, a terminal closed) interrupt the run as
        Ctrl-C does: fixtures tear down and pytest_unconfigure stops the servers. A SIGKILL
        stops them too: each gets a parent-death signal."""
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:
                self.replaced_handlers[signum] = signal.signal(signum, _interrupt)

    def stop(self) -> None:
        for signum, handler in self.replaced_handlers.items():
            signal.signal(signum, handler)
        for server in reversed(self.servers):
            server.stop(EMBEDDED_STOP_TIMEOUT_SECONDS)
        shutil.rmtree(self.directory, ignore_errors=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


embedded_servers_key = pytest.StashKey[EmbeddedTestServers]()


def _may_use_servers(config: pytest.Config) -> bool:
    """Whether this run can use the servers: not for `--help` or `--collect-only`, nor where
    `-m` deselects every test that does (marked `integration`, perhaps `e2e` and `slow` as
    well), as `make test-unit` does."""
    if config.option.help or config.option.collectonly:
        return False
    if not config.option.markexpr:
        return True
    expression = Expression.compile(config.option.markexpr)
    return any(
        expression.evaluate(_marked_with({"integration", *others}))
        for others in ((), ("e2e",), ("slow",), ("e2e", "slow"))
    )


def _marked_with(marks: set[str]) -> Callable[..., bool]:
    """An `-m` matcher for a test with these marks."""
    return lambda name, **_: name in marks


def pytest_configure(config: pytest.Config) -> None:
    """Start the embedded servers this run needs (see the module's docstring), then put both
    settings in the environment, defaults included."""
    if _may_use_servers(config):
        try:
            names = embedded.to_embed(TEST_SERVERS, os.environ)
        except embedded.EmbeddedError as error:
            raise pytest.UsageError(str(error)) from None
        if names:
            servers = config.stash[embedded_servers_key] = EmbeddedTestServers()
            servers.interrupt_on_termination()
            try:
                started = [servers.start(name) for name in names]
            except embedded.EmbeddedError as error:
                raise pytest.UsageError(str(error)) from None
            described = " and ".join(f"{server.name} on 127.0.0.1:{server.port}" for server in started)
            line = f"embedded {described} for this run (data in {servers.directory}, removed at its end)"
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(line)
            else:
                print(line)
    for setting, default in TEST_SERVERS.values():
        if not os.environ.get(setting):
            os.environ[setting] = default


def pytest_unconfigure(config: pytest.Config) -> None:
    servers = config.stash.get(embedded_servers_key, None)
    if servers is not None:
        servers.stop()


def pg_admin_dsn() -> str:
    return os.environ[PG_ADMIN_SETTING]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _create_database() -> tuple[str, str]:
    name = f"recfleet_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, make_conninfo(pg_admin_dsn(), dbname=name)


def _drop_database(name: str) -> None:
    with psycopg.connect(pg_admin_dsn(), autocommit=True) as conn:
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
    url = f"{os.environ[REDIS_SETTING]}/{REDIS_DB}"
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
    listen = free_port()
    forwarder = CuttablePostgres(
        make_conninfo(pg_dsn, host="127.0.0.1", port=listen), int(conninfo_to_dict(pg_dsn).get("port") or 5432)
    )
    await forwarder.start(listen)
    yield forwarder
    forwarder.cut()
