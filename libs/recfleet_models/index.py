"""Sharded FAISS indexes built from an ALS version's item factors.

Layout under `models/als/<version>/index/` in the artifact store:

- `shard-<i>.faiss`: `faiss.serialize_index` bytes (inner product);
- `shard-<i>.ids.json`: the item ids, in the index's row order;
- `shard-<i>.vectors.npy`: the same rows' float32 vectors (for similar items, exact
  re-checks and sanity queries);
- `manifest.json`: a `ShardManifest`, written last, so that a manifest's presence means
  every shard file it names is complete.

When the version has an EASE source (`ease/` beside the factors, published by train-als),
the index splits it over the shards too:

- `ease-items.json`: the EASE vocabulary (item ids, the rows of every shard's weights);
- `shard-<i>.ease.npy`: float32 (vocabulary, m): the columns of B of the m vocabulary
  items shard i owns, in the order of their shard rows;
- `shard-<i>.ease-rows.npy`: int64 (m,): the shard row of each of those columns.

With a popularity penalty (`popularity_penalty` > 0 in `ease/meta.json`, the items'
`ease/popularity.npy` beside it), each shard also gets

- `shard-<i>.popularity.npy`: float32 (items,): the standardised log user count of each
  shard row (`recfleet_models.ease.popularity`), which the fused score subtracts
  `popularity_penalty` times.

The manifest then carries an `ease` block (`items_key`, `items_sha256`, `l2`,
`als_weight`, `popularity_penalty`) and each shard entry its EASE keys and checksums;
without EASE the block is null and the keys empty, and a manifest written before EASE
(or before the penalty) existed loads as one without it.

Items go to shards by `recfleet_models.sharding.shard_of`. Index types:

- `flat`: exact search;
- `ivf`: IVF-Flat, knobs `nlist` (capped to what a shard's size can train: at least 39
  vectors a list) and `nprobe`;
- `hnsw`: HNSW-Flat with inner product, knobs `m`, `ef_construction`, `ef_search`.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import faiss
import numpy as np
from recfleet_store.artifacts import ArtifactStore, sha256

from .ease import Moments, penalty_term, valid_penalty
from .sharding import ASSIGNMENT_RULE, shard_of

INDEX_TYPES = ("flat", "ivf", "hnsw")
# A version's EASE files (in its checksums.json), and its items' popularity when the
# fusion has a popularity penalty.
EASE_FILES = ("ease/items.json", "ease/weights.npy", "ease/meta.json")
POPULARITY_FILE = "ease/popularity.npy"
METRIC = "ip"
# FAISS warns below 39 training points per centroid; fewer give poor lists.
MIN_POINTS_PER_LIST = 39
DEFAULT_PARAMS: dict[str, dict[str, int]] = {
    "flat": {},
    "ivf": {"nlist": 1024, "nprobe": 32},
    "hnsw": {"m": 32, "ef_construction": 200, "ef_search": 128},
}


class ShardRejected(Exception):
    """A shard failed verification; `reason` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def als_prefix(version: str) -> str:
    return f"models/als/{version}/"


def index_prefix(version: str) -> str:
    return f"{als_prefix(version)}index/"


def manifest_key(version: str) -> str:
    return f"{index_prefix(version)}manifest.json"


@dataclass(frozen=True)
class ShardEntry:
    """One shard's files, their sha256 and its item count."""

    shard: int
    index_key: str
    ids_key: str
    vectors_key: str
    index_sha256: str
    ids_sha256: str
    vectors_sha256: str
    item_count: int
    # What the shard was built with after capping (e.g. nlist for a small shard).
    index_params: dict[str, Any] = field(default_factory=dict)
    # The shard's part of the EASE source; empty when the version has none.
    ease_key: str = ""
    ease_sha256: str = ""
    ease_rows_key: str = ""
    ease_rows_sha256: str = ""
    # The popularity of the shard's items; empty without a popularity penalty.
    popularity_key: str = ""
    popularity_sha256: str = ""


@dataclass(frozen=True)
class ShardManifest:
    version: str
    shard_count: int
    assignment_rule: str
    index_type: str
    params: dict[str, Any]
    dimension: int
    metric: str
    shards: list[ShardEntry]
    built_at: str = ""
    # {items_key, items_sha256, l2, als_weight, popularity_penalty} when the version has an
    # EASE source.
    ease: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ShardManifest:
        raw = json.loads(data)
        raw["shards"] = [ShardEntry(**entry) for entry in raw["shards"]]
        return cls(**raw)

    @property
    def item_count(self) -> int:
        return sum(entry.item_count for entry in self.shards)


