"""Sharded FAISS index: known answers on a tiny catalog, manifest, verification on load."""

from __future__ import annotations

import io
import json

import faiss
import numpy as np
import pytest
from recfleet_store.artifacts import DirectoryArtifactStore, sha256

from recfleet_models import index as shard_index
from recfleet_models.sharding import ASSIGNMENT_RULE, shard_of

TINY = {
    "a": [1.0, 0.0, 0.0],
    "b": [0.9, 0.1, 0.0],
    "c": [0.0, 1.0, 0.0],
    "d": [0.0, 0.0, 1.0],
    "e": [0.5, 0.5, 0.0],
    "f": [-1.0, 0.0, 0.0],
}


def write_als_version(store, version: str, item_ids: list[str], factors: np.ndarray) -> None:
    """The item half of an ALS version as docs/CONTRACTS.md lays it out."""
    prefix = f"models/als/{version}/"
    buffer = io.BytesIO()
    np.save(buffer, factors.astype(np.float32))
    files = {"item_ids.json": json.dumps(item_ids).encode(), "item_factors.npy": buffer.getvalue()}
    files["meta.json"] = json.dumps(
        {"version": version, "factors": factors.shape[1], "n_items": len(item_ids)}
    ).encode()
    for name, data in files.items():
        store.put_bytes(prefix + name, data)
    store.put_bytes(prefix + "checksums.json", json.dumps({n: sha256(d) for n, d in files.items()}).encode())


@pytest.fixture
def store(artifact_dir):
    return DirectoryArtifactStore(artifact_dir)


def merged_top(store, version, shard_count, query, k):
    """Scatter to every shard and merge by score, as the gateway does."""
    found = []
    for shard in range(shard_count):
        loaded = shard_index.load_shard(store, version, shard)
        scores, rows = loaded.search(np.array([query], dtype=np.float32), k)
        found += [(float(s), loaded.item_ids[r]) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0]
    found.sort(key=lambda pair: (-pair[0], pair[1]))
    return found[:k]


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw"])
def test_known_answer_on_tiny_catalog(store, index_type):
    write_als_version(store, "als-tiny", list(TINY), np.array(list(TINY.values())))
    shard_index.build_shards(store, "als-tiny", 2, index_type, {})
    top = merged_top(store, "als-tiny", 2, [1.0, 0.0, 0.0], 3)
    assert [item for _, item in top] == ["a", "b", "e"]
    assert [round(score, 4) for score, _ in top] == [1.0, 0.9, 0.5]
    assert merged_top(store, "als-tiny", 2, [0.0, 0.0, 1.0], 1)[0][1] == "d"


def test_manifest_describes_every_shard(store):
    write_als_version(store, "als-tiny", list(TINY), np.array(list(TINY.values())))
    manifest = shard_index.build_shards(store, "als-tiny", 2, "hnsw", {"m": 8, "ef_search": 16})
    stored = shard_index.ShardManifest.from_json(store.get_bytes("models/als/als-tiny/index/manifest.json"))
    assert stored == manifest
    assert (stored.shard_count, stored.assignment_rule, stored.metric) == (2, ASSIGNMENT_RULE, "ip")
    assert stored.dimension == 3 and stored.index_type == "hnsw"
    assert stored.params == {"m": 8, "ef_construction": 200, "ef_search": 16}
    assert stored.item_count == len(TINY)
    for entry in stored.shards:
        ids = json.loads(store.get_bytes(entry.ids_key))
        assert {shard_of(item, 2) for item in ids} <= {entry.shard}
        assert len(ids) == entry.item_count
        assert entry.index_key == f"models/als/als-tiny/index/shard-{entry.shard}.faiss"
        assert sha256(store.get_bytes(entry.vectors_key)) == entry.vectors_sha256


def test_ivf_nlist_is_capped_for_small_shards_and_recall_holds(store):
    rng = np.random.default_rng(7)
    ids = [f"item{i}" for i in range(3000)]
    write_als_version(store, "als-rand", ids, rng.standard_normal((3000, 16)))
    manifest = shard_index.build_shards(store, "als-rand", 2, "ivf", {"nlist": 4096, "nprobe": 20})
    for entry in manifest.shards:
        assert entry.index_params["nlist"] <= entry.item_count // shard_index.MIN_POINTS_PER_LIST
    loaded = shard_index.load_shard(store, "als-rand", 0)
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    _, approx = loaded.search(queries, 10)
    _, exact = loaded.exact_search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.9


