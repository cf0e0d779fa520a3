"""The ranker artifact format: what `train-ranker` writes and the ranking service loads.

Layout (docs/CONTRACTS.md): `models/ranker/<version>/` holds `model.txt` (LightGBM text
model), `meta.json` (feature names, training metrics) and `checksums.json` (sha256 of
both). A version whose checksums do not match is refused. Bytes move through the
`recfleet_store.artifacts.ArtifactStore` interface; which store holds them is the
caller's choice.
"""

from __future__ import annotations

import json

from recfleet_store.artifacts import ArtifactStore, sha256

from .learned import LearnedRanker

KIND = "ranker"
MODEL_FILE = "model.txt"
META_FILE = "meta.json"
CHECKSUMS_FILE = "checksums.json"


class ModelLoadError(RuntimeError):
    """A ranker version could not be loaded (missing files, bad checksum, bad model)."""


def artifact_prefix(version: str) -> str:
    return f"models/{KIND}/{version}/"


def write_ranker(store: ArtifactStore, version: str, model_text: str, meta_json: str) -> str:
    """Write a version's files (checksums last, so a reader never sees a partial version)."""
    prefix = artifact_prefix(version)
    files = {MODEL_FILE: model_text.encode(), META_FILE: meta_json.encode()}
    for name, data in files.items():
        store.put_bytes(prefix + name, data)
    store.put_bytes(prefix + CHECKSUMS_FILE, json.dumps({n: sha256(d) for n, d in files.items()}, indent=2).encode())
    return prefix


def load_ranker(store: ArtifactStore, version: str, prefix: str | None = None) -> LearnedRanker:
    """Read and verify one version. Raises ModelLoadError with the reason."""
    prefix = prefix or artifact_prefix(version)
    if not prefix.endswith("/"):
        prefix += "/"
    try:
        checksums = json.loads(store.get_bytes(prefix + CHECKSUMS_FILE))
        files = {name: store.get_bytes(prefix + name) for name in (MODEL_FILE, META_FILE)}
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"ranker {version}: {error}") from error
    for name, data in files.items():
        if checksums.get(name) != sha256(data):
            raise ModelLoadError(f"ranker {version}: checksum mismatch for {name}")
    try:
        return LearnedRanker.from_text(version, files[MODEL_FILE].decode(), json.loads(files[META_FILE]))
    except Exception as error:
        raise ModelLoadError(f"ranker {version}: {error}") from error
