"""How far other model families and blends get on an offline split: the headroom above
the fusion recfleet serves (ALS + EASE with a popularity penalty).

Usage:
    .venv/bin/python bench/quality_headroom.py --dataset ../shared/datasets/ml-100k \\
        --format ml-100k --protocol recommenders-ml100k
    .venv/bin/python bench/quality_headroom.py        # ml-latest-small / recbole

Every model is fitted on the protocol's train part and scored on its test part (NDCG@10,
recall@10, catalog coverage; `recfleet_models.evaluation`, seen items excluded):

- ALS with the configured defaults, a few other settings (more factors, more
  iterations, BM25 weighting) and the mean of five seeds' standardised scores;
- EASE alone, RP3beta, user-kNN (cosine) and implicit's BM25 item-kNN, each at a few
  textbook settings;
- the ALS + EASE fusion over a grid of l2, ALS weight and popularity penalty (the
  search's grid, `recfleet_models.tuning`), and that grid's best point blended with each
  other family (the z-scores of a third source at weight 0.15 or 0.3).

Unlike the search, which chooses on a validation split carved from the train part, the
"best" rows here are chosen on the test part itself: an optimistic ceiling of each
family, not a figure a version would reach. One row is what the product would serve:
the point the EASE search chooses on the protocol's tuning split (`evaluate --model
als+ease` with the configured ALS and the jobs' default EASE settings, budget
`--search-seconds`), scored on test. Prints a table and writes
`bench/results/quality_headroom_<data>.{json,png}`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp
from implicit.nearest_neighbours import BM25Recommender
from implicit.utils import ParameterWarning
from recfleet_jobs.settings import JobSettings
from recfleet_models import ease
from recfleet_models.als import AlsModel, ALSParams, build_interaction_matrix, fit_als, top_k_batch
from recfleet_models.data import read_movielens
from recfleet_models.evaluation import ranking_metrics, relevant_items, seen_matrix
from recfleet_models.protocols import PROTOCOLS, Split, make_split, tuning_split
from recfleet_models.tuning import EASE_ALS_WEIGHTS, EASE_L2_GRID, EASE_PENALTIES, tune_ease_on_split
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
THIRD_SOURCE_WEIGHTS = (0.15, 0.3)
# The jobs' defaults for EASE and its search (what `train-als` and `evaluate` use unless
# configured otherwise).
JOBS: dict[str, Any] = {
    name: JobSettings.model_fields[name].default
    for name in ("ease_max_items", "ease_min_users", "ease_l2", "als_tune_min_gain_se", "ease_min_coverage_ratio")
}


@dataclass(frozen=True)
class Row:
    family: str
    setting: str
    ndcg: float
    recall: float
    coverage: float


class Bench:
    """One split, its train matrix and the scorer that turns a score matrix into a row."""

    def __init__(self, split: Split, params: ALSParams) -> None:
        train = split.train
        self.split, self.params = split, params
        self.matrix, self.users, self.items = build_interaction_matrix(
            train.user_ids, train.movie_ids, ["rating"] * len(train), train.ratings, params
        )
        self.binary = self.matrix.astype(bool).astype(np.float32).tocsr()
        self.truth = relevant_items(split.test)
        self.item_ids = np.array([int(i) for i in self.items], dtype=np.int64)
        self.catalog = int(np.unique(train.movie_ids).size)
        # The test users with a row, and what each has seen (train, and RecBole's validation
        # part), once: every model is scored on the same users with the same exclusions.
        rows = {int(u): row for row, u in enumerate(self.users)}
        self.test_users = [user for user in sorted(self.truth) if user in rows]
        self.test_rows = np.array([rows[user] for user in self.test_users], dtype=np.int64)
        columns = {int(item): col for col, item in enumerate(self.item_ids.tolist())}
        local = {user: n for n, user in enumerate(self.test_users)}
        self.exclude = seen_matrix(split.seen(), local, columns, (len(self.test_users), len(self.item_ids)))

    def als(self, params: ALSParams) -> np.ndarray:
        matrix, _, _ = build_interaction_matrix(
            self.split.train.user_ids,
            self.split.train.movie_ids,
            ["rating"] * len(self.split.train),
            self.split.train.ratings,
            params,
        )
        model: AlsModel = fit_als(matrix, params, self.users, self.items)
        return np.asarray(model.user_factors @ model.item_factors.T, dtype=np.float32)

    @functools.cached_property
    def ease_gram(self) -> tuple[np.ndarray, np.ndarray]:
        """The vocabulary the jobs use by default (`RECFLEET_JOBS_EASE_MAX_ITEMS`,
        `..._MIN_USERS`) and X^T X over it."""
        columns = ease.vocabulary(self.matrix, JOBS["ease_max_items"], JOBS["ease_min_users"])
        return columns, ease.gram(self.matrix, columns)

    @functools.cache  # noqa: B019 (one Bench a run, kept to the end anyway)
    def ease_scores(self, l2: float) -> np.ndarray:
        """EASE's scores with `l2` over the default vocabulary, once per l2."""
        columns, gram = self.ease_gram
        out = np.zeros(self.binary.shape, dtype=np.float32)
        out[:, columns] = np.asarray(self.binary[:, columns] @ ease.solve(gram, l2))
        return out

    def score(self, family: str, setting: str, scores: np.ndarray) -> Row:
        best = top_k_batch(scores[self.test_rows], 10, self.exclude)
        lists = {
            user: [int(self.item_ids[c]) for c in row if c >= 0]
            for user, row in zip(self.test_users, best, strict=True)
        }
        metrics = ranking_metrics(lists, self.truth, 10, self.catalog)
        return Row(family, setting, metrics.ndcg, metrics.recall, metrics.coverage)