def test_unknown_index_type_and_knobs_are_refused(store):
    write_als_version(store, "als-tiny", list(TINY), np.array(list(TINY.values())))
    with pytest.raises(ValueError, match="unknown index type"):
        shard_index.build_shards(store, "als-tiny", 2, "lsh", {})
    with pytest.raises(ValueError, match="nprobe"):
        shard_index.build_shards(store, "als-tiny", 2, "hnsw", {"nprobe": 3})
    with pytest.raises(FileNotFoundError):
        shard_index.build_shards(store, "als-missing", 2, "flat", {})


def test_load_rejects_a_tampered_shard_file(store):
    write_als_version(store, "als-tiny", list(TINY), np.array(list(TINY.values())))
    manifest = shard_index.build_shards(store, "als-tiny", 2, "flat", {})
    key = manifest.shards[1].vectors_key
    data = bytearray(store.get_bytes(key))
    data[-1] ^= 0xFF
    store.put_bytes(key, bytes(data))
    with pytest.raises(shard_index.ShardRejected, match=r"checksum mismatch for shard-1\.vectors\.npy"):
        shard_index.load_shard(store, "als-tiny", 1)
    assert shard_index.load_shard(store, "als-tiny", 0).item_count == manifest.shards[0].item_count


def test_load_rejects_an_index_of_the_wrong_dimension(store):
    write_als_version(store, "als-tiny", list(TINY), np.array(list(TINY.values())))
    manifest = shard_index.build_shards(store, "als-tiny", 2, "flat", {})
    entry = manifest.shards[0]
    wrong = faiss.IndexFlatIP(5)
    wrong.add(np.zeros((entry.item_count, 5), dtype=np.float32))
    data = faiss.serialize_index(wrong).tobytes()
    store.put_bytes(entry.index_key, data)
    raw = json.loads(store.get_bytes(shard_index.manifest_key("als-tiny")))
    raw["shards"][0]["index_sha256"] = sha256(data)
    store.put_bytes(shard_index.manifest_key("als-tiny"), json.dumps(raw).encode())
    with pytest.raises(shard_index.ShardRejected, match="dimension 5 != manifest dimension 3"):
        shard_index.load_shard(store, "als-tiny", 0)


def test_missing_manifest_is_rejected(store):
    with pytest.raises(shard_index.ShardRejected, match="no index manifest"):
        shard_index.load_shard(store, "als-never-built", 0)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_ease(
    store,
    version: str,
    item_ids: list[str],
    weights: np.ndarray,
    l2: float,
    als_weight: float,
    penalty: float = 0.0,
    popularity: np.ndarray | None = None,
) -> None:
    """An EASE source in an ALS version as train-als publishes it (`ease/`, in
    checksums.json); with a popularity `penalty`, the items' `popularity` beside it."""
    prefix = f"models/als/{version}/"
    meta = {"l2": l2, "als_weight": als_weight, "vocabulary_size": len(item_ids)}
    if penalty:
        meta["popularity_penalty"] = penalty
    files = {
        "ease/items.json": json.dumps(item_ids).encode(),
        "ease/weights.npy": _npy(weights.astype(np.float32)),
        "ease/meta.json": json.dumps(meta).encode(),
    }
    if popularity is not None:
        files["ease/popularity.npy"] = _npy(popularity)
    checksums = json.loads(store.get_bytes(prefix + "checksums.json"))
    for name, data in files.items():
        store.put_bytes(prefix + name, data)
        checksums[name] = sha256(data)
    store.put_bytes(prefix + "checksums.json", json.dumps(checksums).encode())


# Items a-f and k fall in shard 1 of 2, g-j and l in shard 0.
CATALOG = list("abcdefghijkl")
VOCABULARY = ["e", "h", "a", "l", "d", "g", "b", "c"]  # B's order; f and i-k are outside it