def normalize_params(index_type: str, params: dict[str, Any] | None) -> dict[str, int]:
    """The index type's knobs with defaults filled in; unknown types and knobs are refused."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r} (expected one of {', '.join(INDEX_TYPES)})")
    defaults = DEFAULT_PARAMS[index_type]
    given = {key: value for key, value in (params or {}).items() if value is not None}
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"{index_type} index takes {sorted(defaults) or 'no parameters'}, not {sorted(unknown)}")
    merged = {**defaults, **{key: int(value) for key, value in given.items()}}
    for key, value in merged.items():
        if value < 1:
            raise ValueError(f"{index_type} parameter {key} must be at least 1, got {value}")
    return merged


def build_index(vectors: np.ndarray, index_type: str, params: dict[str, int]) -> tuple[faiss.Index, dict[str, int]]:
    """An inner-product index over `vectors` (row i = id i) and the knobs it really uses."""
    count, dimension = vectors.shape
    index: faiss.Index
    if index_type == "flat" or count == 0:
        index = faiss.IndexFlatIP(dimension)
        used: dict[str, int] = {}
    elif index_type == "ivf":
        nlist = max(1, min(params["nlist"], count // MIN_POINTS_PER_LIST))
        quantizer = faiss.IndexFlatIP(dimension)
        ivf = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.min_points_per_centroid = 1
        # 64 training points a list place centroids well enough and keep k-means on a
        # million-item shard to seconds instead of minutes.
        ivf.cp.max_points_per_centroid = 64
        ivf.train(vectors)
        ivf.nprobe = min(params["nprobe"], nlist)
        used = {"nlist": nlist, "nprobe": ivf.nprobe}
        index = ivf
    elif index_type == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dimension, params["m"], faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = params["ef_construction"]
        hnsw.hnsw.efSearch = params["ef_search"]
        used = dict(params)
        index = hnsw
    else:
        raise ValueError(f"unknown index type {index_type!r}")
    if count:
        index.add(vectors)
    return index, used


def apply_search_params(index: faiss.Index, index_type: str, params: dict[str, int]) -> None:
    """Set the query-time knobs (nprobe, efSearch) on a deserialised index."""
    ivf = faiss.try_extract_index_ivf(index)
    if index_type == "ivf" and "nprobe" in params and ivf is not None:
        ivf.nprobe = min(int(params["nprobe"]), ivf.nlist)
    elif index_type == "hnsw" and "ef_search" in params and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(params["ef_search"])


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    array: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
    return array


def read_item_factors(store: ArtifactStore, version: str) -> tuple[list[str], np.ndarray]:
    """An ALS version's item ids and float32 factors, checked against its checksums.json."""
    prefix = als_prefix(version)
    if not store.exists(f"{prefix}item_factors.npy"):
        raise FileNotFoundError(f"ALS version {version!r} has no item_factors.npy in the artifact store")
    ids_bytes = store.get_bytes(f"{prefix}item_ids.json")
    factors_bytes = store.get_bytes(f"{prefix}item_factors.npy")
    if store.exists(f"{prefix}checksums.json"):
        checksums = json.loads(store.get_bytes(f"{prefix}checksums.json"))
        for name, data in (("item_ids.json", ids_bytes), ("item_factors.npy", factors_bytes)):
            if name in checksums and checksums[name] != sha256(data):
                raise ValueError(f"ALS version {version!r}: {name} does not match its checksum")
    item_ids = [str(item) for item in json.loads(ids_bytes)]
    factors = np.ascontiguousarray(_npy_load(factors_bytes), dtype=np.float32)
    if factors.ndim != 2 or factors.shape[0] != len(item_ids):
        raise ValueError(f"ALS version {version!r}: {factors.shape} factors for {len(item_ids)} item ids")
    return item_ids, factors


def partition(item_ids: list[str], shard_count: int) -> list[np.ndarray]:
    """Row numbers of the items each shard owns, in catalog order."""
    owners = np.fromiter((shard_of(item, shard_count) for item in item_ids), dtype=np.int64, count=len(item_ids))
    return [np.flatnonzero(owners == shard) for shard in range(shard_count)]


