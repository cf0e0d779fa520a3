"""The chaos suite: what a user gets while one dependency of the fleet dies under load.

It starts a fleet that owns every dependency it will kill (`chaos_infra.py`: its own
PostgreSQL cluster, redis-server and broker on free ports, Postgres and Redis reached
through delay proxies), offers steady load (recommendations over many users, open loop,
each a cache miss; events in batches with unique ids), and runs each scenario in turn:
the fault for `--fault-seconds`, then `--recover-seconds` for the fleet to recover.

- `kill:<target>`: SIGKILL (every process of it). A service is started again by the
  local runner's supervisor, as Kubernetes would restart its container; Postgres, Redis
  and the broker by this suite after `--restart-after` seconds.
- `stop:<target>`: SIGSTOP, then SIGCONT after the fault time (a hung process or node).
- `slow:postgres`, `slow:redis`: every answer held back by `--slow-ms` for the fault time.
- `restart:gateway`: SIGTERM to the gateway, which drains and exits; the supervisor starts
  it again.

Per scenario it reports the share of recommendation requests answered 2xx (fallback rungs
count; which rung served), p99 during the fault and after, how long until answers were
full again (2xx and not degraded), events accepted (202) against events stored in Postgres
exactly once (lost, duplicated), and the metric signals an alert would have seen.

    make chaos                                  # every scenario, writes docs/reliability.md
    .venv/bin/python bench/chaos.py --scenarios stop:ranking,kill:event-sink --fault-seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psycopg
import yaml
from chaos_alerts import PROMTOOL, Scraper, alerts_in, conditions_held, rendered_rules
from chaos_infra import DelayProxy, Dependency, OwnBroker, OwnPostgres, OwnRedis
from loadgen import ConnectionLost, LeanClient
from recfleet_ctl import fleetrecord
from recfleet_ctl.localfleet import FleetConfig, LocalFleet
from recfleet_runtime.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ADMIN_KEY = "chaos-admin-key"
PROCESSES = ("candidate-gen-0", "ranking", "feature-store", "event-ingest", "event-sink", "event-realtime")
DEPENDENCIES = ("redis", "postgres", "broker")
# The broker's last: the local broker keeps everything in memory, so its restart is the
# one fault whose effects (docs/reliability.md) would carry into the scenarios after it.
ALL_SCENARIOS = (
    *(f"{kind}:{target}" for target in (*PROCESSES, "redis", "postgres") for kind in ("kill", "stop")),
    "slow:postgres",
    "slow:redis",
    "restart:gateway",
    "stop:broker",
    "kill:broker",
)
QUICK_SCENARIOS = ("stop:ranking", "kill:event-sink", "kill:candidate-gen-0")
# Scenarios whose goal is the ladder's last rung rather than 99.9% 2xx (the words).
STATE_STORES = ("redis", "postgres")


@dataclass
class Answer:
    due: float
    latency: float
    status: int  # 0: no HTTP answer (connection refused or lost, timeout)
    served_by: str = ""
    degraded: tuple[str, ...] = ()

    @property
    def full(self) -> bool:
        return 200 <= self.status < 300 and not self.degraded


@dataclass
class Batch:
    due: float
    status: int
    event_ids: list[str]


@dataclass
class Load:
    """Open-loop load: every request is due at a fixed time, and its latency counts from then."""

    client: LeanClient
    users: list[str]
    items: list[str]
    rate: float
    event_rate: float
    event_batch: int
    answers: list[Answer] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    # The first problem `detail` seen for each (route, status), to say why requests failed.
    problems: dict[str, str] = field(default_factory=dict)
    _stop: bool = False

    async def recommendations(self) -> None:
        rng, nonce = random.Random(1), uuid.uuid4().hex[:8]
        start, index = time.monotonic(), 0
        pending: set[asyncio.Task] = set()
        while not self._stop:
            due = start + index / self.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            params = {
                "user_id": rng.choice(self.users),
                "limit": rng.randint(5, 30),
                "surface": f"chaos-{nonce}-{index}",
            }
            task = asyncio.create_task(self._recommend(due, params))
            pending.add(task)
            task.add_done_callback(pending.discard)
            index += 1
        await asyncio.gather(*pending)

    async def _recommend(self, due: float, params: dict) -> None:
        try:
            status, body = await self.client.get("/v1/recommendations", params)
        except (OSError, TimeoutError, ConnectionLost):
            self.answers.append(Answer(due, time.monotonic() - due, 0))
            return
        answer = Answer(due, time.monotonic() - due, status)
        self._note_problem("recommendations", status, body)
        if status == 200:
            page = orjson.loads(body)
            answer.served_by, answer.degraded = page.get("served_by", ""), tuple(page.get("degraded") or ())
        self.answers.append(answer)

    async def events(self) -> None:
        rng = random.Random(2)
        interval = self.event_batch / self.event_rate
        start, index = time.monotonic(), 0
        pending: set[asyncio.Task] = set()
        while not self._stop:
            due = start + index * interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            batch = [
                {
                    "event_id": str(uuid.uuid4()),
                    "user_id": rng.choice(self.users),
                    "item_id": rng.choice(self.items),
                    "type": "view",
                }
                for _ in range(self.event_batch)
            ]
            task = asyncio.create_task(self._send_events(due, batch))
            pending.add(task)
            task.add_done_callback(pending.discard)
            index += 1
        await asyncio.gather(*pending)

    async def _send_events(self, due: float, batch: list[dict]) -> None:
        try:
            status, body = await self.client.post("/v1/events", orjson.dumps({"events": batch}))
        except (OSError, TimeoutError, ConnectionLost):
            self.batches.append(Batch(due, 0, []))
            return
        self._note_problem("events", status, body)
        # Only the ids the gateway says it accepted count (202 names them).
        accepted = orjson.loads(body).get("event_ids", []) if status == 202 else []
        self.batches.append(Batch(due, status, accepted))

    def _note_problem(self, route: str, status: int, body: bytes) -> None:
        if status >= 400 and f"{route} {status}" not in self.problems:
            try:
                self.problems[f"{route} {status}"] = str(orjson.loads(body).get("detail", ""))[:200]
            except orjson.JSONDecodeError:
                self.problems[f"{route} {status}"] = body[:200].decode(errors="replace")

    def stop(self) -> None:
        self._stop = True


class ChaosFleet:
    """The fleet and the dependencies it may lose, all under one temporary directory."""

    def __init__(self, root: Path, train_ranker: bool):
        self.root = root
        root.chmod(0o755)  # the Postgres server runs as its own user and must reach its directory
        self.postgres = OwnPostgres(root / "postgres")
        self.redis = OwnRedis(root / "redis")
        self.broker = OwnBroker(root / "broker")
        self.train_ranker = train_ranker
        self.proxies: list[DelayProxy] = []
        self.fleet: LocalFleet | None = None

    def start(self) -> None:
        """Dependencies, proxies, then the fleet; `close` stops whatever of it started."""
        for dependency in (self.postgres, self.redis, self.broker):
            dependency.start()
        self.pg_proxy = DelayProxy(self.postgres.port)
        self.redis_proxy = DelayProxy(self.redis.port)
        self.proxies = [self.pg_proxy, self.redis_proxy]
        config = FleetConfig(
            state_dir=self.root / "fleet",
            postgres_dsn=f"postgresql://postgres@127.0.0.1:{self.pg_proxy.port}/recfleet",
            redis_url=f"redis://127.0.0.1:{self.redis_proxy.port}/0",
            kafka_bootstrap=self.broker.bootstrap,
            gateway_port=free_port(),
            admin_key=ADMIN_KEY,
            train_ranker=self.train_ranker,
            free_ports=True,
            # The load is many users from one key: per-user and per-key limits stay out of it.
            extra_env={
                "RECFLEET_GATEWAY_RATE_LIMIT_PER_USER": "100000/minute",
                "RECFLEET_GATEWAY_RATE_LIMIT_PER_KEY": "100000/second",
            },
            restart_limit=50,
        )
        self.fleet = LocalFleet(config)
        self.fleet.start()

    @property
    def gateway_url(self) -> str:
        assert self.fleet is not None
        return self.fleet.gateway_url

    def metrics_urls(self) -> dict[str, str]:
        """Each process's /metrics, by process name."""
        assert self.fleet is not None
        urls = {"gateway": self.fleet.gateway_metrics_url}
        for name in self.fleet.processes:
            port = self.fleet.process_ports(name).get("metrics")
            if port and name != "gateway":
                urls[name] = f"http://127.0.0.1:{port}/metrics"
        return urls

    def dependency(self, name: str) -> Dependency:
        return {"postgres": self.postgres, "redis": self.redis, "broker": self.broker}[name]

    def process_pid(self, name: str) -> int:
        assert self.fleet is not None
        return self.fleet.processes[name].popen.pid

    def restart_dependency(self, name: str) -> None:
        self.dependency(name).start()
        if name == "broker" and self.fleet is not None:
            self.fleet.create_topics()  # a memory-only broker comes back without them

    def close(self) -> None:
        try:
            if self.fleet is not None:
                self.fleet.stop()
        finally:
            for proxy in self.proxies:
                proxy.stop()
            for dependency in (self.broker, self.redis, self.postgres):
                dependency.stop()


