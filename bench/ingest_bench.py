"""Ingest throughput: events per second from the API (gRPC `Ingest`, or the gateway's
`POST /v1/events` with --gateway) until every event is a row in Postgres.

Without --gateway it starts what it measures, each as its own process: a Kafka-protocol
broker (unless KAFKA_BOOTSTRAP_SERVERS is set), a fresh migrated database, the
event-ingest API and the Postgres sink. Load comes from this process: --concurrency
batches of --batch events in flight. Prints the figures and draws events acknowledged and
events stored over time to bench/results/ingest_throughput.png.

With the parts it started, it also prints the CPU time each one spent per 1,000 events
(`cpu_ms_per_1k_events`, Linux only): on a shared machine events/s moves with everything
else running, CPU time per event much less.

    .venv/bin/python bench/ingest_bench.py --events 100000
    .venv/bin/python bench/ingest_bench.py --events 100000 --start-gateway
    .venv/bin/python bench/ingest_bench.py --gateway http://127.0.0.1:8080 --api-key $KEY \\
        --postgres-dsn postgresql://postgres@127.0.0.1:5432/recfleet
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import grpc
import httpx
import psycopg
from recfleet.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from recfleet_runtime.ports import free_port, wait_for_port
from recfleet_store.kafka import LocalBroker, ensure_topics, fleet_topics
from recfleet_store.postgres import migrate

RESULTS = Path(__file__).parent / "results"
ADMIN_DSN = os.environ.get("RECFLEET_TEST_POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BENCH_KEY = "bench-admin-key"
TYPES = ("view", "click", "like", "watch", "add_to_cart")


def make_batches(run: str, total: int, batch: int) -> list[list[dict]]:
    """Events of 1,000 users over 5,000 items, with ids generated here (so a retry is idempotent)."""
    events = [
        {
            "event_id": str(uuid.uuid4()),
            "user_id": f"{run}-u{i % 1000}",
            "item_id": f"i{(i * 7919) % 5000}",
            "type": TYPES[i % len(TYPES)],
            "context": {"surface": "bench"},
        }
        for i in range(total)
    ]
    return [events[start : start + batch] for start in range(0, total, batch)]


def to_request(events: list[dict]) -> ingest_pb2.IngestRequest:
    request = ingest_pb2.IngestRequest()
    for e in events:
        message = request.events.add(event_id=e["event_id"], user_id=e["user_id"], item_id=e["item_id"], type=e["type"])
        message.context.update(e["context"])
    return request


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of named processes since `start`."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.started: dict[str, float] = {}

    def start(self) -> None:
        self.started = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}

    def add(self, name: str, pid: int) -> None:
        """A process that appeared after `start` (its CPU until then counts too)."""
        self.pids[name] = pid

    def per_1k_events(self, events: int) -> dict[str, float]:
        used = {name: process_cpu_seconds(pid) - self.started.get(name, 0.0) for name, pid in self.pids.items()}
        used["total"] = sum(used.values())
        return {name: round(seconds * 1e6 / events, 1) for name, seconds in used.items()}


def sink_backend_pids(dsn: str) -> list[int]:
    """The Postgres backends serving the sinks, so their CPU is counted with the rest."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            ("recfleet-ingest-sink",),
        ).fetchall()
    return [pid for (pid,) in rows]


class Started(NamedTuple):
    role: str
    process: subprocess.Popen