@dataclass(frozen=True)
class VersionEase:
    """A version's EASE source as train-als published it (`ease/` in the version)."""

    item_ids: list[str]
    weights: np.ndarray  # float32 (n, n)
    l2: float
    als_weight: float
    popularity_penalty: float = 0.0
    # float32, one per ALS item (item_ids.json's order); None without a penalty.
    item_popularity: np.ndarray | None = None


def _checked_blob(store: ArtifactStore, version: str, checksums: dict[str, str], name: str) -> bytes:
    key = f"{als_prefix(version)}{name}"
    if not store.exists(key):
        raise ValueError(f"ALS version {version!r}: {name} is missing")
    data = store.get_bytes(key)
    if checksums.get(name) != sha256(data):
        raise ValueError(f"ALS version {version!r}: {name} does not match its checksum")
    return data


def read_ease(store: ArtifactStore, version: str, item_count: int) -> VersionEase | None:
    """The version's EASE source, checked against its checksums.json (and the popularity
    against the version's `item_count` items); None without one."""
    prefix = als_prefix(version)
    if not store.exists(f"{prefix}ease/meta.json"):
        return None
    checksums = json.loads(store.get_bytes(f"{prefix}checksums.json"))
    blobs = {name: _checked_blob(store, version, checksums, name) for name in EASE_FILES}
    item_ids = [str(item) for item in json.loads(blobs["ease/items.json"])]
    weights = _npy_load(blobs["ease/weights.npy"])
    meta = json.loads(blobs["ease/meta.json"])
    if weights.dtype != np.float32 or weights.shape != (len(item_ids), len(item_ids)):
        raise ValueError(
            f"ALS version {version!r}: EASE weights {weights.dtype} {weights.shape} for {len(item_ids)} items"
        )
    penalty = float(meta.get("popularity_penalty", 0.0))
    if not valid_penalty(penalty):
        raise ValueError(f"ALS version {version!r}: EASE popularity_penalty {penalty} is not a finite value >= 0")
    item_popularity = None
    if penalty:
        item_popularity = _npy_load(_checked_blob(store, version, checksums, POPULARITY_FILE))
        if item_popularity.dtype != np.float32 or item_popularity.shape != (item_count,):
            raise ValueError(
                f"ALS version {version!r}: item popularity {item_popularity.dtype} {item_popularity.shape}"
                f" for {item_count} items"
            )
        if not np.isfinite(item_popularity).all():
            raise ValueError(f"ALS version {version!r}: item popularity holds NaN or infinite values")
    return VersionEase(item_ids, weights, float(meta["l2"]), float(meta["als_weight"]), penalty, item_popularity)