def rp3beta(bench: Bench, alpha: float, beta: float) -> np.ndarray:
    """RP3beta: the item-to-item 3-step random walk, each item's column divided by its
    popularity ** beta."""
    x = bench.binary
    user_to_item = sp.diags(1.0 / np.maximum(x.sum(axis=1).A1, 1.0)) @ x
    item_to_user = sp.diags(1.0 / np.maximum(x.sum(axis=0).A1, 1.0)) @ x.T.tocsr()
    if alpha != 1.0:
        user_to_item, item_to_user = user_to_item.power(alpha), item_to_user.power(alpha)
    walk = (item_to_user @ user_to_item).toarray()
    walk /= np.maximum(x.sum(axis=0).A1, 1.0)[None, :] ** beta
    np.fill_diagonal(walk, 0.0)
    return np.asarray(x @ walk, dtype=np.float32)


def user_knn(bench: Bench, neighbours: int) -> np.ndarray:
    """User-based kNN: the items of a user's `neighbours` most cosine-similar users."""
    x = bench.binary
    normed = sp.diags(1.0 / np.sqrt(np.maximum(x.sum(axis=1).A1, 1.0))) @ x
    similar = (normed @ normed.T).toarray()
    np.fill_diagonal(similar, 0.0)
    if neighbours < similar.shape[1]:
        drop = np.argpartition(-similar, neighbours, axis=1)[:, neighbours:]
        np.put_along_axis(similar, drop, 0.0, axis=1)
    return np.asarray((sp.csr_matrix(similar) @ x).toarray(), dtype=np.float32)


def item_knn_bm25(bench: Bench, neighbours: int) -> np.ndarray:
    """implicit's BM25 item-kNN (K1 1.2, B 0.75)."""
    model = BM25Recommender(K=neighbours, K1=1.2, B=0.75)
    with warnings.catch_warnings():
        # implicit converts its own BM25-weighted COO matrix to CSR and says so.
        warnings.simplefilter("ignore", ParameterWarning)
        model.fit(bench.binary, show_progress=False)
    return np.asarray((bench.binary @ model.similarity).toarray(), dtype=np.float32)


def run(bench: Bench, search_seconds: float) -> list[Row]:
    params = bench.params
    z = ease.standardise
    rows: list[Row] = []
    steps: list[tuple[str, str, Callable[[], np.ndarray]]] = [
        ("ALS", "defaults", lambda: bench.als(params)),
        ("ALS", "128 factors", lambda: bench.als(replace(params, factors=128))),
        ("ALS", "30 iterations", lambda: bench.als(replace(params, iterations=30))),
        ("ALS", "BM25 weighting", lambda: bench.als(replace(params, weighting="bm25"))),
        (
            "ALS",
            "5 seeds, mean z-score",
            lambda: np.mean([z(bench.als(replace(params, random_state=s))) for s in (42, 1, 2, 3, 4)], axis=0),
        ),
        *[("EASE", f"l2 {l2:g}", lambda l2=l2: bench.ease_scores(l2)) for l2 in (200.0, 500.0, 1000.0)],
        *[
            ("RP3beta", f"alpha {a:g}, beta {b:g}", lambda a=a, b=b: rp3beta(bench, a, b))
            for a, b in ((1.0, 0.5), (0.8, 0.5))
        ],
        *[("user-kNN", f"{k} neighbours", lambda k=k: user_knn(bench, k)) for k in (50, 100)],
        *[("item-kNN BM25", f"{k} neighbours", lambda k=k: item_knn_bm25(bench, k)) for k in (100, 200)],
    ]
    scores: dict[tuple[str, str], np.ndarray] = {}
    for family, setting, compute in tqdm(steps, desc="models", unit="model"):
        scores[(family, setting)] = compute()
        rows.append(bench.score(family, setting, scores[(family, setting)]))

    z_als = z(scores[("ALS", "defaults")])
    popularity = ease.popularity(bench.matrix)
    grid = [(w, g) for w in EASE_ALS_WEIGHTS if w != 1.0 for g in EASE_PENALTIES]
    als_coverage = rows[0].coverage
    best: tuple[Row, np.ndarray] | None = None
    best_covering: Row | None = None
    for l2 in tqdm(EASE_L2_GRID, desc="fusion grid", unit="l2"):
        z_ease = z(bench.ease_scores(l2))
        for weight, penalty in grid:
            fused = ease.mix(z_als, z_ease, weight, ease.penalty_term(penalty, popularity))
            row = bench.score("ALS + EASE", f"l2 {l2:g}, w {weight:g}, g {penalty:g}", fused)
            if best is None or row.ndcg > best[0].ndcg:
                best = (row, fused)
            if row.coverage >= als_coverage and (best_covering is None or row.ndcg > best_covering.ndcg):
                best_covering = row
    assert best is not None
    rows.append(replace(best[0], family="ALS + EASE, best of the grid on test"))
    if best_covering is not None:
        rows.append(replace(best_covering, family="... the same, covering as much as ALS"))
    rows.append(searched(bench, z_als, popularity, search_seconds))
    z_fused = z(best[1])
    for (family, setting), third in tqdm(
        [(key, value) for key, value in scores.items() if key[0] not in ("ALS", "EASE")], desc="blends", unit="source"
    ):
        z_third = z(third)
        blends = [
            bench.score(f"best fusion + {family}", f"{setting}, weight {w:g}", (1 - w) * z_fused + w * z_third)
            for w in THIRD_SOURCE_WEIGHTS
        ]
        rows.append(max(blends, key=lambda r: r.ndcg))
    return rows


