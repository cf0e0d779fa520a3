"""The whole fleet on one machine, as processes: what `make run` and the e2e tests start.

Starts an embedded PostgreSQL and Redis where none answers and none was configured, or
where RECFLEET_EMBEDDED=1 asks for them (see `embedded`), prepares Postgres (database +
migrations), starts a Kafka-protocol broker when KAFKA_BOOTSTRAP_SERVERS is unset, runs
the batch pipeline when no usable model version exists (load MovieLens, train ALS, build
the shards, promote, popularity, materialize, train the ranker; `RECFLEET_PIPELINE=0`
skips it for an empty install), starts every service and waits for the gateway to be
ready.

It supervises what it started the way a kubelet would: a service that exits on its own
starts again after a backoff (1 s, 2 s, 4 s ... 30 s), and one that keeps crashing
(more than `restart_limit` exits within `restart_window_seconds`) stops the runner,
which names it. Whatever stops it (Ctrl-C, SIGTERM, SIGHUP, a crash loop), the runner
stops every process, the broker and the embedded servers, and further signals cannot
interrupt that. Children also go when the runner dies by SIGKILL: each has a
parent-death signal, and a watchdog process stops what is left (the broker and the
embedded servers included) from the fleet record in `<state dir>/fleet.json` (see
`fleetrecord`). A new run reads that record first: it stops a fleet an earlier runner
left behind, and names whatever holds a port it needs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar, cast

import httpx
import psycopg
import redis
import typer
from pydantic_settings import BaseSettings
from recfleet_runtime.ports import free_port
from recfleet_runtime.settings import KafkaSettings, TopicSettings, env_names
from recfleet_store import keys, suppression
from recfleet_store.kafka import LocalBroker, configured_topics, ensure_topics
from recfleet_store.postgres import ensure_database, migrate
from rich.console import Console
from rich.markup import escape

from recfleet_ctl import embedded, fleetrecord

console = Console(stderr=True)
SettingsT = TypeVar("SettingsT", bound=BaseSettings)
# EASE's setting on the bundled MovieLens sample: the regression gate's (l2 200, ALS weight
# 0.3, popularity penalty 0.3: 1.06 x ALS alone's NDCG@10 with more of the catalog shown;
# docs/evaluation.md), used as it is by the local fleet's first training. A retrain
# through the jobs API searches it again.
BUNDLED_SAMPLE_EASE = {
    "RECFLEET_JOBS_EASE_L2": "200",
    "RECFLEET_JOBS_EASE_ALS_WEIGHT": "0.3",
    "RECFLEET_JOBS_EASE_POPULARITY_PENALTY": "0.3",
}
CANARY_CAPABLE = ("feature-store", "candidate-gen", "ranking", "event-ingest")


class FleetError(RuntimeError):
    """The fleet cannot start (a port is held, another fleet runs from this state directory)."""


class FleetStopped(Exception):
    """A stop was requested (a signal) while the fleet was starting."""


@dataclass
class FleetConfig:
    state_dir: Path = Path(".state")
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/recfleet"
    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap: str | None = None
    shard_count: int = 2
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    admin_key: str = "dev-admin-key"
    data_dir: str = "data/ml-latest-small"
    train_ranker: bool = True
    # False: migrations, broker and topics only, no batch job (a fresh, empty install).
    pipeline: bool = True
    free_ports: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    # Services that also get a canary instance (RECFLEET_CANARIES=ranking,candidate-gen),
    # and extra environment for those instances, e.g. a pinned model version.
    canaries: tuple[str, ...] = ()
    canary_env: dict[str, dict[str, str]] = field(default_factory=dict)
    # Supervision: a service that exits on its own starts again after a backoff doubling
    # from restart_backoff_seconds to restart_backoff_max_seconds (back to the first once it
    # stayed up restart_reset_seconds); more than restart_limit exits within
    # restart_window_seconds is a crash loop, and the runner stops the fleet.
    restart_limit: int = 5
    restart_window_seconds: float = 120.0
    restart_backoff_seconds: float = 1.0
    restart_backoff_max_seconds: float = 30.0
    restart_reset_seconds: float = 60.0
    # Seconds a process gets between SIGTERM and SIGKILL when the fleet stops.
    stop_timeout_seconds: float = 15.0
    # The dependencies ("postgres", "redis") whose URL was not set explicitly: the runner
    # starts its own where nothing answers at it, or always with embed_forced
    # (RECFLEET_EMBEDDED=1). A URL set explicitly must answer.
    embeddable: frozenset[str] = frozenset()
    embed_forced: bool = False

    @classmethod
    def from_env(cls) -> FleetConfig:
        env = os.environ
        return cls(
            state_dir=Path(env.get("RECFLEET_STATE_DIR", ".state")),
            postgres_dsn=env.get("RECFLEET_POSTGRES_DSN", cls.postgres_dsn),
            redis_url=env.get("RECFLEET_REDIS_URL", cls.redis_url),
            kafka_bootstrap=env.get("KAFKA_BOOTSTRAP_SERVERS") or None,
            shard_count=int(env.get("RECFLEET_SHARDS", "2")),
            gateway_port=int(env.get("RECFLEET_GATEWAY_PORT", "8080")),
            admin_key=env.get("RECFLEET_BOOTSTRAP_ADMIN_KEY", cls.admin_key),
            train_ranker=env.get("RECFLEET_TRAIN_RANKER", "1") != "0",
            pipeline=env.get("RECFLEET_PIPELINE", "1") != "0",
            free_ports=env.get("RECFLEET_FREE_PORTS", "0") not in ("0", ""),
            restart_limit=int(env.get("RECFLEET_RESTART_LIMIT", str(cls.restart_limit))),
            canaries=tuple(s.strip() for s in env.get("RECFLEET_CANARIES", "").split(",") if s.strip()),
            embeddable=frozenset(
                name
                for name, setting in (("postgres", embedded.POSTGRES_SETTING), ("redis", embedded.REDIS_SETTING))
                if not env.get(setting)
            ),
            embed_forced=env.get(embedded.FORCE_SETTING, "0") not in ("0", ""),
        )


def _settings_from(cls: type[SettingsT], env: dict[str, str]) -> SettingsT:
    """Settings as a fleet process with environment `env` reads them."""
    values: dict[str, Any] = {name: env[name] for name in env_names(cls) if name in env}
    return cls(**values)


@dataclass
class Process:
    """One service process and what supervising it needs to know."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    module: str
    env: dict[str, str]
    grpc_port: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    # Stopped on purpose (stop_process, stop): the supervisor leaves it down.
    stopped: bool = False
    # Crash loop: the supervisor gave up on it.
    given_up: bool = False
    restarts: int = 0
    exits: list[float] = field(default_factory=list)
    backoff: float = 0.0
    restart_at: float | None = None


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class LocalFleet:
    """Starts, supervises and stops the fleet. `ports` maps a process name to its gRPC port
    (and `<name>-metrics` to its metrics port)."""

    def __init__(self, config: FleetConfig):
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.log_dir = self.state_dir / "logs"
        self.record_path = self.state_dir / fleetrecord.RECORD_NAME
        self.artifact_url = f"file://{self.state_dir / 'artifacts'}"
        self.processes: dict[str, Process] = {}
        self.broker: LocalBroker | None = None
        # The embedded servers the runner started ("postgres", "redis").
        self.embedded: dict[str, embedded.EmbeddedServer] = {}
        self.kafka_bootstrap = config.kafka_bootstrap
        self.ports = self._ports()
        # Why the fleet should stop (a signal); None while it should run. A
        # plain attribute: a signal handler sets it, and must take no lock to do so.
        self.stop_reason: str | None = None
        # A crash loop, naming the service: `run` stops the fleet on it, wait_ready raises it.
        self.failure: str | None = None
        self._lock = threading.RLock()
        self._stopping = False
        self._recording = False
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._supervisor: threading.Thread | None = None
        self._supervisor_exit = threading.Event()
        self._child_setup = fleetrecord.parent_death_signal(signal.SIGTERM)

    def _ports(self) -> dict[str, int]:
        unknown = set(self.config.canaries) - set(CANARY_CAPABLE)
        if unknown:
            raise ValueError(f"no canary instance for {sorted(unknown)}; choose from {CANARY_CAPABLE}")
        fixed = {
            "feature-store": 50061,
            "ranking": 50071,
            "event-ingest": 50081,
            "feature-store-canary": 50062,
            "ranking-canary": 50072,
            "event-ingest-canary": 50082,
        }
        ports = {name: free_port() if self.config.free_ports else port for name, port in fixed.items()}
        for shard in range(self.config.shard_count):
            ports[f"candidate-gen-{shard}"] = free_port() if self.config.free_ports else 50051 + shard
            ports[f"candidate-gen-canary-{shard}"] = free_port() if self.config.free_ports else 50151 + shard
        for name, base in (("feature-store-canary", 9122), ("ranking-canary", 9123), ("event-ingest-canary", 9124)):
            ports[f"{name}-metrics"] = free_port() if self.config.free_ports else base
        for shard in range(self.config.shard_count):
            ports[f"candidate-gen-canary-{shard}-metrics"] = free_port() if self.config.free_ports else 9130 + shard
        for name, base in (
            ("feature-store", 9102),
            ("ranking", 9103),
            ("event-ingest", 9104),
            ("event-sink", 9105),
            ("event-realtime", 9106),
            ("gateway", 9101),
        ):
            ports[f"{name}-metrics"] = free_port() if self.config.free_ports else base
        for shard in range(self.config.shard_count):
            ports[f"candidate-gen-{shard}-metrics"] = free_port() if self.config.free_ports else 9110 + shard
        return ports

    def process_ports(self, name: str) -> dict[str, int]:
        """The ports a process listens on, by role."""
        ports = {"http": self.config.gateway_port} if name == "gateway" else {}
        if name in self.ports:
            ports["grpc"] = self.ports[name]
        if f"{name}-metrics" in self.ports:
            ports["metrics"] = self.ports[f"{name}-metrics"]
        return ports

    def planned_processes(self) -> list[str]:
        """Every service process the fleet runs, in start order (the gateway last)."""
        names = [
            "feature-store",
            *(f"candidate-gen-{s}" for s in range(self.config.shard_count)),
            "ranking",
            "event-ingest",
            "event-sink",
            "event-realtime",
        ]
        for service in self.config.canaries:
            if service == "candidate-gen":
                names += [f"candidate-gen-canary-{s}" for s in range(self.config.shard_count)]
            else:
                names.append(f"{service}-canary")
        return [*names, "gateway"]

    @property
    def started(self) -> bool:
        """Whether start() got as far as starting anything (the record, a server, a process)."""
        return self._recording or self.broker is not None or bool(self.embedded) or bool(self.processes)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.config.gateway_host}:{self.config.gateway_port}"

    @property
    def gateway_metrics_url(self) -> str:
        """The gateway's /metrics (a port of its own, never the public one)."""
        return f"http://{self.config.gateway_host}:{self.ports['gateway-metrics']}/metrics"

    # -- environment -------------------------------------------------------------

    def erasure_hash_key(self) -> str:
        """RECFLEET_ERASURE_HASH_KEY when set, else a key generated on the first run and kept
        in `<state dir>/erasure-hash-key`: it must stay the same for as long as the database
        does, or users erased earlier would match no hash and their events would be kept."""
        given = os.environ.get(suppression.KEY_ENV)
        if given:
            return given
        path = self.state_dir / "erasure-hash-key"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as out:
            key = secrets.token_hex(32)
            out.write(key + "\n")
        return key

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                suppression.KEY_ENV: self.erasure_hash_key(),
                "RECFLEET_POSTGRES_DSN": self.config.postgres_dsn,
                "RECFLEET_REDIS_URL": self.config.redis_url,
                "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap or "",
                "RECFLEET_ARTIFACT_URL": self.artifact_url,
                "RECFLEET_BOOTSTRAP_ADMIN_KEY": self.config.admin_key,
                "RECFLEET_JOBS_SHARD_COUNT": str(self.config.shard_count),
                "RECFLEET_JOBS_DATA_DIR": self.config.data_dir,
                "OPENBLAS_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.config.extra_env)
        return env

    def service_env(self, name: str, shard: int | None = None, canary: bool = False) -> dict[str, str]:
        env = self.base_env()
        p = self.ports
        suffix = "-canary" if canary else ""
        if canary:
            env["RECFLEET_TRACK"] = "canary"
        if name == "feature-store":
            env.update(
                RECFLEET_FEATURES_GRPC_PORT=str(p[f"feature-store{suffix}"]),
                RECFLEET_FEATURES_METRICS_PORT=str(p[f"feature-store{suffix}-metrics"]),
            )
        elif name == "candidate-gen":
            env.update(
                RECFLEET_CANDIDATES_GRPC_PORT=str(p[f"candidate-gen{suffix}-{shard}"]),
                RECFLEET_CANDIDATES_METRICS_PORT=str(p[f"candidate-gen{suffix}-{shard}-metrics"]),
                RECFLEET_CANDIDATES_SHARD=str(shard),
                RECFLEET_CANDIDATES_SHARD_COUNT=str(self.config.shard_count),
                RECFLEET_CANDIDATES_REGISTRY_POLL_SECONDS="2",
            )
        elif name == "ranking":
            env.setdefault("RECFLEET_RANKING_FEATURE_STORE_TIMEOUT", "0.1")
            env.update(
                RECFLEET_RANKING_GRPC_PORT=str(p[f"ranking{suffix}"]),
                RECFLEET_RANKING_METRICS_PORT=str(p[f"ranking{suffix}-metrics"]),
                RECFLEET_RANKING_FEATURE_STORE_TARGET=f"127.0.0.1:{p['feature-store']}",
            )
        elif name in ("event-ingest", "event-sink", "event-realtime"):
            env.update(
                RECFLEET_INGEST_GRPC_PORT=str(p[f"event-ingest{suffix}"]),
                RECFLEET_INGEST_METRICS_PORT=str(p[f"{name}{suffix}-metrics"]),
            )
        elif name == "gateway":
            # Every process of the fleet shares this machine's cores, so a hop waits for a
            # core as well as for its work: the budgets are wider than a cluster's.
            env.setdefault("RECFLEET_GATEWAY_FEATURE_STORE_TIMEOUT", "0.1")
            env.setdefault("RECFLEET_GATEWAY_CANDIDATE_GEN_TIMEOUT", "0.15")
            env.setdefault("RECFLEET_GATEWAY_RANKING_TIMEOUT", "0.3")
            env.setdefault("RECFLEET_GATEWAY_REQUEST_TIMEOUT", "1.0")
            env.update(
                RECFLEET_GATEWAY_HOST=self.config.gateway_host,
                RECFLEET_GATEWAY_PORT=str(self.config.gateway_port),
                RECFLEET_GATEWAY_METRICS_PORT=str(p["gateway-metrics"]),
                RECFLEET_GATEWAY_FEATURE_STORE_TARGET=f"127.0.0.1:{p['feature-store']}",
                RECFLEET_GATEWAY_RANKING_TARGET=f"127.0.0.1:{p['ranking']}",
                RECFLEET_GATEWAY_EVENT_INGEST_TARGET=f"127.0.0.1:{p['event-ingest']}",
                RECFLEET_GATEWAY_CANDIDATE_GEN_TARGETS=",".join(
                    f"127.0.0.1:{p[f'candidate-gen-{s}']}" for s in range(self.config.shard_count)
                ),
            )
            canaries = self.config.canaries
            if "feature-store" in canaries:
                env["RECFLEET_GATEWAY_FEATURE_STORE_CANARY_TARGET"] = f"127.0.0.1:{p['feature-store-canary']}"
            if "ranking" in canaries:
                env["RECFLEET_GATEWAY_RANKING_CANARY_TARGET"] = f"127.0.0.1:{p['ranking-canary']}"
            if "event-ingest" in canaries:
                env["RECFLEET_GATEWAY_EVENT_INGEST_CANARY_TARGET"] = f"127.0.0.1:{p['event-ingest-canary']}"
            if "candidate-gen" in canaries:
                env["RECFLEET_GATEWAY_CANDIDATE_GEN_CANARY_TARGETS"] = ",".join(
                    f"127.0.0.1:{p[f'candidate-gen-canary-{s}']}" for s in range(self.config.shard_count)
                )
        if canary:
            env.update(self.config.canary_env.get(name, {}))
        return env

    # -- infrastructure and pipeline ---------------------------------------------

    def dependencies_to_embed(self) -> list[str]:
        """Which of PostgreSQL and Redis the runner starts itself (`embedded.should_embed`).
        A URL set explicitly that nothing answers at fails the start here, before anything runs."""
        config = self.config
        wanted = {
            "postgres": (embedded.POSTGRES_SETTING, embedded.postgres_address(config.postgres_dsn)),
            "redis": (embedded.REDIS_SETTING, embedded.redis_address(config.redis_url)),
        }
        if config.embed_forced:
            for name, (setting, _) in wanted.items():
                if name not in config.embeddable:
                    console.print(f"[yellow]{setting} is set: {embedded.FORCE_SETTING}=1 embeds no {name} for it[/]")
        try:
            return [
                name
                for name, (setting, address) in wanted.items()
                if embedded.should_embed(
                    setting, address, explicit=name not in config.embeddable, forced=config.embed_forced
                )
            ]
        except embedded.EmbeddedError as error:
            raise FleetError(f"cannot start the fleet: {error}") from None

    def start_embedded(self, names: list[str]) -> None:
        """Start the embedded servers named, with their data in the state directory; every
        process of the fleet then gets their URLs."""
        for name in names:
            self._raise_if_stop_requested()
            if name == "postgres":
                database = psycopg.conninfo.conninfo_to_dict(self.config.postgres_dsn).get("dbname") or "recfleet"
                server = embedded.start_postgres(
                    self.state_dir / "postgres",
                    self.log_dir / "postgres.log",
                    embedded.choose_port(embedded.POSTGRES_PORT, self.config.free_ports),
                    database=str(database),
                    child_setup=self._child_setup,
                )
                self.config.postgres_dsn = server.url
            else:
                server = embedded.start_redis(
                    self.state_dir / "redis",
                    self.log_dir / "redis.log",
                    embedded.choose_port(embedded.REDIS_PORT, self.config.free_ports),
                    child_setup=self._child_setup,
                )
                self.config.redis_url = server.url
            self.embedded[name] = server
            self._write_record()
            console.print(f"[green]started[/] embedded {server.name} on {server.url} (data: {server.data_dir})")

    def prepare_infrastructure(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ensure_database(self.config.postgres_dsn)
        migrate(self.config.postgres_dsn)
        self._raise_if_stop_requested()
        if not self.kafka_bootstrap:
            self.broker = LocalBroker.start(
                port=None if self.config.free_ports else 19092, log_path=str(self.log_dir / "broker.log")
            )
            self.kafka_bootstrap = self.broker.bootstrap
            self._write_record()
            console.print(f"[green]started[/] Kafka-protocol broker on {self.kafka_bootstrap} (memory only)")
        self._raise_if_stop_requested()
        self.create_topics()

    def create_topics(self) -> None:
        """What `recfleet-jobs create-topics` does, in process (services wait for topics and
        never create them), with the names and layout the fleet's processes see: extra_env
        may give this fleet topics of its own."""
        if self.kafka_bootstrap is None:
            raise RuntimeError("no broker yet: prepare_infrastructure starts or finds one first")
        env = self.base_env()
        kafka, layout = _settings_from(KafkaSettings, env), _settings_from(TopicSettings, env)
        ensure_topics(self.kafka_bootstrap, configured_topics(kafka, layout))

    def job(self, *args: str, defaults: Mapping[str, str] | None = None) -> str:
        """Run one batch job; its output goes to the console and is returned. A stop request
        (a signal) stops the job and raises FleetStopped. `defaults`: settings for this job
        unless the environment sets them."""
        self._raise_if_stop_requested()
        console.print(f"[bold]recfleet-jobs {' '.join(args)}[/]")
        started = time.perf_counter()
        # In the runner's process group, so Ctrl-C reaches it as it reaches the runner.
        with subprocess.Popen(
            [sys.executable, "-m", "recfleet_jobs", *args],
            env={**(defaults or {}), **self.base_env()},
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=self._child_setup,
        ) as popen:
            while True:
                try:
                    output, _ = popen.communicate(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if self.stop_reason is not None:
                        self._terminate(popen, signal.SIGTERM, self.config.stop_timeout_seconds, group=False)
                        raise FleetStopped(self.stop_reason) from None
        self._raise_if_stop_requested()
        if popen.returncode != 0:
            raise RuntimeError(f"recfleet-jobs {' '.join(args)} failed with exit code {popen.returncode}")
        console.print(f"  done in {time.perf_counter() - started:.1f}s")
        return output

    def _serving_version_usable(self) -> bool:
        with psycopg.connect(self.config.postgres_dsn) as conn:
            row = conn.execute(
                "SELECT version FROM model_versions WHERE kind = 'als' AND status = 'serving'"
            ).fetchone()
        if row is None:
            return False
        version: str = row[0]
        manifest = self.state_dir / "artifacts" / "models" / "als" / version / "index" / "manifest.json"
        client = redis.Redis.from_url(self.config.redis_url)
        try:
            in_redis: bool = client.get(keys.SERVING_VERSION) == version.encode()
        finally:
            client.close()
        return manifest.is_file() and in_redis

    def run_pipeline(self, force: bool = False) -> None:
        self.job("load-movielens", "--data-dir", self.config.data_dir)
        if force or not self._serving_version_usable():
            # The bundled MovieLens sample keeps the default ALS parameters when they are
            # searched (docs/evaluation.md), so the local fleet skips the search, and fuses
            # in EASE with the regression gate's setting on that sample (BUNDLED_SAMPLE_EASE),
            # so its start does not wait for the search.
            output = self.job("train-als", "--tune-seconds", "0", defaults=BUNDLED_SAMPLE_EASE)
            version = next(
                line.split("=", 1)[1] for line in reversed(output.splitlines()) if line.startswith("version=")
            )
            self.job("build-index", "--version", version, "--shards", str(self.config.shard_count))
            try:
                self.job("promote", "--kind", "als", "--version", version)
            except RuntimeError as error:
                # The promotion gates refused it (docs/operations.md): the version that
                # serves keeps serving, if there is one.
                if not self._serving_version_usable():
                    raise
                console.print(f"[yellow]{version} not promoted ({error}); the serving version stays[/]")
            trained = True
        else:
            console.print("reusing the serving model version")
            trained = False
        self.job("popularity")
        self.job("materialize", "--full")
        if self.config.train_ranker and (trained or not self._ranker_serving()):
            try:
                # Forced: the local fleet exercises the ranker path, and on the bundled
                # sample a ranker does not pass its gate (docs/ranking.md, "The gate").
                self.job("train-ranker", "--promote", "--force")
            except RuntimeError as error:
                console.print(f"[yellow]ranker not trained ({error}); ranking serves the rule formula[/]")

    def _ranker_serving(self) -> bool:
        with psycopg.connect(self.config.postgres_dsn) as conn:
            return (
                conn.execute("SELECT 1 FROM model_versions WHERE kind = 'ranker' AND status = 'serving'").fetchone()
                is not None
            )

    # -- processes ---------------------------------------------------------------

    def _log(self, message: str) -> None:
        """A supervision event: to the console and to `<state dir>/logs/fleet.log`."""
        console.print(message)
        plain = Console(no_color=True, width=10_000).render_str(message).plain
        try:
            with open(self.log_dir / "fleet.log", "a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {plain}\n")
        except OSError:
            pass

    def _popen(self, module: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log_file:  # the child keeps its own copy
            return subprocess.Popen(
                [sys.executable, "-m", module],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._child_setup,
            )

    def start_process(self, name: str, module: str, env: dict[str, str], grpc_port: int | None = None) -> Process:
        """Start (or start again) one service process; it is supervised from now on."""
        log_path = self.log_dir / f"{name}.log"
        with self._lock:
            process = Process(
                name,
                self._popen(module, env, log_path),
                log_path,
                module,
                env,
                grpc_port,
                ports=self.process_ports(name),
                started_at=time.monotonic(),
            )
            self.processes[name] = process
            self._write_record()
        return process

    def start_services(self) -> None:
        modules = {
            "feature-store": "recfleet_features",
            "candidate-gen": "recfleet_candidates",
            "ranking": "recfleet_ranking",
            "event-ingest": "recfleet_ingest",
            "event-sink": "recfleet_ingest.sink",
            "event-realtime": "recfleet_ingest.realtime",
            "gateway": "recfleet_gateway",
        }
        for name in self.planned_processes():
            self._raise_if_stop_requested()
            canary = "-canary" in name
            service, shard = name.replace("-canary", ""), None
            if service.startswith("candidate-gen-"):
                service, shard = "candidate-gen", int(name.rsplit("-", 1)[1])
            self.start_process(
                name, modules[service], self.service_env(service, shard, canary=canary), self.ports.get(name)
            )

    def supervise(self, interval: float = 0.5) -> None:
        """Restart, from a background thread, every process that exits on its own."""
        if self._supervisor is None:
            self._supervisor = threading.Thread(
                target=self._supervise_until_stopped, args=(interval,), name="fleet-supervisor", daemon=True
            )
            self._supervisor.start()

    def _supervise_until_stopped(self, interval: float) -> None:
        # This thread lives until stop() has stopped every process: a child's parent-death
        # signal comes when the *thread* that started it ends.
        while not self._supervisor_exit.wait(interval):
            try:
                self.supervise_once()
            except Exception as error:
                self._log(f"[red]supervisor error: {escape(repr(error))}[/]")

    def supervise_once(self) -> None:
        """One supervision pass: note exits, schedule restarts with backoff, restart what is due,
        give up on a process in a crash loop (`failure` then names it; the runner stops)."""
        config = self.config
        with self._lock:
            if self._stopping:
                return
            for process in self.processes.values():
                if process.stopped or process.given_up:
                    continue
                now = time.monotonic()
                if process.restart_at is None:
                    code = process.popen.poll()
                    if code is None:
                        continue
                    fleetrecord.signal_group(process.popen.pid, signal.SIGKILL)  # what it started itself
                    uptime = now - process.started_at
                    process.exits = [t for t in process.exits if now - t <= config.restart_window_seconds] + [now]
                    if len(process.exits) > config.restart_limit:
                        process.given_up = True
                        self.failure = (
                            f"{process.name} is crash-looping: it exited {len(process.exits)} times within "
                            f"{config.restart_window_seconds:.0f}s; see {process.log_path}"
                        )
                        self._log(
                            f"[red]{process.name} exited ({exit_reason(code)}) after {uptime:.1f}s; "
                            f"crash loop, no more restarts[/]"
                        )
                        continue
                    if process.backoff == 0 or uptime >= config.restart_reset_seconds:
                        process.backoff = config.restart_backoff_seconds
                    else:
                        process.backoff = min(process.backoff * 2, config.restart_backoff_max_seconds)
                    process.restart_at = now + process.backoff
                    self._log(
                        f"[yellow]{process.name} exited ({exit_reason(code)}) after {uptime:.1f}s; "
                        f"restart {process.restarts + 1} in {process.backoff:.0f}s[/]"
                    )
                    self._write_record()
                elif now >= process.restart_at:
                    process.restart_at = None
                    process.popen = self._popen(process.module, process.env, process.log_path)
                    process.started_at = time.monotonic()
                    process.restarts += 1
                    self._log(
                        f"[yellow]restarted {process.name}[/] (pid {process.popen.pid}, "
                        f"restart {process.restarts}); log: {process.log_path}"
                    )
                    self._write_record()

    def request_stop(self, reason: str) -> None:
        """Ask the fleet to stop; safe in a signal handler (no lock, no output)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def _raise_if_stop_requested(self) -> None:
        if self.stop_reason is not None:
            raise FleetStopped(self.stop_reason)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        try:
            return self.processes[name].log_path.read_text(errors="replace")[-chars:]
        except (KeyError, OSError):
            return ""

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until the gateway is ready and sees every downstream serving (the readiness body's
        `not_serving` is empty: a gateway stays ready while a downstream is down, so its
        status code alone says nothing about the rest of the fleet)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.failure is not None:
                name = self.failure.split(" ", 1)[0]
                raise RuntimeError(f"{self.failure}:\n{self.log_tail(name)}")
            self._raise_if_stop_requested()
            try:
                reply = httpx.get(f"{self.gateway_url}/healthz/ready", timeout=2)
                down = reply.json().get("not_serving") if reply.status_code == 200 else None
                if reply.status_code == 200 and not down:
                    return
                last = f"not serving: {down}" if down else reply.text
            except (httpx.HTTPError, ValueError, AttributeError) as error:
                last = str(error)
            time.sleep(0.5)
        raise TimeoutError(f"the fleet was not ready after {timeout:.0f}s: {last}")

    def _terminate(
        self, popen: subprocess.Popen[Any], sig: int, timeout: float, group: bool = True, signalled: bool = False
    ) -> None:
        """Send `sig` to the process (as a kubelet signals a container's main process; not again
        when `signalled`), then SIGKILL to its whole group (what it started too) after
        `timeout` or once it exited."""
        if popen.returncode is not None:
            return  # reaped earlier: its pid (and group id) may be someone else's by now
        if popen.poll() is None:
            if not signalled:
                popen.send_signal(sig)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # Every fleet process is started from a list of str.
                argv = cast(list[str], popen.args)
                console.print(
                    f"[yellow]pid {popen.pid} ({' '.join(argv[1:])}) still running "
                    f"{timeout:.0f}s after {signal.Signals(sig).name}: SIGKILL[/]"
                )
                popen.kill()
                popen.wait()
        if group:
            fleetrecord.signal_group(popen.pid, signal.SIGKILL)

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop one process on purpose: the supervisor leaves it down until start_process or
        restart_process. (A process killed behind the fleet's back, e.g. by os.kill, is a
        crash and is restarted.)"""
        with self._lock:
            process = self.processes[name]
            process.stopped = True
            process.restart_at = None
        self._terminate(process.popen, sig, timeout)
        with self._lock:
            self._write_record()

    def restart_process(self, name: str) -> None:
        process = self.processes[name]
        self.stop_process(name)
        self.start_process(name, process.module, process.env, process.grpc_port)

    def stop(self) -> None:
        """Stop every process and the broker: the gateway first, so no request reaches a
        stopped service, then the rest together; SIGKILL what outlives the stop timeout."""
        with self._lock:
            self._stopping = True
            for process in self.processes.values():
                process.stopped = True
                process.restart_at = None
            processes = list(self.processes.values())
        timeout = self.config.stop_timeout_seconds
        gateway = [p for p in processes if p.name == "gateway"]
        for batch in (gateway, [p for p in processes if p.name != "gateway"]):
            try:
                self._terminate_together([p.popen for p in batch], timeout)
            except Exception as error:
                console.print(f"[red]while stopping: {escape(repr(error))}[/]")
        if self.broker is not None:
            try:
                unreaped = self.broker.process.returncode is None
                self.broker.stop()
                if unreaped:
                    fleetrecord.signal_group(self.broker.process.pid, signal.SIGKILL)
                self.broker.process.wait(timeout=timeout)
            except Exception as error:
                console.print(f"[red]while stopping the broker: {escape(repr(error))}[/]")
            self.broker = None
        for name, server in reversed(list(self.embedded.items())):
            try:
                server.stop(timeout)
            except Exception as error:
                console.print(f"[red]while stopping the embedded {server.name}: {escape(repr(error))}[/]")
            del self.embedded[name]
        if self._recording:
            self.record_path.unlink(missing_ok=True)
            self._recording = False
        if self._watchdog is not None:
            assert self._watchdog.stdin is not None  # started with stdin=PIPE
            self._watchdog.stdin.close()  # end of file: the watchdog finds no record and exits
            try:
                self._watchdog.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
            self._watchdog = None
        self._supervisor_exit.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=5)

    def _terminate_together(self, popens: list[subprocess.Popen[bytes]], timeout: float) -> None:
        for popen in popens:
            if popen.returncode is None:
                if popen.poll() is None:
                    popen.send_signal(signal.SIGTERM)
                else:  # exited on its own just now: what it left behind goes
                    fleetrecord.signal_group(popen.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for popen in popens:
            self._terminate(popen, signal.SIGTERM, max(deadline - time.monotonic(), 0.01), signalled=True)

    # -- the fleet record, stale fleets, ports -----------------------------------

    def _write_record(self) -> None:
        if not self._recording:
            return
        with self._lock:
            entries = {}
            if self.broker is not None and self.broker.process.poll() is None:
                entries["broker"] = {
                    **fleetrecord.identity(self.broker.process.pid),
                    "ports": {"kafka": self.broker.port},
                    "log": str(self.log_dir / "broker.log"),
                }
            for name, server in self.embedded.items():
                if server.process.poll() is None:
                    entries[name] = {
                        **fleetrecord.identity(server.process.pid),
                        "ports": {name: server.port},
                        "log": str(server.log_path),
                    }
            for process in self.processes.values():
                if process.popen.poll() is None:
                    entries[process.name] = {
                        **fleetrecord.identity(process.popen.pid),
                        "ports": process.ports,
                        "log": str(process.log_path),
                        "restarts": process.restarts,
                    }
            record = {
                "runner": fleetrecord.identity(os.getpid()),
                "state_dir": str(self.state_dir),
                "gateway": self.gateway_url,
                "processes": entries,
            }
            if self._watchdog is not None:
                record["watchdog"] = fleetrecord.identity(self._watchdog.pid)
            fleetrecord.write_record(self.record_path, record)

    def stop_stale_fleet(self) -> None:
        """Stop what an earlier run from this state directory left running; refuse to start
        beside a runner that is still alive."""
        record = fleetrecord.read_record(self.record_path)
        runner = record.get("runner", {})
        if runner.get("pid") != os.getpid() and fleetrecord.still_running(runner):
            raise FleetError(
                f"a fleet from {self.state_dir} is already running: runner {fleetrecord.describe(runner)}. "
                f"Stop it (Ctrl-C there, or kill {runner['pid']}) or use another RECFLEET_STATE_DIR."
            )
        entries = list(record.get("processes", {}).items())
        left = [(name, entry) for name, entry in entries if fleetrecord.still_running(entry)]
        if left:
            names = ", ".join(f"{name} (pid {entry['pid']})" for name, entry in left)
            console.print(f"[yellow]stopping what an earlier run of this fleet left running: {names}[/]")
            fleetrecord.stop_recorded(
                [entry for _, entry in left],
                self.config.stop_timeout_seconds,
                lambda line: console.print(f"  {escape(line)}"),
            )
        self.record_path.unlink(missing_ok=True)

    def check_ports(self) -> None:
        """Fail before starting anything when a port the fleet needs is held, naming the holder."""
        wanted = {
            f"{name} {role}": port
            for name in self.planned_processes()
            for role, port in self.process_ports(name).items()
        }
        if not self.kafka_bootstrap and not self.config.free_ports:
            wanted["broker"] = 19092
        held = []
        for what, port in wanted.items():
            if fleetrecord.port_in_use(port):
                holders = fleetrecord.port_holders(port)
                by = ", ".join(fleetrecord.describe(h) for h in holders) or "a process this user cannot see"
                held.append(f"port {port} ({what}) is held by {by}")
        if held:
            raise FleetError(
                "cannot start the fleet:\n  "
                + "\n  ".join(held)
                + "\nStop those processes, or choose other ports (RECFLEET_GATEWAY_PORT; "
                "RECFLEET_FREE_PORTS=1 for every internal one)."
            )

    def _start_recording(self) -> None:
        """Write the fleet record and start the watchdog that stops the fleet if the runner dies."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "watchdog.log", "ab") as log:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "recfleet_ctl.watchdog", str(self.record_path), str(os.getpid()), "5"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._recording = True
        self._write_record()

    def start(self, force_pipeline: bool = False, wait: bool = True) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stop_stale_fleet()
        to_embed = self.dependencies_to_embed()
        self.check_ports()
        self._start_recording()
        self.start_embedded(to_embed)
        self.prepare_infrastructure()
        if self.config.pipeline:
            self.run_pipeline(force=force_pipeline)
        else:
            console.print("no batch pipeline (RECFLEET_PIPELINE=0): an empty install, no model version")
        self.start_services()
        self.supervise()
        if wait:
            self.wait_ready()


app = typer.Typer(add_completion=False, help="Run the whole recfleet fleet on this machine.")


@app.command()
def run(retrain: bool = typer.Option(False, help="Train a new model version even if one is serving.")) -> None:
    """Prepare data and models, start every service, serve until Ctrl-C (or SIGTERM)."""
    config = FleetConfig.from_env()
    fleet = LocalFleet(config)
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # The same wherever the runner is (training, starting, serving, stopping): note it and
        # let the main loop act. No output and no lock here: a handler runs between two
        # bytecodes of the main thread, which may be inside a write or holding a lock.
        received.append(signal.Signals(signum).name)
        fleet.request_stop(f"{signal.Signals(signum).name} received")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    code = 0
    try:
        fleet.start(force_pipeline=retrain, wait=False)
        try:
            fleet.wait_ready()
        except TimeoutError as error:
            console.print(
                f"[yellow]{escape(str(error))}; the fleet keeps running (status: "
                f"{fleet.gateway_url}/healthz/ready, logs: {fleet.log_dir}/)[/]"
            )
        else:
            example = (
                f"curl -s -H 'Authorization: Bearer {config.admin_key}' "
                f"'{fleet.gateway_url}/v1/recommendations?user_id=1&limit=10'"
            )
            console.print(f"\n[bold green]recfleet is serving on {fleet.gateway_url}[/]")
            console.print(f"  try:   {example}")
            console.print(f"  docs:  {fleet.gateway_url}/docs    logs: {fleet.log_dir}/")
            if fleet.embedded:
                servers = ", ".join(f"{server.name} {server.url}" for server in fleet.embedded.values())
                console.print(f"  embedded: {servers} (data in {fleet.state_dir}/, stopped with the fleet)")
            console.print("  Ctrl-C stops every process started here; one that exits on its own is restarted.\n")
        while fleet.stop_reason is None and fleet.failure is None:
            time.sleep(0.2)
    except FleetStopped:
        pass
    except FleetError as error:
        console.print(f"[red]{escape(str(error))}[/]")
        code = 1
    except Exception as error:
        if fleet.failure is None:  # a crash loop is told below
            console.print(f"[red]the fleet could not start: {escape(str(error))}[/]")
        code = 1
    finally:
        started = fleet.started
        if started:
            reason = fleet.stop_reason or ("a crash loop" if fleet.failure else "it could not start")
            console.print(f"stopping the fleet ({reason}) ...")
        fleet.stop()
        if len(received) > 1:
            console.print(f"received {', '.join(received[1:])} while stopping: ignored, the stop went on")
        if fleet.failure is not None:
            name = fleet.failure.split(" ", 1)[0]
            tail = "\n".join(fleet.log_tail(name, 20_000).splitlines()[-15:])
            console.print(f"[red]{escape(fleet.failure)}[/]; its last lines:\n{escape(tail)}")
            code = 1
        if started:
            console.print("stopped.")
    raise typer.Exit(code)


@app.command()
def status() -> None:
    """Print which local services answer."""
    config = FleetConfig.from_env()
    reply = httpx.get(f"http://127.0.0.1:{config.gateway_port}/healthz/ready", timeout=2)
    console.print_json(json.dumps(reply.json()))


if __name__ == "__main__":
    app()