def build_shards(
    store: ArtifactStore, version: str, shard_count: int, index_type: str, params: dict[str, Any] | None = None
) -> ShardManifest:
    """Build and publish every shard of an ALS version (and its EASE source's columns,
    when it has one); returns the manifest written."""
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    knobs = normalize_params(index_type, params)
    item_ids, factors = read_item_factors(store, version)
    ease = read_ease(store, version, len(item_ids))
    dimension = int(factors.shape[1])
    prefix = index_prefix(version)
    # A manifest left from an earlier build must not describe the new files half-way.
    if store.exists(manifest_key(version)):
        store.delete_prefix(prefix)
    ease_block: dict[str, Any] | None = None
    if ease is not None:
        items_data = json.dumps(ease.item_ids).encode()
        store.put_bytes(f"{prefix}ease-items.json", items_data)
        ease_block = {
            "items_key": f"{prefix}ease-items.json",
            "items_sha256": sha256(items_data),
            "l2": ease.l2,
            "als_weight": ease.als_weight,
            "popularity_penalty": ease.popularity_penalty,
        }
        ease_column = {item: column for column, item in enumerate(ease.item_ids)}
    entries = []
    for shard, rows in enumerate(partition(item_ids, shard_count)):
        vectors = np.ascontiguousarray(factors[rows])
        index, used = build_index(vectors, index_type, knobs)
        shard_ids = [item_ids[row] for row in rows]
        files = {
            "index": (f"{prefix}shard-{shard}.faiss", faiss.serialize_index(index).tobytes()),
            "ids": (f"{prefix}shard-{shard}.ids.json", json.dumps(shard_ids).encode()),
            "vectors": (f"{prefix}shard-{shard}.vectors.npy", _npy_bytes(vectors)),
        }
        if ease is not None:
            owned = [(row, ease_column[item]) for row, item in enumerate(shard_ids) if item in ease_column]
            shard_rows = np.array([row for row, _ in owned], dtype=np.int64)
            columns = np.array([column for _, column in owned], dtype=np.int64)
            weights = np.ascontiguousarray(ease.weights[:, columns], dtype=np.float32)
            files["ease"] = (f"{prefix}shard-{shard}.ease.npy", _npy_bytes(weights))
            files["ease_rows"] = (f"{prefix}shard-{shard}.ease-rows.npy", _npy_bytes(shard_rows))
            if ease.item_popularity is not None:
                files["popularity"] = (
                    f"{prefix}shard-{shard}.popularity.npy",
                    _npy_bytes(np.ascontiguousarray(ease.item_popularity[rows])),
                )
        for key, data in files.values():
            store.put_bytes(key, data)
        ease_fields = (
            {
                "ease_key": files["ease"][0],
                "ease_sha256": sha256(files["ease"][1]),
                "ease_rows_key": files["ease_rows"][0],
                "ease_rows_sha256": sha256(files["ease_rows"][1]),
            }
            if ease is not None
            else {}
        )
        if "popularity" in files:
            ease_fields.update(popularity_key=files["popularity"][0], popularity_sha256=sha256(files["popularity"][1]))
        entries.append(
            ShardEntry(
                shard=shard,
                index_key=files["index"][0],
                ids_key=files["ids"][0],
                vectors_key=files["vectors"][0],
                index_sha256=sha256(files["index"][1]),
                ids_sha256=sha256(files["ids"][1]),
                vectors_sha256=sha256(files["vectors"][1]),
                item_count=len(rows),
                index_params=used,
                **ease_fields,
            )
        )
    manifest = ShardManifest(
        version=version,
        shard_count=shard_count,
        assignment_rule=ASSIGNMENT_RULE,
        index_type=index_type,
        params=knobs,
        dimension=dimension,
        metric=METRIC,
        shards=entries,
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ease=ease_block,
    )
    store.put_bytes(manifest_key(version), manifest.to_json())
    return manifest


def read_manifest(store: ArtifactStore, version: str) -> ShardManifest:
    """The version's manifest; ShardRejected when it is missing or unreadable."""
    key = manifest_key(version)
    if not store.exists(key):
        raise ShardRejected(f"version {version} has no index manifest (build-index not run)")
    try:
        return ShardManifest.from_json(store.get_bytes(key))
    except (ValueError, TypeError, KeyError) as error:
        raise ShardRejected(f"version {version}: unreadable manifest ({error})") from error


@dataclass(frozen=True)
class ShardEase:
    """A shard's part of the version's EASE source (`recfleet_models.ease`): the columns of
    B for the vocabulary items this shard owns, with every vocabulary row, so a user's
    history (any shard's items) scores this shard's items."""

    # Every vocabulary item id (whichever shard owns it) -> its row of `weights`.
    vocabulary: dict[str, int]
    # float32 (len(vocabulary), m): column c is B[:, item] for the item at `shard_rows[c]`.
    weights: np.ndarray
    # int64 (m,): the LoadedShard row of each column of `weights`.
    shard_rows: np.ndarray
    l2: float
    # The fusion's ALS weight (`recfleet_models.ease.fused`); 1 - it goes to EASE.
    als_weight: float
    popularity_penalty: float = 0.0
    # float32 (items,): the popularity of each shard row; None without a penalty.
    item_popularity: np.ndarray | None = None


# The shard rows whose ALS scores stand for the shard's when a fused query standardises
# its ALS scores: enough for a stable mean and sd, few enough to score per request.
ALS_POPULATION_SAMPLE = 2048


