"""ALS training speed: seconds per iteration on MovieLens latest-small and 100K.

Usage:
    .venv/bin/python bench/als_bench.py [--ml-100k ../shared/datasets/ml-100k] [--factors 64] [--iterations 15]

Each dataset's full rating log is weighted as `train-als` weights it and fitted three
times with the same hyper-parameters; the median wall time divided by the iteration count
is reported (BLAS limited to one thread, implicit's own threads on every core). ml-100k
is read from the path given and skipped when it is missing (it is never bundled). Prints
a table and writes `bench/results/als_seconds_per_iteration.{json,png}`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from recfleet_models.als import ALSParams, build_interaction_matrix, fit_als
from recfleet_models.data import read_movielens

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def measure(path: Path, fmt: str, params: ALSParams, repeats: int) -> dict:
    data = read_movielens(path, fmt)
    ratings = data.ratings
    matrix, users, items = build_interaction_matrix(
        ratings.user_ids, ratings.movie_ids, ["rating"] * len(ratings), ratings.ratings, params
    )
    times = [fit_als(matrix, params, users, items).train_seconds for _ in range(repeats)]
    median = statistics.median(times)
    return {
        "dataset": fmt,
        "users": len(users),
        "items": len(items),
        "interactions": int(matrix.nnz),
        "factors": params.factors,
        "iterations": params.iterations,
        "fit_seconds_runs": [round(t, 4) for t in times],
        "seconds_per_iteration": round(median / params.iterations, 5),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml-latest-small", default=str(ROOT / "data" / "ml-latest-small"))
    parser.add_argument("--ml-100k", default="", help="path to an ml-100k directory (not bundled)")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    params = ALSParams(factors=args.factors, iterations=args.iterations)

    rows = [measure(Path(args.ml_latest_small), "ml-latest-small", params, args.repeats)]
    if args.ml_100k and Path(args.ml_100k, "u.data").is_file():
        rows.append(measure(Path(args.ml_100k), "ml-100k", params, args.repeats))
    else:
        print(f"ml-100k skipped: no u.data under {args.ml_100k or '(no --ml-100k given)'}", file=sys.stderr)

    print(
        f"ALS, factors={params.factors}, {params.iterations} iterations, median of {args.repeats} fits, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'dataset':<16} {'users':>6} {'items':>6} {'interactions':>12} {'s/iteration':>12}")
    for row in rows:
        print(
            f"{row['dataset']:<16} {row['users']:>6} {row['items']:>6} {row['interactions']:>12} "
            f"{row['seconds_per_iteration']:>12.4f}"
        )

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "als_seconds_per_iteration.json").write_text(json.dumps(rows, indent=2))
    figure, axis = plt.subplots(figsize=(5, 3.2))
    bars = axis.bar([r["dataset"] for r in rows], [r["seconds_per_iteration"] * 1000 for r in rows], color="#4c72b0")
    axis.bar_label(bars, fmt="%.1f ms")
    axis.set_ylabel("ms per ALS iteration")
    axis.margins(y=0.15)
    axis.set_title(f"implicit ALS, {params.factors} factors, {os.cpu_count()} CPUs (median of {args.repeats})")
    figure.tight_layout()
    figure.savefig(RESULTS / "als_seconds_per_iteration.png", dpi=120)
    print(f"wrote {RESULTS / 'als_seconds_per_iteration.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
