"""Wires one candidate-gen process: settings -> served index, registry poller, gRPC service."""

from __future__ import annotations

import asyncio
import time

import faiss
import structlog
from recfleet.candidates.v1 import candidates_pb2_grpc
from recfleet_runtime.grpcserver import GrpcService
from recfleet_store.artifacts import open_artifact_store

from .adapters.catalog import CatalogReader
from .adapters.registry import RegistryReader
from .adapters.shards import ArtifactShardSource
from .metadata_items import MetadataItems
from .served_index import ServedIndex
from .servicer import SERVICE_NAME, CandidateServicer
from .settings import CandidateSettings
from .shard_identity import resolve_shard

log = structlog.get_logger("recfleet.candidates")


class CandidateApp:
    """The served index, the poller that keeps it on the wanted version, and the server."""

    def __init__(self, settings: CandidateSettings):
        self.settings = settings
        faiss.omp_set_num_threads(settings.search_threads)
        shard = resolve_shard(settings.shard, settings.pod_name, settings.shard_count)
        source = ArtifactShardSource(open_artifact_store(settings.artifact_url))
        self.index = ServedIndex(
            shard,
            settings.shard_count,
            source.load,
            settings.sanity_sample,
            settings.min_sanity_recall,
            settings.search_threads,
            settings.keep_previous_seconds,
        )
        self.metadata = MetadataItems(
            shard,
            settings.shard_count,
            CatalogReader(settings.postgres_dsn),
            source.item_factors,
            settings.metadata_min_tag_items,
        )
        self.registry = RegistryReader(settings.postgres_dsn)
        self.service = GrpcService("candidate-gen", settings, [SERVICE_NAME])
        candidates_pb2_grpc.add_CandidateServiceServicer_to_server(
            CandidateServicer(
                self.index,
                self.metadata,
                self.wanted_version,
                settings.inline_search_max_flat_items,
                settings.search_threads,
            ),
            self.service.server,
        )

    async def wanted_version(self) -> str | None:
        """The pinned version (canary) when set, else the registry's serving ALS version."""
        return self.settings.model_version or await self.registry.serving_version()

    async def poll_once(self) -> None:
        """Keep the shard on the wanted version, then its metadata items on the catalog."""
        await self._follow_registry()
        current = self.index.current
        if current is None:
            return
        try:
            await self.metadata.refresh(current)
        except Exception:  # the shard keeps serving the last metadata items it had
            log.exception("metadata items refresh failed", shard=self.index.shard, version=current.version)

    async def _follow_registry(self) -> None:
        version = await self.wanted_version()
        if not version or version == self.index.version:
            return
        # A refused version is retried only after a back-off: loading and checking a large
        # shard costs CPU that serving needs.
        retry_after = max(10 * self.settings.registry_poll_seconds, 30.0)
        if version == self.index.refused_version and time.monotonic() - self.index.refused_at < retry_after:
            return
        first = self.index.current is None
        if await self.index.reload(version) and first:
            await self.service.health.set_serving(True)

    async def warm_up(self) -> bool:
        """One load attempt. With no model version in the registry at all (a fresh
        install) the shard is SERVING at once: it has nothing to load, `Retrieve` says so,
        and the gateway serves the popular and cold-start rungs until the first training
        run promotes a version. When a wanted version fails to load, the poller keeps
        trying and turns health SERVING later."""
        await self.poll_once()
        return self.index.current is not None or not await self.wanted_version()

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_seconds)
            try:
                await self.poll_once()
            except Exception:
                log.exception("registry poll failed", shard=self.index.shard)

    async def close(self) -> None:
        await self.registry.close()
        await self.metadata.close()
