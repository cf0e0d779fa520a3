"""candidate-gen test fixtures: synthetic ALS versions in a directory artifact store, the
real Postgres registry, and real gRPC servers on port 0."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from contextlib import asynccontextmanager

import grpc
import numpy as np
import psycopg
import pytest
from recfleet.candidates.v1 import candidates_pb2_grpc
from recfleet_candidates.app import CandidateApp
from recfleet_candidates.settings import CandidateSettings
from recfleet_models.index import build_shards
from recfleet_store import registry
from recfleet_store.artifacts import DirectoryArtifactStore, sha256

# The tests' shared helpers (retrieve_calls.py) live beside them.
sys.path.insert(0, os.path.dirname(__file__))


def write_als_version(store, version: str, item_ids: list[str], factors) -> None:
    """An ALS version's item files, meta.json and checksums.json as docs/CONTRACTS.md lays them out."""
    factors = np.asarray(factors, dtype=np.float32)
    prefix = f"models/als/{version}/"
    buffer = io.BytesIO()
    np.save(buffer, factors)
    files = {
        "item_ids.json": json.dumps(item_ids).encode(),
        "item_factors.npy": buffer.getvalue(),
        "meta.json": json.dumps({"version": version, "factors": factors.shape[1], "n_items": len(item_ids)}).encode(),
    }
    for name, data in files.items():
        store.put_bytes(prefix + name, data)
    store.put_bytes(prefix + "checksums.json", json.dumps({n: sha256(d) for n, d in files.items()}).encode())


class Catalog:
    """Publishes versions (artifacts + shards + registry row) and starts shard servers."""

    def __init__(self, artifact_dir, dsn: str):
        self.artifact_url = f"file://{artifact_dir}"
        self.store = DirectoryArtifactStore(artifact_dir)
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)

    def publish(self, version, item_ids, factors, shard_count=2, index_type="flat", params=None, promote=False):
        write_als_version(self.store, version, item_ids, factors)
        manifest = build_shards(self.store, version, shard_count, index_type, params or {})
        registry.register_version(self.conn, version, "als", f"models/als/{version}/", {}, {})
        if promote:
            registry.promote(self.conn, "als", version, artifact_store=self.store)
        return manifest

    def promote(self, version):
        return registry.promote(self.conn, "als", version, artifact_store=self.store)

    def rollback(self):
        return registry.rollback(self.conn, "als")

    @asynccontextmanager
    async def shard_server(self, shard: int, shard_count: int = 2, **overrides):
        settings = CandidateSettings(
            shard=shard,
            shard_count=shard_count,
            artifact_url=self.artifact_url,
            postgres_dsn=self.dsn,
            registry_poll_seconds=0.1,
            grpc_port=0,
            metrics_port=0,
            drain_seconds=0,
            grace_seconds=0.5,
            **overrides,
        )
        app = CandidateApp(settings)
        port = await app.service.start("127.0.0.1:0")
        if await app.warm_up():
            await app.service.health.set_serving(True)
        poller = asyncio.create_task(app.poll_forever())
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield ShardHandle(app, port, candidates_pb2_grpc.CandidateServiceStub(channel))
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            await channel.close()
            await app.service.server.stop(0)
            await app.close()

    def close(self):
        self.conn.close()


class ShardHandle:
    def __init__(self, app: CandidateApp, port: int, stub):
        self.app = app
        self.port = port
        self.stub = stub


@pytest.fixture
def catalog(artifact_dir, fresh_pg_dsn):
    built = Catalog(artifact_dir, fresh_pg_dsn)
    yield built
    built.close()


async def eventually(predicate, timeout: float = 10.0) -> None:
    """Wait until an async predicate holds (the registry poll runs every 0.1 s here)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.fixture
def wait_until():
    return eventually