@dataclass(frozen=True)
class ShardFusion:
    """What fusing ALS and EASE on a shard needs beyond its files, derived once when the
    shard is built (`LoadedShard.fusion`)."""

    ease: ShardEase
    # float32 (s, d): the vectors of the ALS population sample, s = min(2048, items).
    sample: np.ndarray
    # int64 (items,): the EASE column of each shard row, -1 outside the vocabulary.
    column_of_row: np.ndarray
    # float32 (items,): what the fused score subtracts for each shard row (the popularity
    # penalty times the row's popularity); None without a penalty.
    penalty: np.ndarray | None = None

    @classmethod
    def of(cls, ease: ShardEase, vectors: np.ndarray) -> ShardFusion:
        count = len(vectors)
        if count > ALS_POPULATION_SAMPLE:
            rows = np.sort(np.random.default_rng(0).choice(count, ALS_POPULATION_SAMPLE, replace=False))
            sample = np.ascontiguousarray(vectors[rows])
        else:
            sample = vectors
        column_of_row = np.full(count, -1, dtype=np.int64)
        column_of_row[ease.shard_rows] = np.arange(len(ease.shard_rows))
        return cls(ease, sample, column_of_row, penalty_term(ease.popularity_penalty, ease.item_popularity))

    def history_rows(self, history: Sequence[str]) -> np.ndarray:
        """The vocabulary rows of the history's items, each once."""
        vocabulary = self.ease.vocabulary
        return np.fromiter((vocabulary[item] for item in dict.fromkeys(history) if item in vocabulary), dtype=np.int64)

    def ease_moments(self, scores: np.ndarray) -> Moments:
        """The mean and sd of the EASE scores of every item of the shard: the columns'
        `scores`, 0 for the shard's other items."""
        return Moments.of(scores, len(self.column_of_row))


@dataclass
class LoadedShard:
    """One verified shard in memory: the FAISS index, its ids and vectors, and its part
    of the EASE source when the version has one (with what fusing needs, `fusion`)."""

    version: str
    shard: int
    manifest: ShardManifest
    index: faiss.Index
    item_ids: list[str]
    vectors: np.ndarray
    rows: dict[str, int]
    ease: ShardEase | None = None
    fusion: ShardFusion | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.ease is not None:
            self.fusion = ShardFusion.of(self.ease, self.vectors)

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    @property
    def item_count(self) -> int:
        return len(self.item_ids)

    def vector_of(self, item_id: str) -> np.ndarray | None:
        row = self.rows.get(item_id)
        return None if row is None else self.vectors[row]

    @property
    def same_candidates_up_to(self) -> int:
        """Searches asking for up to this many results look at the same candidates, so
        one search with the largest of them answers every smaller one. HNSW walks its
        graph with max(efSearch, k) candidates, so a larger k changes what it finds;
        flat and IVF scan the same items whatever k is."""
        hnsw = getattr(self.index, "hnsw", None)
        return int(hnsw.efSearch) if hnsw is not None else sys.maxsize

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search: (scores, rows), row -1 where fewer than k were found."""
        k = min(k, self.item_count)
        if k <= 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force inner product over the shard's vectors (the ground truth)."""
        k = min(k, self.item_count)
        scores = np.asarray(queries, dtype=np.float32) @ self.vectors.T
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, rows, axis=1), rows


def _verified(store: ArtifactStore, key: str, expected: str) -> bytes:
    try:
        data = store.get_bytes(key)
    except FileNotFoundError as error:
        raise ShardRejected(f"missing shard file {key}") from error
    if sha256(data) != expected:
        raise ShardRejected(f"checksum mismatch for {key.rsplit('/', 1)[-1]}")
    return data


def load_shard(
    store: ArtifactStore, version: str, shard: int, search_params: dict[str, Any] | None = None
) -> LoadedShard:
    """Download, verify (checksums, dimension, counts) and deserialise one shard.

    Raises ShardRejected with the reason on any mismatch. `search_params` overrides the
    manifest's query-time knobs (nprobe, ef_search).
    """
    manifest = read_manifest(store, version)
    if manifest.metric != METRIC:
        raise ShardRejected(f"metric {manifest.metric!r} is not inner product")
    if not 0 <= shard < manifest.shard_count or len(manifest.shards) != manifest.shard_count:
        raise ShardRejected(f"shard {shard} is not in a {manifest.shard_count}-shard manifest")
    entry = manifest.shards[shard]
    index_bytes = _verified(store, entry.index_key, entry.index_sha256)
    ids_bytes = _verified(store, entry.ids_key, entry.ids_sha256)
    vectors_bytes = _verified(store, entry.vectors_key, entry.vectors_sha256)
    try:
        index = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
        item_ids = [str(item) for item in json.loads(ids_bytes)]
        vectors = np.ascontiguousarray(_npy_load(vectors_bytes), dtype=np.float32)
    except (RuntimeError, ValueError) as error:
        raise ShardRejected(f"unreadable shard files: {error}") from error
    if index.d != manifest.dimension:
        raise ShardRejected(f"index dimension {index.d} != manifest dimension {manifest.dimension}")
    if vectors.ndim != 2 or vectors.shape[1] != manifest.dimension:
        raise ShardRejected(f"vectors shape {vectors.shape} does not have dimension {manifest.dimension}")
    if not (len(item_ids) == vectors.shape[0] == index.ntotal == entry.item_count):
        raise ShardRejected(
            f"item counts disagree: ids {len(item_ids)}, vectors {vectors.shape[0]}, "
            f"index {index.ntotal}, manifest {entry.item_count}"
        )
    apply_search_params(index, manifest.index_type, {**manifest.params, **(search_params or {})})
    return LoadedShard(
        version=version,
        shard=shard,
        manifest=manifest,
        index=index,
        item_ids=item_ids,
        vectors=vectors,
        rows={item: row for row, item in enumerate(item_ids)},
        ease=_load_shard_ease(store, manifest, entry),
    )


