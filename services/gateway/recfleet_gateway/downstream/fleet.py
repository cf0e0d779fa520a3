"""Every downstream client the gateway uses, built from settings: a stable and (when
configured) a canary client per service, one client per candidate-gen shard and track,
and the readiness probe over all of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recfleet_runtime.grpcclient import Downstream

from ..settings import GatewaySettings
from .clients import CandidateClient, Coalescing, FeatureStoreClient, IngestClient, RankingClient
from .tracks import CANARY, CANDIDATE_GEN, EVENT_INGEST, FEATURE_STORE, RANKING, STABLE, TrackRouter, record_track

ClientT = TypeVar("ClientT", bound=Downstream[Any])


@dataclass
class ServiceTracks(Generic[ClientT]):
    """One service's clients: the stable track and, when configured, the canary."""

    service: str
    stable: ClientT
    canary: ClientT | None = None

    def pick(self, router: TrackRouter, user_id: str | None) -> ClientT:
        track = router.track_for(self.service, user_id)
        chosen = self.canary if track == CANARY and self.canary is not None else self.stable
        record_track(self.service, chosen.track)
        return chosen

    def all(self) -> list[ClientT]:
        return [d for d in (self.stable, self.canary) if d is not None]


@dataclass
class ShardTracks:
    """candidate-gen: one client per shard, per track."""

    stable: list[CandidateClient]
    canary: list[CandidateClient] = field(default_factory=list)
    service: str = CANDIDATE_GEN

    @property
    def shard_count(self) -> int:
        return len(self.stable)

    def pick(self, router: TrackRouter, user_id: str | None) -> list[CandidateClient]:
        track = router.track_for(self.service, user_id)
        chosen = self.canary if track == CANARY and self.canary else self.stable
        record_track(self.service, chosen[0].track if chosen else STABLE)
        return chosen

    def all(self) -> list[CandidateClient]:
        return [*self.stable, *self.canary]


def _targets(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _tracks(
    service: str, client: Callable[[str, str, float], ClientT], target: str, canary: str, timeout: float
) -> ServiceTracks[ClientT]:
    return ServiceTracks(service, client(target, STABLE, timeout), client(canary, CANARY, timeout) if canary else None)


class Fleet:
    """Every downstream client the gateway uses, built from settings."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        # Reads on the recommendation path share calls between concurrent requests.
        coalescing = Coalescing(settings.coalesce_max_batch, settings.coalesce_max_in_flight)
        self.feature_store = _tracks(
            FEATURE_STORE,
            partial(FeatureStoreClient, coalescing=coalescing),
            settings.feature_store_target,
            settings.feature_store_canary_target,
            settings.feature_store_timeout,
        )
        self.ranking = _tracks(
            RANKING,
            partial(RankingClient, coalescing=coalescing),
            settings.ranking_target,
            settings.ranking_canary_target,
            settings.ranking_timeout,
        )
        self.event_ingest = _tracks(
            EVENT_INGEST,
            IngestClient,
            settings.event_ingest_target,
            settings.event_ingest_canary_target,
            settings.event_ingest_timeout,
        )

        def shards(targets: list[str], track: str) -> list[CandidateClient]:
            return [
                CandidateClient(index, target, track, settings.candidate_gen_timeout, coalescing)
                for index, target in enumerate(targets)
            ]

        canary_shards = _targets(settings.candidate_gen_canary_targets)
        self.candidate_gen = ShardTracks(
            shards(_targets(settings.candidate_gen_targets), STABLE), shards(canary_shards, CANARY)
        )
        canaries = {s.service for s in (self.feature_store, self.ranking, self.event_ingest) if s.canary}
        if canary_shards:
            canaries.add(CANDIDATE_GEN)
        self.router = TrackRouter(settings.canary_weights, canaries)
        self._health = HealthProbe(self.downstreams(), settings.readiness_cache_seconds)

    def downstreams(self) -> list[Downstream[Any]]:
        return [
            *self.candidate_gen.all(),
            *self.ranking.all(),
            *self.feature_store.all(),
            *self.event_ingest.all(),
        ]

    async def not_serving(self) -> list[str]:
        return await self._health.not_serving()

    async def close(self) -> None:
        await asyncio.gather(*(d.close() for d in self.downstreams()), return_exceptions=True)


class HealthProbe:
    """The standard gRPC health check against every downstream, cached briefly so that
    frequent readiness probes do not multiply into downstream calls."""

    def __init__(self, downstreams: Sequence[Downstream[Any]], cache_seconds: float, timeout: float = 0.5):
        self._downstreams = list(downstreams)
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._checked_at = float("-inf")
        self._result: list[str] = []
        self._lock = asyncio.Lock()

    async def _check(self, downstream: Downstream[Any]) -> str | None:
        name = downstream.name if downstream.track == STABLE else f"{downstream.name}:{downstream.track}"
        # types-grpcio-health-checking declares HealthStub without its methods.
        stub: Any = health_pb2_grpc.HealthStub(downstream.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self._timeout)
        except grpc.aio.AioRpcError:
            return name
        return None if reply.status == health_pb2.HealthCheckResponse.SERVING else name

    async def not_serving(self) -> list[str]:
        async with self._lock:
            if time.monotonic() - self._checked_at >= self._cache_seconds:
                results = await asyncio.gather(*(self._check(d) for d in self._downstreams))
                self._result = [name for name in results if name]
                self._checked_at = time.monotonic()
            return list(self._result)
