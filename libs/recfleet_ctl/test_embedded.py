"""When the local fleet starts its own PostgreSQL and Redis, and those servers themselves
(the whole `make run` with them is exercised in tests/e2e/test_embedded_run.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from recfleet_runtime.ports import free_port
from recfleet_store.postgres import ensure_database, migrate

from recfleet_ctl import embedded, fleetrecord
from recfleet_ctl.localfleet import FleetConfig, FleetError, LocalFleet

BOTH = frozenset({"postgres", "redis"})


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port something answers at (what a running server looks like from outside)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (embedded.POSTGRES_SETTING, embedded.REDIS_SETTING, embedded.FORCE_SETTING):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def fleet_for(tmp_path: Path, postgres_port: int, redis_port: int, **config: object) -> LocalFleet:
    return LocalFleet(
        FleetConfig(
            state_dir=tmp_path / "state",
            postgres_dsn=f"postgresql://postgres@127.0.0.1:{postgres_port}/recfleet",
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            free_ports=True,
            **config,
        )
    )


def test_only_urls_left_unset_may_be_embedded_and_recfleet_embedded_forces_it(clean_env):
    config = FleetConfig.from_env()
    assert config.embeddable == BOTH and not config.embed_forced
    clean_env.setenv(embedded.POSTGRES_SETTING, "postgresql://postgres@db.example:5432/recfleet")
    clean_env.setenv(embedded.FORCE_SETTING, "1")
    config = FleetConfig.from_env()
    assert config.embeddable == {"redis"} and config.embed_forced
    clean_env.setenv(embedded.FORCE_SETTING, "0")
    assert not FleetConfig.from_env().embed_forced


def test_nothing_answering_at_the_default_urls_embeds_both(tmp_path):
    fleet = fleet_for(tmp_path, free_port(), free_port(), embeddable=BOTH)
    assert fleet.dependencies_to_embed() == ["postgres", "redis"]


def test_servers_answering_at_the_default_urls_are_used(tmp_path, listening_port):
    fleet = fleet_for(tmp_path, listening_port, listening_port, embeddable=BOTH)
    assert fleet.dependencies_to_embed() == []


def test_recfleet_embedded_embeds_even_where_servers_answer(tmp_path, listening_port):
    fleet = fleet_for(tmp_path, listening_port, listening_port, embeddable=BOTH, embed_forced=True)
    assert fleet.dependencies_to_embed() == ["postgres", "redis"]


def test_a_url_set_explicitly_wins_over_recfleet_embedded(clean_env, tmp_path, listening_port):
    clean_env.setenv(embedded.POSTGRES_SETTING, f"postgresql://postgres@127.0.0.1:{listening_port}/recfleet")
    clean_env.setenv(embedded.FORCE_SETTING, "1")
    clean_env.setenv("RECFLEET_STATE_DIR", str(tmp_path / "state"))
    assert LocalFleet(FleetConfig.from_env()).dependencies_to_embed() == ["redis"]


def test_a_url_set_explicitly_that_nothing_answers_at_fails_before_anything_starts(clean_env, tmp_path):
    port = free_port()
    clean_env.setenv(embedded.REDIS_SETTING, f"redis://127.0.0.1:{port}/3")
    clean_env.setenv("RECFLEET_STATE_DIR", str(tmp_path / "state"))
    fleet = LocalFleet(FleetConfig.from_env())
    with pytest.raises(FleetError) as raised:
        fleet.start()
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message and embedded.REDIS_SETTING in message, message
    assert not fleet.started and not fleet.record_path.exists()


def test_the_test_suite_uses_its_settings_as_given_and_embeds_where_nothing_answers(listening_port):
    """The decision the root conftest.py makes for `make test`'s own servers."""
    dead = free_port()
    settings = {
        "postgres": ("RECFLEET_TEST_POSTGRES_ADMIN_DSN", f"postgresql://postgres@127.0.0.1:{dead}/postgres"),
        "redis": ("RECFLEET_TEST_REDIS", f"redis://127.0.0.1:{listening_port}"),
    }
    assert embedded.to_embed(settings, {}) == ["postgres"]
    assert embedded.to_embed(settings, {embedded.FORCE_SETTING: "1"}) == ["postgres", "redis"]
    given = {"RECFLEET_TEST_POSTGRES_ADMIN_DSN": f"postgresql://postgres:ignored@127.0.0.1:{listening_port}/postgres"}
    assert embedded.to_embed(settings, given) == []
    assert embedded.to_embed(settings, {**given, embedded.FORCE_SETTING: "1"}) == ["redis"]
    with pytest.raises(embedded.EmbeddedError) as raised:
        embedded.to_embed(settings, {"RECFLEET_TEST_REDIS": f"redis://127.0.0.1:{dead}"})
    assert f"127.0.0.1:{dead}" in str(raised.value) and "RECFLEET_TEST_REDIS" in str(raised.value)


def test_addresses_come_from_urls_and_key_value_dsns():
    assert embedded.postgres_address("postgresql://u:secret@db.example:6543/recfleet") == ("db.example", 6543)
    assert embedded.postgres_address("host=127.0.0.1 dbname=recfleet") == ("127.0.0.1", 5432)
    assert embedded.postgres_address("host=/run/postgresql port=5433") == "/run/postgresql/.s.PGSQL.5433"
    assert embedded.redis_address("redis://:secret@cache.example/2") == ("cache.example", 6379)
    assert embedded.redis_address("unix:///run/redis.sock?db=1") == "/run/redis.sock"


def test_a_default_port_held_by_another_server_gives_a_free_one(listening_port):
    assert embedded.choose_port(listening_port, free_ports=False) != listening_port
    assert not fleetrecord.port_in_use(embedded.choose_port(listening_port, free_ports=False))


@pytest.mark.integration
@pytest.mark.slow
def test_embedded_servers_take_migrations_keep_their_data_and_stop_with_the_fleet(tmp_path):
    first = fleet_for(tmp_path, free_port(), free_port(), embeddable=BOTH)
    first.start_embedded(["postgres", "redis"])
    servers = list(first.embedded.values())
    dsn, url = first.config.postgres_dsn, first.config.redis_url
    env = first.base_env()
    assert env["RECFLEET_POSTGRES_DSN"] == dsn and env["RECFLEET_REDIS_URL"] == url  # what every process gets
    ensure_database(dsn)
    migrate(dsn)  # as prepare_infrastructure does
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO model_versions (version, kind, status, artifact_uri) VALUES ('v-kept', 'als', 'serving', '')"
        )
        data_directory = conn.execute("SELECT current_setting('data_directory')").fetchone()
    assert data_directory is not None and Path(data_directory[0]) == (tmp_path / "state" / "postgres").resolve()
    redis.Redis.from_url(url).set("kept", "yes")
    postgres_pid = first.embedded["postgres"].process.pid
    if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as an unprivileged user
        assert os.stat(f"/proc/{postgres_pid}").st_uid != 0

    first.stop()
    assert not first.embedded
    assert all(server.process.returncode is not None for server in servers)
    assert not fleetrecord.port_in_use(servers[0].port) and not fleetrecord.port_in_use(servers[1].port)

    second = fleet_for(tmp_path, free_port(), free_port(), embeddable=BOTH)
    second.start_embedded(["postgres", "redis"])
    try:
        with psycopg.connect(second.config.postgres_dsn) as conn:
            row = conn.execute("SELECT version FROM model_versions WHERE status = 'serving'").fetchone()
        assert row == ("v-kept",)
        assert redis.Redis.from_url(second.config.redis_url).get("kept") == b"yes"
    finally:
        second.stop()
