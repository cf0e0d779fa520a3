"""ANN benchmark for candidate-gen: recall@10 against exact search and queries/s per core
for Flat, IVF-Flat and HNSW shards, across shard counts.

    .venv/bin/python bench/ann_bench.py                          # 1,000,000 x 64, shards 1,2,4
    .venv/bin/python bench/ann_bench.py --items 200000 --shards 1,2 --queries 500

The catalog is synthetic and shaped like ALS item factors: items gather around topics
(a Gaussian mixture) and their norms spread (log-normal), as popular and niche items do.
Queries come from the same mixture, as user vectors do. `--distribution gaussian` gives
structureless vectors instead, the worst case for any ANN index.

Items go to shards by `recfleet_models.sharding.shard_of`, each shard gets its own index
(built by `recfleet_models.index.build_index`, the same code as `build-index`), and every
query is searched on every shard and merged by score, as the gateway scatters and gathers.
Search runs single-threaded, one query per call, as a candidate-gen process serves it.

Figures per row: recall@10 of the merged answer against exact search over the whole
catalog; queries/s per core = queries / (single-thread seconds spent on all shards), i.e.
what one core does for the whole catalog; per-shard median microseconds per search. Each
timing is the median of `--repeats` runs. A table is printed and a PNG chart is written
to bench/results/. Nothing passes or fails on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
from recfleet_models.index import build_index
from recfleet_models.sharding import shard_of

K = 10
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    shards: int
    index: str
    knob: str
    recall_at_10: float
    qps_per_core: float
    shard_search_us_p50: float
    build_seconds: float


def catalog(items: int, dim: int, queries: int, distribution: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if distribution == "gaussian":
        return (
            rng.standard_normal((items, dim), dtype=np.float32),
            rng.standard_normal((queries, dim), dtype=np.float32),
        )
    topics = rng.standard_normal((max(16, items // 1000), dim), dtype=np.float32)

    def draw(count: int, spread: float) -> np.ndarray:
        chosen = topics[rng.integers(0, len(topics), count)]
        vectors = chosen + spread * rng.standard_normal((count, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors * rng.lognormal(0.0, 0.35, (count, 1)).astype(np.float32)

    return draw(items, 0.6), draw(queries, 0.8)


def exact_top(shards: list[np.ndarray], rows: list[np.ndarray], queries: np.ndarray) -> np.ndarray:
    """Global exact top-10 row numbers (the ground truth), multi-threaded BLAS."""
    best_scores, best_rows = [], []
    for vectors, global_rows in zip(shards, rows, strict=True):
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        scores, local = index.search(queries, min(K, len(vectors)))
        best_scores.append(scores)
        best_rows.append(global_rows[local])
    scores, found = np.hstack(best_scores), np.hstack(best_rows)
    order = np.argsort(-scores, axis=1)[:, :K]
    return np.take_along_axis(found, order, axis=1)


def timed_search(indexes, rows, queries, repeats: int) -> tuple[list[np.ndarray], float, float]:
    """Merged top-10 per query, median total seconds, median microseconds per shard search."""
    faiss.omp_set_num_threads(1)
    totals, per_shard = [], []
    merged = None
    for _ in range(repeats):
        answers = []
        shard_seconds = np.zeros(len(indexes))
        for query in queries:
            query = query.reshape(1, -1)
            scores, found = [], []
            for shard, (index, global_rows) in enumerate(zip(indexes, rows, strict=True)):
                started = time.perf_counter()
                s, local = index.search(query, K)
                shard_seconds[shard] += time.perf_counter() - started
                keep = local[0] >= 0
                scores.append(s[0][keep])
                found.append(global_rows[local[0][keep]])
            s, f = np.concatenate(scores), np.concatenate(found)
            answers.append(f[np.argsort(-s)[:K]])
        merged = answers
        totals.append(float(shard_seconds.sum()))
        per_shard.append(float(np.median(shard_seconds) / len(queries) * 1e6))
    return merged, statistics.median(totals), statistics.median(per_shard)


def recall(answers, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a.tolist()) & set(t.tolist())) / K for a, t in zip(answers, truth, strict=True)]))


def set_knob(index: faiss.Index, kind: str, value: int) -> None:
    if kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(value, ivf.nlist)
    elif kind == "hnsw":
        index.hnsw.efSearch = value


def run(args: argparse.Namespace) -> list[Row]:
    started = time.perf_counter()
    vectors, queries = catalog(args.items, args.dim, args.queries, args.distribution, args.seed)
    ids = [f"item-{i}" for i in range(args.items)]
    print(f"catalog {args.items:,} x {args.dim} ({args.distribution}) in {time.perf_counter() - started:.1f}s")
    rows_out: list[Row] = []
    for shard_count in args.shards:
        owners = np.fromiter((shard_of(item, shard_count) for item in ids), dtype=np.int64, count=len(ids))
        rows = [np.flatnonzero(owners == shard) for shard in range(shard_count)]
        shards = [np.ascontiguousarray(vectors[r]) for r in rows]
        faiss.omp_set_num_threads(args.build_threads)
        truth = exact_top(shards, rows, queries)
        plans = {
            "flat": ("-", [0]),
            "ivf": ("nprobe", args.nprobe),
            "hnsw": ("efSearch", args.ef_search),
        }
        for kind in args.index_types:
            knob_name, values = plans[kind]
            faiss.omp_set_num_threads(args.build_threads)
            built = time.perf_counter()
            indexes = []
            for shard_vectors in shards:
                if kind == "ivf":
                    nlist = args.nlist or max(1, int(4 * np.sqrt(len(shard_vectors))))
                    params = {"nlist": nlist, "nprobe": values[0]}
                elif kind == "hnsw":
                    params = {"m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": values[0]}
                else:
                    params = {}
                index, _ = build_index(shard_vectors, kind, params)
                indexes.append(index)
            build_seconds = time.perf_counter() - built
            # Exact search over a large shard is slow: time it on fewer queries.
            sample = queries[: args.flat_queries] if kind == "flat" else queries
            for value in values:
                for index in indexes:
                    set_knob(index, kind, value)
                answers, seconds, per_shard_us = timed_search(indexes, rows, sample, args.repeats)
                row = Row(
                    shards=shard_count,
                    index=kind,
                    knob=f"{knob_name}={value}" if kind != "flat" else "-",
                    recall_at_10=round(recall(answers, truth[: len(sample)]), 4),
                    qps_per_core=round(len(sample) / seconds, 1),
                    shard_search_us_p50=round(per_shard_us, 1),
                    build_seconds=round(build_seconds, 1),
                )
                rows_out.append(row)
                print_row(row)
    return rows_out


HEADER = f"{'shards':>6} {'index':<5} {'knob':<14} {'recall@10':>9} {'q/s/core':>9} {'shard µs':>9} {'build s':>8}"


def print_row(row: Row) -> None:
    print(
        f"{row.shards:>6} {row.index:<5} {row.knob:<14} {row.recall_at_10:>9.4f} {row.qps_per_core:>9.1f}"
        f" {row.shard_search_us_p50:>9.1f} {row.build_seconds:>8.1f}",
        flush=True,
    )


def chart(rows: list[Row], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shard_counts = sorted({row.shards for row in rows})
    fig, axes = plt.subplots(1, len(shard_counts), figsize=(5 * len(shard_counts), 4.2), squeeze=False, sharey=True)
    for ax, shard_count in zip(axes[0], shard_counts, strict=True):
        for kind, marker in (("flat", "s"), ("ivf", "o"), ("hnsw", "^")):
            points = [row for row in rows if row.shards == shard_count and row.index == kind]
            if not points:
                continue
            ax.plot([p.recall_at_10 for p in points], [p.qps_per_core for p in points], marker=marker, label=kind)
            for p in points:
                if p.knob != "-":
                    ax.annotate(p.knob.split("=")[1], (p.recall_at_10, p.qps_per_core), fontsize=7)
        ax.axhline(3000, color="grey", linestyle=":", linewidth=1)
        ax.axvline(0.95, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 vs exact")
        ax.set_title(f"{shard_count} shard(s)")
        ax.legend()
    axes[0][0].set_ylabel("queries/s per core (all shards)")
    fig.suptitle(f"FAISS shards, {args.items:,} x {args.dim} {args.distribution}, single-threaded search")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--shards", type=ints, default=[1, 2, 4])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--flat-queries", type=int, default=100, help="queries timed on exact (flat) search")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--index-types", type=lambda t: t.split(","), default=["flat", "ivf", "hnsw"])
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists per shard; 0: 4*sqrt(shard items)")
    parser.add_argument("--nprobe", type=ints, default=[8, 16, 32, 64])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef-search", type=ints, default=[16, 32, 64, 128])
    parser.add_argument("--distribution", choices=["clustered", "gaussian"], default="clustered")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    print(f"faiss {faiss.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible")
    # Queries/s are only comparable on an idle machine: record how busy it was.
    load_before = os.getloadavg()
    print(HEADER)
    rows = run(args)
    load_after = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"ann_{args.items}x{args.dim}_{args.distribution}"
    (RESULTS / f"{stem}.json").write_text(
        json.dumps(
            {"args": vars(args), "load_average": [load_before, load_after], "rows": [asdict(r) for r in rows]},
            indent=2,
        )
    )
    chart(rows, args, RESULTS / f"{stem}.png")
    print(f"\nwrote {RESULTS / (stem + '.png')} and .json")
    print(f"1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} cores")
    print(HEADER)
    for row in rows:
        print_row(row)


if __name__ == "__main__":
    main()
