"""Ranking latency for 100, 500 and 1,000 candidates: in-process core and over gRPC.

    .venv/bin/python bench/ranking_bench.py                  # 1,000 calls per series
    .venv/bin/python bench/ranking_bench.py --calls 3000 --redis-url redis://127.0.0.1:6379/3

In-process series time `RankingPipeline.rank` (filters, scoring, diversity re-ranking,
response entries) on candidates whose item features are already loaded:

- core-rules: the rule formula;
- core-ranker: the LightGBM lambdarank ranker (80 trees of up to 15 leaves and depth 5,
  as `train-ranker` trains it), single-threaded predict;
- core-ranker-explain: the same with `pred_contrib` explanations of the 20 returned items.

The gRPC series starts `python -m recfleet_features` and `python -m recfleet_ranking` as
their own processes (a scratch Postgres database, `--redis-url` for item features, a
scratch artifact directory holding the promoted ranker) and times calls from this
process, one in flight, limit 20: item features (from ranking's in-process cache after
the warm-up; `GetItemFeatures` for what it lacks) plus everything above, plus protobuf
mapping both ways.

- grpc-rank: `Rank` with one `ScoredItem` message per candidate, answered in `items`;
- grpc-rank-packed: `Rank` with the candidates as parallel arrays (`candidate_list`),
  answered packed (`ranked`);
- grpc-rank-batch-8: one `RankBatch` of 8 packed requests (8 users, 500 candidates
  each): the latency of the whole batch, shown in the 500 column;
- grpc-feature-store-only: the `GetItemFeatures` call for every candidate alone (what a
  Rank call costs when ranking's item cache holds nothing).

Prints p50/p99 per series, writes a chart and the figures as JSON to bench/results/.
The seeded Redis keys and the scratch database are removed afterwards. Nothing passes or
fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import orjson
import psycopg
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recfleet.common.v1 import common_pb2
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from recfleet_models.ranking.artifacts import write_ranker
from recfleet_models.ranking.features import (
    ITEM_FEATURE_NAMES,
    Candidate,
    CandidateColumns,
    UserContext,
    assign_ranks,
)
from recfleet_models.ranking.learned import FEATURE_NAMES, LearnedRanker, feature_matrix, model_meta
from recfleet_models.ranking.training import Groups, RankerParams, fit_booster
from recfleet_ranking.pipeline import RankingPipeline, RankQuery
from recfleet_runtime.ports import free_port
from recfleet_store import keys
from recfleet_store.artifacts import DirectoryArtifactStore
from recfleet_store.postgres import migrate
from recfleet_store.registry import promote, register_version

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (100, 500, 1000)
BATCH = 8
BATCH_SIZE = 500
NOW = time.time()
CATEGORIES = ["Drama", "Comedy", "Action", "Thriller", "Romance", "Adventure", "Crime", "Sci-Fi", "Horror", "Fantasy"]
VERSION = "ranker-bench"


def item_features(i: int, rng: np.random.Generator) -> dict:
    k = int(rng.integers(1, 4))
    return {
        "categories": [CATEGORIES[(i + j * 3) % len(CATEGORIES)] for j in range(k)],
        "creator": f"studio-{i % 40}" if i % 3 else "",
        "published_at": float(NOW - rng.integers(1, 20 * 365) * 86_400),
        "age_rating": int(rng.choice([0, 0, 7, 13, 16])),
        "regions": [],
        "available": 1,
        "popularity": float(rng.random()),
        "popularity_7d": float(rng.random()),
    }


def make_candidates(n: int, seed: int = 0) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = item_features(i, rng)
        out.append(
            Candidate(
                f"bench-{i}",
                float(rng.random()),
                "als",
                categories=tuple(f["categories"]),
                creator=f["creator"],
                published_at=f["published_at"],
                age_rating=f["age_rating"],
                popularity=f["popularity"],
                popularity_7d=f["popularity_7d"],
            )
        )
    return out


def bench_user() -> UserContext:
    return UserContext(
        "bench-user",
        age=30,
        country="DE",
        preferred_categories=frozenset({"Drama"}),
        features={"interaction_count": 42.0, "affinity:Drama": 0.4, "affinity:Comedy": 0.2},
    )


def train_model() -> str:
    """A ranker trained as `train-ranker` trains it, on synthetic groups (latency depends on
    the model's size, not its skill)."""
    rng = np.random.default_rng(1)
    xs, ys = [], []
    for g in range(300):
        candidates = make_candidates(70, seed=g)
        assign_ranks(candidates)
        xs.append(feature_matrix(candidates, bench_user(), NOW))
        ys.append((rng.random(70) < 0.1).astype(int))
    train, valid = Groups(xs[:270], ys[:270]), Groups(xs[270:], ys[270:])
    columns = np.arange(len(FEATURE_NAMES))
    return fit_booster(train, valid, FEATURE_NAMES, columns, RankerParams(min_data_in_leaf=5)).model_to_string()


def percentiles(samples: list[float]) -> dict:
    ms = np.asarray(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "calls": len(samples),
    }


def bench_core(ranker: LearnedRanker, calls: int) -> dict:
    results = {}
    pipeline = RankingPipeline(model_budget_seconds=1.0)
    for n in SIZES:
        # The service ranks columns (its item cache holds features as columns).
        candidates = make_candidates(n)
        assign_ranks(candidates)
        base = CandidateColumns.of(candidates)
        for series, model, explain in (
            ("core-rules", None, False),
            ("core-ranker", ranker, False),
            ("core-ranker-explain", ranker, True),
        ):
            samples = []
            for _ in range(calls):
                query = RankQuery(bench_user(), base, limit=20, explain=explain)
                started = time.perf_counter()
                pipeline.rank(query, model)
                samples.append(time.perf_counter() - started)
            results.setdefault(series, {})[n] = percentiles(samples[calls // 10 :])
    return results


async def wait_serving(target: str, seconds: float = 60) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{target} did not become SERVING")


async def bench_feature_store(target: str, calls: int) -> dict:
    """The feature-store hop alone: the GetItemFeatures call ranking makes per Rank."""
    results = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = features_pb2_grpc.FeatureStoreStub(channel)
        for n in SIZES:
            request = features_pb2.GetItemFeaturesRequest(
                item_ids=[f"bench-{i}" for i in range(n)], feature_names=list(ITEM_FEATURE_NAMES)
            )
            samples = []
            for _ in range(calls):
                started = time.perf_counter()
                await stub.GetItemFeatures(request, timeout=2)
                samples.append(time.perf_counter() - started)
            results[n] = percentiles(samples[calls // 10 :])
    return {"grpc-feature-store-only": results}


def rank_request(n: int, user: str = "bench-user", seed: int | None = None, packed: bool = False):
    rng = np.random.default_rng(n if seed is None else seed)
    ids, scores = [f"bench-{i}" for i in range(n)], rng.random(n).tolist()
    request = ranking_pb2.RankRequest(
        user_id=user,
        limit=20,
        constraints=common_pb2.UserConstraints(age=30, country="DE", preferred_categories=["Drama"]),
        user_features={"interaction_count": 42.0, "affinity:Drama": 0.4},
        packed=packed,
    )
    if packed:
        request.candidate_list.item_ids.extend(ids)
        request.candidate_list.scores.extend(scores)
        request.candidate_list.sources.extend(["als"] * n)
    else:
        request.candidates.extend(
            common_pb2.ScoredItem(item_id=i, score=score, source="als") for i, score in zip(ids, scores, strict=True)
        )
    return request


async def timed(call, calls: int) -> tuple[dict, set]:
    samples, served = [], set()
    for _ in range(calls):
        started = time.perf_counter()
        reply = await call()
        samples.append(time.perf_counter() - started)
        replies = [r.response for r in reply.results] if hasattr(reply, "results") else [reply]
        served.update((r.served_by, tuple(r.degraded)) for r in replies)
    return percentiles(samples[calls // 10 :]), served


async def bench_grpc(target: str, calls: int) -> dict:
    results: dict = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        for n in SIZES:
            for series, packed in (("grpc-rank", False), ("grpc-rank-packed", True)):
                request = rank_request(n, packed=packed)
                figures, served = await timed(lambda request=request: stub.Rank(request, timeout=2), calls)
                results.setdefault(series, {})[n] = {**figures, "served": sorted(map(str, served))}
        batch = ranking_pb2.RankBatchRequest(
            requests=[rank_request(BATCH_SIZE, f"bench-user-{k}", seed=k, packed=True) for k in range(BATCH)]
        )
        figures, served = await timed(lambda: stub.RankBatch(batch, timeout=2), calls)
        results[f"grpc-rank-batch-{BATCH}"] = {BATCH_SIZE: {**figures, "served": sorted(map(str, served))}}
    return results


def run_fleet(args, model_text: str, calls: int) -> dict:
    admin = args.postgres_admin_dsn
    name = f"recfleet_rankbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(admin, dbname=name)
    client = redis.Redis.from_url(args.redis_url)
    rng = np.random.default_rng(0)
    item_keys = [keys.item(f"bench-{i}") for i in range(max(SIZES))]
    processes = []
    try:
        migrate(dsn)
        pipe = client.pipeline(transaction=False)
        for i, key in enumerate(item_keys):
            pipe.hset(key, mapping={k: orjson.dumps(v) for k, v in item_features(i, rng).items()})
        pipe.execute()
        artifacts = tempfile.mkdtemp(prefix="rankbench-")
        prefix = write_ranker(
            DirectoryArtifactStore(artifacts), VERSION, model_text, model_meta(VERSION, FEATURE_NAMES)
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            register_version(conn, VERSION, "ranker", prefix, {}, {})
            promote(conn, "ranker", VERSION)
        features_port, ranking_port = free_port(), free_port()
        env = {
            **os.environ,
            "RECFLEET_POSTGRES_DSN": dsn,
            "RECFLEET_REDIS_URL": args.redis_url,
            "RECFLEET_ARTIFACT_URL": artifacts,
            "RECFLEET_FEATURES_GRPC_PORT": str(features_port),
            "RECFLEET_FEATURES_METRICS_PORT": "0",
            "RECFLEET_RANKING_GRPC_PORT": str(ranking_port),
            "RECFLEET_RANKING_METRICS_PORT": "0",
            "RECFLEET_RANKING_FEATURE_STORE_TARGET": f"127.0.0.1:{features_port}",
            "RECFLEET_RANKING_FEATURE_STORE_TIMEOUT": "0.5",
            "RECFLEET_RANKING_MODEL_BUDGET_MS": "100",
            "RECFLEET_FEATURES_LOG_LEVEL": "WARNING",
            "RECFLEET_RANKING_LOG_LEVEL": "WARNING",
        }
        for module in ("recfleet_features", "recfleet_ranking"):
            processes.append(subprocess.Popen([sys.executable, "-m", module], env=env, stdout=subprocess.DEVNULL))

        async def measure():
            await wait_serving(f"127.0.0.1:{features_port}")
            await wait_serving(f"127.0.0.1:{ranking_port}")
            await bench_grpc(f"127.0.0.1:{ranking_port}", 50)  # warm-up: connections, caches
            ranked = await bench_grpc(f"127.0.0.1:{ranking_port}", calls)
            return {**ranked, **await bench_feature_store(f"127.0.0.1:{features_port}", calls)}

        return asyncio.run(measure())
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)
        client.delete(*item_keys)
        client.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for series, by_size in results.items():
        sizes = sorted(by_size)
        for axis, key in zip(axes, ("p50_ms", "p99_ms"), strict=False):
            axis.plot(sizes, [by_size[n][key] for n in sizes], marker="o", label=series)
    for axis, title in zip(axes, ("p50", "p99"), strict=False):
        axis.set_title(f"Rank latency {title}")
        axis.set_xlabel("candidates")
        axis.set_ylabel("ms")
        axis.grid(alpha=0.3)
    axes[1].axhline(5.0, color="grey", linestyle="--", linewidth=1, label="goal: gRPC Rank, 500 candidates, p99 5 ms")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per series (the first 10%% are warm-up)")
    parser.add_argument("--redis-url", default=os.environ.get("RECFLEET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/3"))
    parser.add_argument("--postgres-admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--skip-grpc", action="store_true", help="in-process series only")
    args = parser.parse_args()

    model_text = train_model()
    ranker = LearnedRanker.from_text(VERSION, model_text, {"feature_names": list(FEATURE_NAMES)})
    results = bench_core(ranker, args.calls)
    if not args.skip_grpc:
        results.update(run_fleet(args, model_text, args.calls))

    print(f"{'series':<24}" + "".join(f"{f'{n} p50':>11}{f'{n} p99':>11}" for n in SIZES) + "   (ms)")
    for series, by_size in results.items():
        cells = (
            f"{by_size[n]['p50_ms']:>11.3f}{by_size[n]['p99_ms']:>11.3f}" if n in by_size else f"{'-':>11}{'-':>11}"
            for n in SIZES
        )
        print(f"{series:<24}" + "".join(cells))
    if "grpc-rank" in results:
        print(
            "grpc served:",
            sorted({s for by_size in results.values() for f in by_size.values() for s in f.get("served", ())}),
        )
    RESULTS.mkdir(exist_ok=True)
    chart(results, RESULTS / "ranking_latency.png")
    (RESULTS / "ranking_latency.json").write_text(
        json.dumps(
            {
                "results": results,
                "calls": args.calls,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average_1m": round(os.getloadavg()[0], 2),
                },
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
    )
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"wrote {RESULTS / 'ranking_latency.png'} and ranking_latency.json")


if __name__ == "__main__":
    main()