def _ease_version(store, version: str = "als-ease") -> np.ndarray:
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((len(VOCABULARY), len(VOCABULARY))).astype(np.float32)
    np.fill_diagonal(weights, 0.0)
    write_als_version(store, version, CATALOG, rng.standard_normal((len(CATALOG), 3)))
    write_ease(store, version, VOCABULARY, weights, 200.0, 0.6)
    return weights


def test_each_shard_scores_its_own_items_as_the_whole_ease_model_does(store):
    weights = _ease_version(store)
    manifest = shard_index.build_shards(store, "als-ease", 2, "flat", {})
    assert manifest.ease is not None and (manifest.ease["l2"], manifest.ease["als_weight"]) == (200.0, 0.6)
    assert json.loads(store.get_bytes(manifest.ease["items_key"])) == VOCABULARY
    assert {shard_of(item, 2) for item in VOCABULARY} == {0, 1}
    history = ["a", "h", "c"]
    expected = weights[[VOCABULARY.index(item) for item in history]].sum(axis=0)
    scored: dict[str, float] = {}
    columns = 0
    for shard in range(2):
        loaded = shard_index.load_shard(store, "als-ease", shard)
        ease = loaded.ease
        assert ease is not None and (ease.l2, ease.als_weight) == (200.0, 0.6)
        assert ease.vocabulary == {item: row for row, item in enumerate(VOCABULARY)}
        assert ease.weights.dtype == np.float32 and ease.shard_rows.dtype == np.int64
        assert list(ease.shard_rows) == sorted(ease.shard_rows)  # in shard row order
        scores = ease.weights[[ease.vocabulary[item] for item in history]].sum(axis=0)
        columns += len(scores)
        for row, score in zip(ease.shard_rows.tolist(), scores.tolist(), strict=True):
            scored[loaded.item_ids[row]] = score
    # Every vocabulary item is scored by exactly the shard that owns it, the others by none.
    assert columns == len(VOCABULARY)
    assert scored == pytest.approx({item: float(expected[column]) for column, item in enumerate(VOCABULARY)})


def test_a_version_without_ease_and_an_older_manifest_load_without_it(store):
    write_als_version(store, "als-tiny", list(TINY), np.array(list(TINY.values())))
    manifest = shard_index.build_shards(store, "als-tiny", 2, "flat", {})
    assert manifest.ease is None and all(entry.ease_key == "" for entry in manifest.shards)
    raw = json.loads(store.get_bytes(shard_index.manifest_key("als-tiny")))
    del raw["ease"]
    for entry in raw["shards"]:
        for key in ("ease_key", "ease_sha256", "ease_rows_key", "ease_rows_sha256"):
            del entry[key]
    store.put_bytes(shard_index.manifest_key("als-tiny"), json.dumps(raw).encode())
    loaded = shard_index.load_shard(store, "als-tiny", 0)
    assert loaded.ease is None and loaded.item_count == manifest.shards[0].item_count


def test_a_corrupted_ease_file_is_refused(store):
    _ease_version(store)
    manifest = shard_index.build_shards(store, "als-ease", 2, "flat", {})
    key = manifest.shards[1].ease_key
    data = bytearray(store.get_bytes(key))
    data[-1] ^= 0xFF
    store.put_bytes(key, bytes(data))
    with pytest.raises(shard_index.ShardRejected, match=r"checksum mismatch for shard-1\.ease\.npy"):
        shard_index.load_shard(store, "als-ease", 1)
    assert shard_index.load_shard(store, "als-ease", 0).ease is not None
    # The version's own copy is checked before any shard is built from it.
    store.put_bytes("models/als/als-ease/ease/weights.npy", bytes(data))
    with pytest.raises(ValueError, match=r"ease/weights\.npy does not match its checksum"):
        shard_index.build_shards(store, "als-ease", 2, "flat", {})