def _load_shard_ease(store: ArtifactStore, manifest: ShardManifest, entry: ShardEntry) -> ShardEase | None:
    """The shard's part of the EASE source, verified; None when the version has none."""
    block = manifest.ease
    if block is None:
        return None
    if not (entry.ease_key and entry.ease_rows_key):
        raise ShardRejected(f"the manifest has EASE but shard {entry.shard} names no EASE files")
    try:
        items_key, items_sha256 = str(block["items_key"]), str(block["items_sha256"])
        l2, als_weight = float(block["l2"]), float(block["als_weight"])
        penalty = float(block.get("popularity_penalty", 0.0))
    except (KeyError, TypeError, ValueError) as error:
        raise ShardRejected(f"unreadable EASE block in the manifest ({error})") from error
    items_bytes = _verified(store, items_key, items_sha256)
    weights_bytes = _verified(store, entry.ease_key, entry.ease_sha256)
    rows_bytes = _verified(store, entry.ease_rows_key, entry.ease_rows_sha256)
    try:
        item_ids = [str(item) for item in json.loads(items_bytes)]
        weights = _npy_load(weights_bytes)
        shard_rows = _npy_load(rows_bytes)
    except ValueError as error:
        raise ShardRejected(f"unreadable EASE files: {error}") from error
    if weights.dtype != np.float32 or weights.ndim != 2:
        raise ShardRejected(f"EASE weights are {weights.dtype} {weights.shape}, not a float32 matrix")
    if weights.shape[0] != len(item_ids):
        raise ShardRejected(f"EASE weights have {weights.shape[0]} rows for a vocabulary of {len(item_ids)}")
    if shard_rows.dtype != np.int64 or shard_rows.shape != (weights.shape[1],):
        raise ShardRejected(f"EASE rows are {shard_rows.dtype} {shard_rows.shape} for {weights.shape[1]} columns")
    if shard_rows.size and (shard_rows.min() < 0 or shard_rows.max() >= entry.item_count):
        raise ShardRejected(f"EASE rows fall outside the shard's {entry.item_count} items")
    if not 0.0 <= als_weight <= 1.0 or l2 <= 0 or not valid_penalty(penalty):
        raise ShardRejected(f"EASE l2 {l2} / als_weight {als_weight} / popularity_penalty {penalty} out of range")
    item_popularity = None
    if penalty:
        if not entry.popularity_key:
            raise ShardRejected(f"the manifest has a popularity penalty but shard {entry.shard} names no popularity")
        try:
            item_popularity = _npy_load(_verified(store, entry.popularity_key, entry.popularity_sha256))
        except ValueError as error:
            raise ShardRejected(f"unreadable popularity file: {error}") from error
        if item_popularity.dtype != np.float32 or item_popularity.shape != (entry.item_count,):
            raise ShardRejected(
                f"popularity is {item_popularity.dtype} {item_popularity.shape} for {entry.item_count} items"
            )
        if not np.isfinite(item_popularity).all():
            raise ShardRejected("popularity holds NaN or infinite values")
    return ShardEase(
        vocabulary={item: row for row, item in enumerate(item_ids)},
        weights=weights,
        shard_rows=shard_rows,
        l2=l2,
        als_weight=als_weight,
        popularity_penalty=penalty,
        item_popularity=item_popularity,
    )
