"""The whole fleet on one machine, as processes: what `make run` and the e2e tests start.

Prepares Postgres (database + migrations), starts a Kafka-protocol broker when
KAFKA_BOOTSTRAP_SERVERS is unset, runs the batch pipeline when no usable model version
exists (load MovieLens, train ALS, build the shards, promote, popularity, materialize,
train the ranker), starts every service, waits for the gateway to be ready, and stops
everything it started on SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis
import typer
from recfleet_runtime.settings import KafkaSettings
from recfleet_store import keys
from recfleet_store.kafka import LocalBroker, ensure_topics, fleet_topics, free_port
from recfleet_store.postgres import ensure_database, migrate
from rich.console import Console

console = Console(stderr=True)
CANARY_CAPABLE = ("feature-store", "candidate-gen", "ranking", "event-ingest")


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
    free_ports: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    # Services that also get a canary instance (RECFLEET_CANARIES=ranking,candidate-gen),
    # and extra environment for those instances, e.g. a pinned model version.
    canaries: tuple[str, ...] = ()
    canary_env: dict[str, dict[str, str]] = field(default_factory=dict)

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
            canaries=tuple(s.strip() for s in env.get("RECFLEET_CANARIES", "").split(",") if s.strip()),
        )


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log_path: Path
    module: str
    env: dict[str, str]
    grpc_port: int | None = None


class LocalFleet:
    """Starts and stops the fleet. `ports` maps a process name to its gRPC port."""

    def __init__(self, config: FleetConfig):
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.log_dir = self.state_dir / "logs"
        self.artifact_url = f"file://{self.state_dir / 'artifacts'}"
        self.processes: dict[str, Process] = {}
        self.broker: LocalBroker | None = None
        self.kafka_bootstrap = config.kafka_bootstrap
        self.ports = self._ports()

    def _ports(self) -> dict[str, int]:
        unknown = set(self.config.canaries) - set(CANARY_CAPABLE)
        if unknown:
            raise ValueError(f"no canary instance for {sorted(unknown)}; choose from {CANARY_CAPABLE}")
        fixed = {"feature-store": 50061, "ranking": 50071, "event-ingest": 50081,
                 "feature-store-canary": 50062, "ranking-canary": 50072, "event-ingest-canary": 50082}
        ports = {name: free_port() if self.config.free_ports else port for name, port in fixed.items()}
        for shard in range(self.config.shard_count):
            ports[f"candidate-gen-{shard}"] = free_port() if self.config.free_ports else 50051 + shard
            ports[f"candidate-gen-canary-{shard}"] = free_port() if self.config.free_ports else 50151 + shard
        for name, base in (("feature-store-canary", 9122), ("ranking-canary", 9123), ("event-ingest-canary", 9124)):
            ports[f"{name}-metrics"] = free_port() if self.config.free_ports else base
        for shard in range(self.config.shard_count):
            ports[f"candidate-gen-canary-{shard}-metrics"] = free_port() if self.config.free_ports else 9130 + shard
        for name, base in (("feature-store", 9102), ("ranking", 9103), ("event-ingest", 9104), ("event-sink", 9105),
                           ("event-realtime", 9106)):
            ports[f"{name}-metrics"] = free_port() if self.config.free_ports else base
        for shard in range(self.config.shard_count):
            ports[f"candidate-gen-{shard}-metrics"] = free_port() if self.config.free_ports else 9110 + shard
        return ports

    @property
    def gateway_url(self) -> str:
        return f"http://{self.config.gateway_host}:{self.config.gateway_port}"

    # -- environment -------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
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
            env.update(RECFLEET_FEATURES_GRPC_PORT=str(p[f"feature-store{suffix}"]),
                       RECFLEET_FEATURES_METRICS_PORT=str(p[f"feature-store{suffix}-metrics"]))
        elif name == "candidate-gen":
            env.update(RECFLEET_CANDIDATES_GRPC_PORT=str(p[f"candidate-gen{suffix}-{shard}"]),
                       RECFLEET_CANDIDATES_METRICS_PORT=str(p[f"candidate-gen{suffix}-{shard}-metrics"]),
                       RECFLEET_CANDIDATES_SHARD=str(shard),
                       RECFLEET_CANDIDATES_SHARD_COUNT=str(self.config.shard_count),
                       RECFLEET_CANDIDATES_REGISTRY_POLL_SECONDS="2")
        elif name == "ranking":
            env.setdefault("RECFLEET_RANKING_FEATURE_STORE_TIMEOUT", "0.1")
            env.update(RECFLEET_RANKING_GRPC_PORT=str(p[f"ranking{suffix}"]),
                       RECFLEET_RANKING_METRICS_PORT=str(p[f"ranking{suffix}-metrics"]),
                       RECFLEET_RANKING_FEATURE_STORE_TARGET=f"127.0.0.1:{p['feature-store']}")
        elif name in ("event-ingest", "event-sink", "event-realtime"):
            env.update(RECFLEET_INGEST_GRPC_PORT=str(p[f"event-ingest{suffix}"]),
                       RECFLEET_INGEST_METRICS_PORT=str(p[f"{name}{suffix}-metrics"]))
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

    def prepare_infrastructure(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ensure_database(self.config.postgres_dsn)
        migrate(self.config.postgres_dsn)
        if not self.kafka_bootstrap:
            self.broker = LocalBroker.start(port=None if self.config.free_ports else 19092,
                                            log_path=str(self.log_dir / "broker.log"))
            self.kafka_bootstrap = self.broker.bootstrap
            console.print(f"[green]started[/] Kafka-protocol broker on {self.kafka_bootstrap} (memory only)")
        topics = KafkaSettings()
        ensure_topics(self.kafka_bootstrap, fleet_topics(topics.events_topic, topics.dead_letter_topic, topics.users_topic))

    def job(self, *args: str) -> str:
        """Run one batch job; its output goes to the console and is returned."""
        console.print(f"[bold]recfleet-jobs {' '.join(args)}[/]")
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "recfleet_jobs", *args], env=self.base_env(), stdout=subprocess.PIPE, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"recfleet-jobs {' '.join(args)} failed with exit code {result.returncode}")
        console.print(f"  done in {time.perf_counter() - started:.1f}s")
        return result.stdout

    def _serving_version_usable(self) -> bool:
        with psycopg.connect(self.config.postgres_dsn) as conn:
            row = conn.execute("SELECT version FROM model_versions WHERE kind = 'als' AND status = 'serving'").fetchone()
        if row is None:
            return False
        manifest = self.state_dir / "artifacts" / "models" / "als" / row[0] / "index" / "manifest.json"
        client = redis.Redis.from_url(self.config.redis_url)
        try:
            in_redis = client.get(keys.SERVING_VERSION) == row[0].encode()
        finally:
            client.close()
        return manifest.is_file() and in_redis

    def run_pipeline(self, force: bool = False) -> None:
        self.job("load-movielens", "--data-dir", self.config.data_dir)
        if force or not self._serving_version_usable():
            output = self.job("train-als")
            version = next(line.split("=", 1)[1] for line in reversed(output.splitlines()) if line.startswith("version="))
            self.job("build-index", "--version", version, "--shards", str(self.config.shard_count))
            self.job("promote", "--kind", "als", "--version", version)
            trained = True
        else:
            console.print("reusing the serving model version")
            trained = False
        self.job("popularity")
        self.job("materialize", "--full")
        if self.config.train_ranker and (trained or not self._ranker_serving()):
            try:
                self.job("train-ranker", "--promote")
            except RuntimeError as error:
                console.print(f"[yellow]ranker not trained ({error}); ranking serves the rule formula[/]")

    def _ranker_serving(self) -> bool:
        with psycopg.connect(self.config.postgres_dsn) as conn:
            return conn.execute("SELECT 1 FROM model_versions WHERE kind = 'ranker' AND status = 'serving'").fetchone() is not None

    # -- processes ---------------------------------------------------------------

    def start_process(self, name: str, module: str, env: dict[str, str], grpc_port: int | None = None) -> Process:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log_file:  # the child keeps its own copy
            popen = subprocess.Popen(
                [sys.executable, "-m", module], env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        process = Process(name, popen, log_path, module, env, grpc_port)
        self.processes[name] = process
        return process

    def start_services(self) -> None:
        self.start_process("feature-store", "recfleet_features", self.service_env("feature-store"), self.ports["feature-store"])
        for shard in range(self.config.shard_count):
            self.start_process(f"candidate-gen-{shard}", "recfleet_candidates", self.service_env("candidate-gen", shard),
                               self.ports[f"candidate-gen-{shard}"])
        self.start_process("ranking", "recfleet_ranking", self.service_env("ranking"), self.ports["ranking"])
        self.start_process("event-ingest", "recfleet_ingest", self.service_env("event-ingest"), self.ports["event-ingest"])
        self.start_process("event-sink", "recfleet_ingest.sink", self.service_env("event-sink"))
        self.start_process("event-realtime", "recfleet_ingest.realtime", self.service_env("event-realtime"))
        for service in self.config.canaries:
            if service == "candidate-gen":
                for shard in range(self.config.shard_count):
                    self.start_process(f"candidate-gen-canary-{shard}", "recfleet_candidates",
                                       self.service_env("candidate-gen", shard, canary=True),
                                       self.ports[f"candidate-gen-canary-{shard}"])
            else:
                module = {"feature-store": "recfleet_features", "ranking": "recfleet_ranking",
                          "event-ingest": "recfleet_ingest"}[service]
                self.start_process(f"{service}-canary", module, self.service_env(service, canary=True),
                                   self.ports[f"{service}-canary"])
        self.start_process("gateway", "recfleet_gateway", self.service_env("gateway"))

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for process in self.processes.values():
                if process.popen.poll() is not None:
                    tail = process.log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{tail}")
            try:
                reply = httpx.get(f"{self.gateway_url}/healthz/ready", timeout=2)
                if reply.status_code == 200:
                    return
                last = reply.text
            except httpx.HTTPError as error:
                last = str(error)
            time.sleep(0.5)
        raise TimeoutError(f"the gateway was not ready after {timeout:.0f}s: {last}")

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        process = self.processes[name]
        if process.popen.poll() is None:
            os.killpg(process.popen.pid, sig)
            try:
                process.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait()

    def restart_process(self, name: str) -> None:
        process = self.processes[name]
        self.stop_process(name)
        self.start_process(name, process.module, process.env, process.grpc_port)

    def stop(self) -> None:
        # The gateway first, so no request reaches a stopped service.
        for name in sorted(self.processes, key=lambda n: n != "gateway"):
            self.stop_process(name)
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def start(self, force_pipeline: bool = False) -> None:
        self.prepare_infrastructure()
        self.run_pipeline(force=force_pipeline)
        self.start_services()
        self.wait_ready()


app = typer.Typer(add_completion=False, help="Run the whole recfleet fleet on this machine.")


@app.command()
def run(retrain: bool = typer.Option(False, help="Train a new model version even if one is serving.")) -> None:
    """Prepare data and models, start every service, serve until Ctrl-C."""
    config = FleetConfig.from_env()
    fleet = LocalFleet(config)
    stop_requested = False

    def request_stop(*_):
        # SIGTERM behaves like Ctrl-C wherever the runner is: training, starting, serving.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, request_stop)
    try:
        fleet.start(force_pipeline=retrain)
        example = (f"curl -s -H 'Authorization: Bearer {config.admin_key}' "
                   f"'{fleet.gateway_url}/v1/recommendations?user_id=1&limit=10'")
        console.print(f"\n[bold green]recfleet is serving on {fleet.gateway_url}[/]")
        console.print(f"  try:   {example}")
        console.print(f"  docs:  {fleet.gateway_url}/docs    logs: {fleet.log_dir}/")
        console.print("  Ctrl-C stops every process started here.\n")
        while not stop_requested:
            for process in fleet.processes.values():
                if process.popen.poll() is not None:
                    console.print(f"[red]{process.name} exited ({process.popen.returncode}); see {process.log_path}[/]")
                    stop_requested = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        console.print("stopping the fleet ...")
        fleet.stop()
        console.print("stopped.")


@app.command()
def status() -> None:
    """Print which local services answer."""
    config = FleetConfig.from_env()
    reply = httpx.get(f"http://127.0.0.1:{config.gateway_port}/healthz/ready", timeout=2)
    console.print_json(json.dumps(reply.json()))


if __name__ == "__main__":
    app()