def test_ease_rows_outside_the_shard_are_refused(store):
    _ease_version(store)
    manifest = shard_index.build_shards(store, "als-ease", 2, "flat", {})
    entry = max(manifest.shards, key=lambda e: len(np.load(io.BytesIO(store.get_bytes(e.ease_rows_key)))))
    rows = np.load(io.BytesIO(store.get_bytes(entry.ease_rows_key)))
    rows[-1] = entry.item_count  # one past the shard's last row
    buffer = io.BytesIO()
    np.save(buffer, rows)
    store.put_bytes(entry.ease_rows_key, buffer.getvalue())
    raw = json.loads(store.get_bytes(shard_index.manifest_key("als-ease")))
    raw["shards"][entry.shard]["ease_rows_sha256"] = sha256(buffer.getvalue())
    store.put_bytes(shard_index.manifest_key("als-ease"), json.dumps(raw).encode())
    with pytest.raises(shard_index.ShardRejected, match="EASE rows fall outside the shard"):
        shard_index.load_shard(store, "als-ease", entry.shard)


def test_a_popularity_penalty_gives_each_shard_its_items_popularity(store):
    _ease_version(store)
    popularity = np.linspace(-1.5, 1.5, len(CATALOG), dtype=np.float32)
    write_ease(store, "als-ease", VOCABULARY, np.zeros((8, 8)), 200.0, 0.6, 0.5, popularity)
    manifest = shard_index.build_shards(store, "als-ease", 2, "flat", {})
    assert manifest.ease is not None and manifest.ease["popularity_penalty"] == 0.5
    for shard in range(2):
        loaded = shard_index.load_shard(store, "als-ease", shard)
        assert loaded.ease is not None and loaded.fusion is not None and loaded.ease.popularity_penalty == 0.5
        expected = [popularity[CATALOG.index(item)] for item in loaded.item_ids]
        assert loaded.ease.item_popularity is not None and loaded.ease.item_popularity.tolist() == expected
        np.testing.assert_allclose(loaded.fusion.penalty, 0.5 * np.array(expected), rtol=1e-6)
    # Tampered with: refused, as every other shard file.
    key = manifest.shards[0].popularity_key
    store.put_bytes(key, _npy(np.zeros(manifest.shards[0].item_count, dtype=np.float32)))
    with pytest.raises(shard_index.ShardRejected, match=r"checksum mismatch for shard-0\.popularity\.npy"):
        shard_index.load_shard(store, "als-ease", 0)


def test_a_version_without_a_penalty_has_no_popularity_and_one_missing_it_is_refused(store):
    _ease_version(store)
    manifest = shard_index.build_shards(store, "als-ease", 2, "flat", {})
    assert manifest.ease is not None and manifest.ease["popularity_penalty"] == 0.0
    assert all(entry.popularity_key == "" for entry in manifest.shards)
    loaded = shard_index.load_shard(store, "als-ease", 0)
    assert loaded.fusion is not None and loaded.fusion.penalty is None
    # A penalty whose popularity is missing (or sized for another catalog) never builds.
    write_ease(store, "als-ease", VOCABULARY, np.zeros((8, 8)), 200.0, 0.6, 0.5)
    with pytest.raises(ValueError, match=r"ease/popularity\.npy is missing"):
        shard_index.build_shards(store, "als-ease", 2, "flat", {})
    write_ease(store, "als-ease", VOCABULARY, np.zeros((8, 8)), 200.0, 0.6, 0.5, np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="item popularity float32 \\(3,\\) for 12 items"):
        shard_index.build_shards(store, "als-ease", 2, "flat", {})
    nan = np.full(len(CATALOG), np.nan, dtype=np.float32)
    write_ease(store, "als-ease", VOCABULARY, np.zeros((8, 8)), 200.0, 0.6, 0.5, nan)
    with pytest.raises(ValueError, match="item popularity holds NaN or infinite values"):
        shard_index.build_shards(store, "als-ease", 2, "flat", {})
    # A manifest naming a penalty without a shard's popularity file is refused at load.
    raw = json.loads(store.get_bytes(shard_index.manifest_key("als-ease")))
    raw["ease"]["popularity_penalty"] = 0.5
    store.put_bytes(shard_index.manifest_key("als-ease"), json.dumps(raw).encode())
    with pytest.raises(shard_index.ShardRejected, match="names no popularity"):
        shard_index.load_shard(store, "als-ease", 0)