def count_stored(dsn: str, run: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM events WHERE user_id LIKE %s", (f"{run}-%",)).fetchone()[0]


class Fleet:
    """The parts under test, started as processes; stopped by the ExitStack."""

    def __init__(self, stack: ExitStack, sinks: int, gateway: bool = False):
        self.started: list[Started] = []
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            broker = LocalBroker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
            self.started.append(Started("broker", broker.process))
        name = f"recfleet_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        stack.callback(self._drop, name)
        self.dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name)
        migrate(self.dsn)
        self.port = free_port()
        tag = uuid.uuid4().hex[:8]
        env = {
            **os.environ,
            "RECFLEET_POSTGRES_DSN": self.dsn,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "RECFLEET_EVENTS_TOPIC": f"bench.events.{tag}",
            "RECFLEET_DEAD_LETTER_TOPIC": f"bench.dlq.{tag}",
            "RECFLEET_USERS_TOPIC": f"bench.users.{tag}",
            "RECFLEET_INGEST_SINK_GROUP": f"bench-sink-{tag}",
            "RECFLEET_INGEST_GRPC_PORT": str(self.port),
            "RECFLEET_INGEST_METRICS_PORT": "0",
            "RECFLEET_INGEST_LOG_LEVEL": "WARNING",
        }
        # Services never create topics: the chart's create-topics hook does, here this.
        ensure_topics(
            bootstrap,
            fleet_topics(
                env["RECFLEET_EVENTS_TOPIC"],
                env["RECFLEET_DEAD_LETTER_TOPIC"],
                env["RECFLEET_USERS_TOPIC"],
                partitions=4,
            ),
        )
        sink_roles = ["sink"] if sinks == 1 else [f"sink {n + 1}" for n in range(sinks)]
        for role, module in (("api", "recfleet_ingest"), *((r, "recfleet_ingest.sink") for r in sink_roles)):
            process = subprocess.Popen([sys.executable, "-m", module], env=env, stdout=subprocess.DEVNULL)
            stack.callback(self._stop, process)
            self.started.append(Started(role, process))
        wait_for_port("127.0.0.1", self.port)
        self.gateway_url = None
        if gateway:
            gateway_port = free_port()
            redis_url = os.environ.get("RECFLEET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
            gateway_env = {
                **env,
                "RECFLEET_GATEWAY_PORT": str(gateway_port),
                "RECFLEET_REDIS_URL": redis_url,
                "RECFLEET_GATEWAY_EVENT_INGEST_TARGET": f"127.0.0.1:{self.port}",
                "RECFLEET_GATEWAY_METRICS_PORT": "0",
                "RECFLEET_GATEWAY_LOG_LEVEL": "WARNING",
                "RECFLEET_BOOTSTRAP_ADMIN_KEY": BENCH_KEY,
            }
            process = subprocess.Popen(
                [sys.executable, "-m", "recfleet_gateway"], env=gateway_env, stdout=subprocess.DEVNULL
            )
            stack.callback(self._stop, process)
            self.started.append(Started("gateway", process))
            wait_for_port("127.0.0.1", gateway_port)
            self.gateway_url = f"http://127.0.0.1:{gateway_port}"

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()

    @staticmethod
    def _drop(name: str) -> None:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def wait_serving(target: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("event-ingest did not become SERVING")


async def drive(send, batches: list, concurrency: int, acked: list[tuple[float, int]], began: float) -> int:
    """Send every batch with `concurrency` in flight; returns the events acknowledged."""
    queue = list(reversed(batches))
    total = 0

    async def worker() -> None:
        nonlocal total
        while queue:
            batch = queue.pop()
            accepted = await send(batch)
            total += accepted
            acked.append((time.perf_counter() - began, total))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total


async def sample_stored(dsn: str, run: str, expected: int, began: float, timeout: float) -> list[tuple[float, int]]:
    samples = []
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        stored = await asyncio.to_thread(count_stored, dsn, run)
        samples.append((time.perf_counter() - began, stored))
        if stored >= expected:
            break
        await asyncio.sleep(0.1)
    return samples


async def measure(args, dsn: str, send, batches: list, fleet: Fleet | None) -> dict:
    run_prefix = batches[0][0]["user_id"].rsplit("-", 1)[0]
    total = sum(len(b) for b in batches)
    acked: list[tuple[float, int]] = []
    meter = CpuMeter(
        {"load generator": os.getpid()} | ({s.role: s.process.pid for s in fleet.started} if fleet else {})
    )
    meter.start()
    began = time.perf_counter()
    sampler = asyncio.create_task(sample_stored(dsn, run_prefix, total, began, args.timeout))
    accepted = await drive(send, batches, args.concurrency, acked, began)
    api_seconds = time.perf_counter() - began
    stored = await sampler
    end_to_end = stored[-1][0]
    cpu = None
    if fleet:
        backends = await asyncio.to_thread(sink_backend_pids, dsn)
        for n, pid in enumerate(backends, start=1):
            meter.add("postgres (sink)" if len(backends) == 1 else f"postgres (sink {n})", pid)
        cpu = meter.per_1k_events(stored[-1][1])
    return {
        "events": total,
        "accepted": accepted,
        "stored": stored[-1][1],
        "batch": args.batch,
        "concurrency": args.concurrency,
        "sinks": None if args.gateway else args.sinks,
        "api_seconds": round(api_seconds, 2),
        "api_events_per_s": round(accepted / api_seconds),
        "end_to_end_seconds": round(end_to_end, 2),
        "end_to_end_events_per_s": round(stored[-1][1] / end_to_end),
        "cpu_ms_per_1k_events": cpu,
        "acked": acked,
        "stored_samples": stored,
    }


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*result["acked"], strict=True), label="acknowledged by the API (in Kafka)")
    ax.plot(*zip(*result["stored_samples"], strict=True), label="rows in Postgres")
    ax.set_xlabel("seconds")
    ax.set_ylabel("events")
    ax.set_title(f"{title}: {result['end_to_end_events_per_s']:,} events/s end to end")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sinks", type=int, default=1, help="sink processes in the consumer group")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the rows")
    parser.add_argument("--gateway", help="post through this running gateway URL instead of gRPC")
    parser.add_argument(
        "--start-gateway", action="store_true", help="start a gateway in front of the started API and post through it"
    )
    parser.add_argument("--api-key", default=os.environ.get("RECFLEET_BOOTSTRAP_ADMIN_KEY", ""))
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("RECFLEET_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/recfleet"),
    )
    args = parser.parse_args()
    # What the rest of the machine was doing before this run started its own processes.
    load_before = round(os.getloadavg()[0], 2)
    run = f"bench{uuid.uuid4().hex[:6]}"
    batches = make_batches(run, args.events, args.batch)
    RESULTS.mkdir(exist_ok=True)

    with ExitStack() as stack:
        fleet = None
        if not args.gateway:
            fleet = Fleet(stack, args.sinks, gateway=args.start_gateway)
            await wait_serving(f"127.0.0.1:{fleet.port}")
        gateway = args.gateway or (fleet.gateway_url if fleet else None)
        if gateway:
            key = args.api_key or BENCH_KEY
            dsn = fleet.dsn if fleet else args.postgres_dsn
            # Bodies are encoded before the clock starts, as the gRPC requests are: the load
            # generator shares the cores with what it measures.
            bodies = {id(b): json.dumps({"events": b}).encode() for b in batches}
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=30) as client:

                async def send(batch: list[dict]) -> int:
                    reply = await client.post("/v1/events", content=bodies[id(batch)])
                    reply.raise_for_status()
                    return reply.json()["accepted"]

                result = await measure(args, dsn, send, batches, fleet)
            label, name = "REST gateway -> Postgres", "ingest_throughput_gateway"
        else:
            requests = {id(b): to_request(b) for b in batches}
            async with grpc.aio.insecure_channel(f"127.0.0.1:{fleet.port}") as channel:
                stub = ingest_pb2_grpc.EventIngestStub(channel)

                async def send(batch: list[dict]) -> int:
                    return (await stub.Ingest(requests[id(batch)], timeout=30)).accepted

                result = await measure(args, fleet.dsn, send, batches, fleet)
            label, name = "gRPC Ingest -> Postgres", "ingest_throughput"

    plot(result, RESULTS / f"{name}.png", label)
    summary = {k: v for k, v in result.items() if k not in ("acked", "stored_samples")}
    summary["load_average_before"] = load_before
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"path": label, **summary}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