def searched(bench: Bench, z_als: np.ndarray, popularity: np.ndarray, budget_seconds: float) -> Row:
    """The point the product's search chooses on the protocol's tuning split (never the
    test part), as `evaluate --model als+ease` runs it with the configured ALS, scored on test."""
    result = tune_ease_on_split(
        tuning_split(bench.split),
        bench.params,
        budget_seconds,
        l2=JOBS["ease_l2"],
        max_items=JOBS["ease_max_items"],
        min_users=JOBS["ease_min_users"],
        min_gain_se=JOBS["als_tune_min_gain_se"],
        min_coverage_ratio=JOBS["ease_min_coverage_ratio"],
    )
    family = "ALS + EASE, the search's choice on validation"
    if not result.adopted:
        return bench.score(family, f"EASE off ({result.reason})", bench.als(bench.params))
    penalty = ease.penalty_term(result.popularity_penalty, popularity)
    fused = ease.mix(z_als, ease.standardise(bench.ease_scores(result.l2)), result.als_weight, penalty)
    setting = f"l2 {result.l2:g}, w {result.als_weight:g}, g {result.popularity_penalty:g}"
    return bench.score(family, setting, fused)


def chart(rows: list[Row], title: str, path: Path, goal: float | None) -> None:
    ordered = sorted(rows, key=lambda r: r.ndcg)
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(ordered) + 1.2))
    labels = [f"{r.family}: {r.setting}" for r in ordered]
    ax.barh(labels, [r.ndcg for r in ordered], color="#4c72b0")
    low = min(r.ndcg for r in ordered)
    high = max([r.ndcg for r in ordered] + ([goal] if goal is not None else []))
    ax.set_xlim(low - 0.02, high + 0.01)
    if goal is not None:
        ax.axvline(goal, color="#c44e52", linestyle="--", label=f"goal {goal:g}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("NDCG@10 on the test part")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=ROOT / "data" / "ml-latest-small", help="data set directory")
    parser.add_argument("--format", default="ml-latest-small", choices=("ml-latest-small", "ml-100k"))
    parser.add_argument("--protocol", default="recbole", choices=PROTOCOLS)
    parser.add_argument(
        "--search-seconds", type=float, default=300.0, help="budget of the product's EASE search (its row)"
    )
    parser.add_argument("--goal", type=float, help="an NDCG@10 goal to draw as a line on the chart")
    args = parser.parse_args()
    if not args.dataset.is_dir():
        sys.exit(f"no data set at {args.dataset}")
    started = time.perf_counter()
    data = read_movielens(args.dataset, args.format)
    bench = Bench(make_split(data.ratings, args.protocol), ALSParams())
    rows = run(bench, args.search_seconds)
    name = f"{args.format}_{args.protocol}"
    print(f"\n{args.format} / {args.protocol}: NDCG@10, recall@10 and catalog coverage on the test part")
    print(f"{'model':<48} {'setting':<34} {'ndcg@10':>8} {'recall':>7} {'cover':>6}")
    for row in sorted(rows, key=lambda r: -r.ndcg):
        print(f"{row.family:<48} {row.setting:<34} {row.ndcg:8.4f} {row.recall:7.4f} {row.coverage:6.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"quality_headroom_{name}.json").write_text(
        json.dumps([r.__dict__ for r in rows], indent=2) + "\n", encoding="utf-8"
    )
    chart(
        rows,
        f"{args.format} / {args.protocol}: NDCG@10 on test (best rows chosen on test)",
        RESULTS / f"quality_headroom_{name}.png",
        args.goal,
    )
    print(f"wrote bench/results/quality_headroom_{name}.{{json,png}} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
