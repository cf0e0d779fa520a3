"""`recfleet-jobs build-index`: the FAISS shards of an ALS version."""

from __future__ import annotations

import json
import time

import psycopg
import typer
from recfleet_models.index import DEFAULT_PARAMS, INDEX_TYPES, build_shards
from recfleet_store import registry
from recfleet_store.artifacts import open_artifact_store

from .registry import record_manifest
from .settings import JobSettings

# What build-index prints of the manifest's EASE block.
EASE_SUMMARY = ("l2", "als_weight", "popularity_penalty")


def index_params(settings: JobSettings, index_type: str, **given: int | None) -> dict[str, int]:
    """The knobs of an index type: command-line values over JobSettings defaults.

    A knob that the index type does not have is refused rather than silently ignored.
    """
    defaults = {
        "flat": {},
        "ivf": {"nlist": settings.ivf_nlist, "nprobe": settings.ivf_nprobe},
        "hnsw": {"m": settings.hnsw_m, "ef_search": settings.hnsw_ef_search},
    }[index_type]
    chosen = {key: value for key, value in given.items() if value is not None}
    foreign = sorted(set(chosen) - set(DEFAULT_PARAMS[index_type]))
    if foreign:
        options = ", ".join("--" + key.replace("_", "-") for key in foreign)
        raise typer.BadParameter(f"{options}: not a knob of a {index_type} index", param_hint="--index-type")
    return {**defaults, **chosen}


def build_index_command(
    version: str = typer.Option("", help="ALS version; default: the newest registered one"),
    shards: int = typer.Option(0, min=0, help="shard count; default RECFLEET_JOBS_SHARD_COUNT"),
    index_type: str = typer.Option("", help=f"one of {', '.join(INDEX_TYPES)}; default RECFLEET_JOBS_INDEX_TYPE"),
    nlist: int | None = typer.Option(None, min=1, help="ivf: inverted lists (capped for small shards)"),
    nprobe: int | None = typer.Option(None, min=1, help="ivf: lists probed per query"),
    m: int | None = typer.Option(None, min=2, help="hnsw: neighbours per node"),
    ef_construction: int | None = typer.Option(None, min=1, help="hnsw: candidate list size while building"),
    ef_search: int | None = typer.Option(None, min=1, help="hnsw: candidate list size per query"),
) -> None:
    """Build and publish the FAISS shards of an ALS version (manifest written last) and
    record the index in the registry."""
    settings = JobSettings()
    index_type = index_type or settings.index_type
    if index_type not in INDEX_TYPES:
        raise typer.BadParameter(f"{index_type!r} is not one of {', '.join(INDEX_TYPES)}", param_hint="--index-type")
    if not version:
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            version = registry.latest_version(conn, "als") or ""
        if not version:
            raise typer.BadParameter("no ALS version is registered; run train-als first", param_hint="--version")
    params = index_params(
        settings, index_type, nlist=nlist, nprobe=nprobe, m=m, ef_construction=ef_construction, ef_search=ef_search
    )
    started = time.perf_counter()
    manifest = build_shards(
        open_artifact_store(settings.artifact_url), version, shards or settings.shard_count, index_type, params
    )
    # Promotion gates read the registry (the gateway has no artifact store): record it there.
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        record_manifest(conn, manifest)
    typer.echo(
        json.dumps(
            {
                "version": manifest.version,
                "shard_count": manifest.shard_count,
                "index_type": manifest.index_type,
                "params": manifest.params,
                "dimension": manifest.dimension,
                "items_per_shard": [entry.item_count for entry in manifest.shards],
                "ease": manifest.ease and {key: manifest.ease[key] for key in EASE_SUMMARY},
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
    )


def register(app: typer.Typer) -> None:
    app.command("build-index")(build_index_command)
