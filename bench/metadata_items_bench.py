"""Cost of cold-start items in candidate-gen: computing one version's category and tag
vectors, placing new items, and the extra exact search `Retrieve` does next to a shard.

    .venv/bin/python bench/metadata_items_bench.py                       # 1,000,000 x 64
    .venv/bin/python bench/metadata_items_bench.py --items 100000 --new 500

The catalog is synthetic: each item has one to three of `--categories` categories and
zero to four of `--tags` tags, drawn with a skew (a few are common, most are rare).
Prints seconds for the per-version computation (once per loaded version), microseconds
to place one new item, and median microseconds of one search of the metadata index, the
cost added to each `Retrieve`. Nothing passes or fails on time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services" / "candidate-gen"))

from recfleet_candidates.metadata_items import MetadataIndex
from recfleet_candidates.retrieval import top_k
from recfleet_models.metadata_vectors import ItemMetadata, MetadataVectors


def catalog(items: int, categories: int, tags: int, seed: int) -> dict[str, ItemMetadata]:
    rng = np.random.default_rng(seed)
    category_draws = rng.zipf(1.5, size=(items, 3)) % categories
    tag_draws = rng.zipf(1.3, size=(items, 4)) % tags
    category_counts = rng.integers(1, 4, items)
    tag_counts = rng.integers(0, 5, items)
    return {
        f"i{n}": ItemMetadata(
            tuple(f"c{c}" for c in category_draws[n, : category_counts[n]]),
            tuple(f"t{t}" for t in tag_draws[n, : tag_counts[n]]),
        )
        for n in range(items)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--categories", type=int, default=200)
    parser.add_argument("--tags", type=int, default=5_000)
    parser.add_argument("--new", type=int, default=50, help="new items the shard serves from metadata")
    parser.add_argument("--min-tag-items", type=int, default=5)
    parser.add_argument("--queries", type=int, default=2_000)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)

    metadata = catalog(args.items + args.new, args.categories, args.tags, seed=1)
    item_ids = [f"i{n}" for n in range(args.items)]
    factors = np.random.default_rng(2).standard_normal((args.items, args.dim)).astype(np.float32)

    started = time.perf_counter()
    vectors = MetadataVectors.from_version(item_ids, factors, metadata, args.min_tag_items)
    per_version = time.perf_counter() - started

    new_ids = [f"i{n}" for n in range(args.items, args.items + args.new)]
    started = time.perf_counter()
    placed = {item: vector for item in new_ids if (vector := vectors.vector_for(metadata[item])) is not None}
    per_item = (time.perf_counter() - started) / len(new_ids)
    index = MetadataIndex.build("bench", args.dim, placed)

    queries = np.random.default_rng(3).standard_normal((args.queries, args.dim)).astype(np.float32)
    timings = []
    for query in queries:
        started = time.perf_counter()
        top_k(index, query.reshape(1, -1), 10, set())
        timings.append(time.perf_counter() - started)

    print(f"catalog: {args.items:,} items x {args.dim}, {len(vectors.categories)} categories, {len(vectors.tags)} tags")
    print(f"category/tag vectors per version: {per_version:.2f} s")
    print(f"placing one new item: {per_item * 1e6:.1f} us ({len(placed)} of {len(new_ids)} placed)")
    print(
        f"metadata index search, k=10 over {index.item_count} items: {statistics.median(timings) * 1e6:.1f} us median"
    )


if __name__ == "__main__":
    main()