async def inject(chaos: ChaosFleet, scenario: str, fault_seconds: float, restart_after: float, slow_ms: float) -> None:
    """The fault, from its start to its end (a killed dependency is started again within it)."""
    kind, target = scenario.split(":", 1)
    if kind == "slow":
        proxy = chaos.pg_proxy if target == "postgres" else chaos.redis_proxy
        proxy.set_delay(slow_ms / 2000)  # each way: an exchange waits slow_ms more
        await asyncio.sleep(fault_seconds)
        proxy.set_delay(0.0)
    elif kind == "restart":
        fleetrecord.signal_group(chaos.process_pid(target), 15)
        await asyncio.sleep(fault_seconds)
    elif target in DEPENDENCIES:
        dependency = chaos.dependency(target)
        if kind == "kill":
            await asyncio.to_thread(dependency.kill)
            await asyncio.sleep(restart_after)
            await asyncio.to_thread(chaos.restart_dependency, target)
            await asyncio.sleep(max(0.0, fault_seconds - restart_after))
        else:
            dependency.freeze()
            await asyncio.sleep(fault_seconds)
            dependency.thaw()
    else:
        pid = chaos.process_pid(target)
        if kind == "kill":
            fleetrecord.signal_group(pid, 9)  # the supervisor notices and starts it again
            await asyncio.sleep(fault_seconds)
        else:
            fleetrecord.signal_group(pid, 19)
            await asyncio.sleep(fault_seconds)
            fleetrecord.signal_group(pid, 18)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def stored_counts(dsn: str, event_ids: list[str]) -> Counter[str]:
    """How many rows of `events` hold each of these ids."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT event_id::text, count(*) FROM events WHERE event_id = ANY(%s::uuid[]) GROUP BY event_id",
            (event_ids,),
        ).fetchall()
    return Counter(dict(rows))


def wait_for_sink(dsn: str, accepted: list[str], settle: float, limit: float) -> Counter[str]:
    """The stored counts once every accepted event is in Postgres, or nothing more has
    arrived for `settle` seconds (what never arrives by then is lost)."""
    deadline, last, since = time.monotonic() + limit, -1, time.monotonic()
    while True:
        counts = stored_counts(dsn, accepted)
        if len(counts) == len(set(accepted)) or time.monotonic() > deadline:
            return counts
        if len(counts) != last:
            last, since = len(counts), time.monotonic()
        elif time.monotonic() - since > settle:
            return counts
        time.sleep(1.0)


def summarise(scenario: str, window: tuple[float, float, float], load: Load, counts: Counter[str]) -> dict:
    start, fault_end, end = window
    answers = [a for a in load.answers if start <= a.due < end]
    during = [a.latency * 1000 for a in answers if a.due < fault_end]
    after = [a.latency * 1000 for a in answers if a.due >= fault_end]
    ok = [a for a in answers if 200 <= a.status < 300]
    not_full = [a for a in answers if not a.full]
    accepted = [i for b in load.batches if start <= b.due < end for i in b.event_ids]
    offered = sum(1 for b in load.batches if start <= b.due < end)
    refused = Counter(str(b.status) for b in load.batches if start <= b.due < end and b.status != 202)
    return {
        "scenario": scenario,
        "requests": len(answers),
        "ok_share": round(len(ok) / len(answers), 5) if answers else None,
        "served_by": dict(Counter(a.served_by or f"http {a.status}" for a in answers)),
        "degraded": dict(Counter(d for a in answers for d in a.degraded)),
        "p99_during_ms": _rounded(percentile(during, 99)),
        "p99_after_ms": _rounded(percentile(after, 99)),
        # From the fault's start until the last answer that was not full (0: none was).
        "recovered_after_s": round(max(a.due for a in not_full) - start, 1) if not_full else 0.0,
        "event_batches": offered,
        "event_batches_refused": dict(refused),
        "events_accepted": len(accepted),
        "events_stored_once": sum(1 for i in accepted if counts.get(i) == 1),
        "events_lost": sum(1 for i in accepted if i not in counts),
        "events_duplicated": sum(1 for i in accepted if counts.get(i, 0) > 1),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def wait_full(load: Load, seconds: float, limit: float) -> None:
    """Until the last `seconds` of answers were all full (or `limit` passes)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        recent = [a for a in load.answers if now - seconds - 2 <= a.due < now - 2]
        if recent and all(a.full for a in recent):
            return


async def drive(chaos: ChaosFleet, args: argparse.Namespace) -> tuple[list[dict], dict[str, str]]:
    with psycopg.connect(chaos.postgres.dsn) as conn:
        users = [r[0] for r in conn.execute("SELECT DISTINCT user_id FROM events ORDER BY 1 LIMIT 5000")]
        items = [r[0] for r in conn.execute("SELECT item_id FROM items ORDER BY 1 LIMIT 5000")]
    client = LeanClient(chaos.gateway_url, {"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=args.timeout)
    load = Load(client, users, items, args.rate, args.event_rate, args.event_batch)
    scraper = Scraper(chaos.metrics_urls(), args.scrape_seconds)
    runners = [asyncio.create_task(load.recommendations()), asyncio.create_task(load.events())]
    runners.append(asyncio.create_task(scraper.run()))
    windows: dict[str, tuple[float, float, float]] = {}
    try:
        await asyncio.sleep(args.warmup_seconds)
        for scenario in args.scenarios:
            await wait_full(load, 3.0, 60.0)
            print(f"{time.strftime('%H:%M:%S')} {scenario}: fault for {args.fault_seconds:g}s", flush=True)
            start = time.monotonic()
            await inject(chaos, scenario, args.fault_seconds, args.restart_after, args.slow_ms)
            fault_end = time.monotonic()
            await asyncio.sleep(args.recover_seconds)
            windows[scenario] = (start, fault_end, time.monotonic())
    finally:
        load.stop()
        scraper.stop()
        await asyncio.gather(*runners)
        await client.close()
    accepted = [i for b in load.batches for i in b.event_ids]
    counts = await asyncio.to_thread(wait_for_sink, chaos.postgres.dsn, accepted, 20.0, 180.0)
    results = [summarise(scenario, window, load, counts) for scenario, window in windows.items()]
    if not PROMTOOL.exists():
        print(f"no {PROMTOOL.relative_to(ROOT)} (`make tools`): alert conditions not evaluated")
        return results, load.problems
    try:
        held = await asyncio.to_thread(conditions_held, scraper, rendered_rules())
    except (RuntimeError, OSError, subprocess.SubprocessError, yaml.YAMLError) as error:
        print(f"alert conditions not evaluated: {error}")  # the other figures still stand
        return results, load.problems
    for result, (start, _, end) in zip(results, windows.values(), strict=True):
        result["alerts"] = alerts_in(held, start, end, before=10.0)
    return results, load.problems


def table(results: list[dict]) -> str:
    lines = [
        "| scenario | requests | 2xx | rungs (answers) | p99 during / after (ms) | full again after (s) "
        "| events accepted | lost | duplicated | alert conditions that began |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rungs = ", ".join(f"{k} {v}" for k, v in sorted(r["served_by"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| `{r['scenario']}` | {r['requests']} | {100 * (r['ok_share'] or 0):.2f}% | {rungs} "
            f"| {r['p99_during_ms']} / {r['p99_after_ms']} | {r['recovered_after_s']} "
            f"| {r['events_accepted']} | {r['events_lost']} | {r['events_duplicated']} "
            f"| {', '.join(r.get('alerts', {}).get('new', [])) or 'none'} |"
        )
    return "\n".join(lines)


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["scenario"] for r in results]
    fig, (share, lost) = plt.subplots(1, 2, figsize=(13, 0.35 * len(names) + 1.5), sharey=True)
    share.barh(names, [100 * (r["ok_share"] or 0) for r in results], color="#4C78A8")
    share.axvline(99.9, color="#E45756", linestyle="--", linewidth=1, label="goal 99.9%")
    share.set_xlim(min(90.0, min(100 * (r["ok_share"] or 0) for r in results) - 1), 100.2)
    share.set_xlabel("recommendation requests answered 2xx (%)")
    share.legend(loc="lower left")
    share.invert_yaxis()
    lost.barh(names, [r["events_lost"] for r in results], color="#F58518", label="lost")
    lost.barh(
        names,
        [r["events_duplicated"] for r in results],
        left=[r["events_lost"] for r in results],
        color="#54A24B",
        label="duplicated",
    )
    lost.set_xlabel("accepted events lost / duplicated")
    lost.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(results: list[dict], args: dict[str, str], docs: Path) -> None:
    """Replace the block between the chaos markers of docs/reliability.md."""
    begin, end = "<!-- chaos-results:begin -->", "<!-- chaos-results:end -->"
    text = docs.read_text()
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    block = (
        f"{begin}\nMeasured {time.strftime('%Y-%m-%d')} with `bench/chaos.py {args.get('command', '')}`: "
        f"{float(args['rate']):g} recommendation requests/s (cache misses) and {float(args['event_rate']):g} "
        f"events/s in batches of {args['event_batch']}, fault {float(args['fault_seconds']):g} s, recovery "
        f"{float(args['recover_seconds']):g} s, on this "
        f"machine's shared cores (the load generator too).\n\n{table(results)}\n\n"
        f"![chaos results](images/chaos.png)\n{end}"
    )
    docs.write_text(head + block + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help="comma-separated; 'quick' for a short set")
    # What this 2-core machine carries with no fault and nothing degraded (docs/reliability.md).
    parser.add_argument("--rate", type=float, default=40.0, help="recommendation requests per second")
    parser.add_argument("--event-rate", type=float, default=400.0, help="events per second")
    parser.add_argument("--event-batch", type=int, default=50)
    parser.add_argument("--fault-seconds", type=float, default=10.0)
    parser.add_argument("--recover-seconds", type=float, default=20.0)
    parser.add_argument("--restart-after", type=float, default=3.0, help="a killed dependency starts again after")
    parser.add_argument("--slow-ms", type=float, default=200.0)
    parser.add_argument("--warmup-seconds", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="a request's client-side timeout")
    parser.add_argument("--scrape-seconds", type=float, default=5.0, help="metrics scrape interval")
    parser.add_argument("--no-ranker", action="store_true", help="skip training the ranker (faster start)")
    parser.add_argument("--json", type=Path, default=RESULTS / "chaos.json")
    parser.add_argument("--docs", action="store_true", help="write the table and chart into docs/reliability.md")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="run nothing: print (and with --docs write) a run's saved results"
    )
    args = parser.parse_args()
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        return report(saved["results"], saved.get("problems", {}), saved["args"], args.docs)
    args.scenarios = list(QUICK_SCENARIOS) if args.scenarios == "quick" else args.scenarios.split(",")
    unknown = [s for s in args.scenarios if s not in ALL_SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(ALL_SCENARIOS)}")

    # SIGTERM unwinds like Ctrl-C, so the fleet and every dependency started here stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="recfleet-chaos-"))
    chaos = ChaosFleet(root, train_ranker=not args.no_ranker)
    try:
        chaos.start()
        results, problems = asyncio.run(drive(chaos, args))
    finally:
        chaos.close()
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs and data kept in {root}")
    # Where the results were written is the caller's business, not the run's.
    run_args = {k: str(v) for k, v in vars(args).items() if k not in ("json", "report")}
    run_args["command"] = " ".join(a for a in sys.argv[1:] if not a.startswith("/")) or "make chaos"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": run_args, "results": results, "problems": problems}, indent=2))
    return report(results, problems, run_args, args.docs)


def report(results: list[dict], problems: dict[str, str], run_args: dict[str, str], docs: bool) -> int:
    print(table(results))
    for route_status, detail in problems.items():
        print(f"first {route_status}: {detail}")
    print(f"median 2xx share over scenarios: {statistics.median(r['ok_share'] or 0 for r in results):.4f}")
    if docs:
        chart(results, ROOT / "docs" / "images" / "chaos.png")
        write_docs(results, run_args, ROOT / "docs" / "reliability.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
