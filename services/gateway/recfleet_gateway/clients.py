"""Downstream gRPC clients, organised as a stable and a canary track per service.

`TrackRouter` picks the track for a user: sticky (a hash of service and user id), and
monotone in the weight, so raising a weight only moves users from stable to canary.
Every call records the track it used in `tracks_var`, which becomes the response's
`Recfleet-Tracks` header.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recfleet.candidates.v1 import candidates_pb2_grpc
from recfleet.features.v1 import features_pb2_grpc
from recfleet.ingest.v1 import ingest_pb2_grpc
from recfleet.ranking.v1 import ranking_pb2_grpc
from recfleet_runtime.grpcclient import Downstream

from .settings import GatewaySettings

FEATURE_STORE = "feature-store"
RANKING = "ranking"
CANDIDATE_GEN = "candidate-gen"
EVENT_INGEST = "event-ingest"
SERVICES = (CANDIDATE_GEN, RANKING, FEATURE_STORE, EVENT_INGEST)
# Services whose calls may be mirrored to a canary (shadow traffic): the reads. Mirroring
# event-ingest would store every event twice.
MIRRORED = (CANDIDATE_GEN, RANKING, FEATURE_STORE)
STABLE = "stable"
CANARY = "canary"

# service -> track used, for the request being served.
tracks_var: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("recfleet_tracks", default=None)


def record_track(service: str, track: str) -> None:
    tracks = tracks_var.get()
    if tracks is not None:
        tracks[service] = track


def tracks_header(tracks: dict[str, str]) -> str:
    """`candidate-gen=stable, ranking=canary` in the fleet's fixed service order."""
    return ", ".join(f"{name}={tracks[name]}" for name in SERVICES if name in tracks)


def user_bucket(service: str, user_id: str) -> int:
    """A stable bucket 0..9999 for a user and a service."""
    digest = hashlib.blake2b(f"{service}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000


class TrackRouter:
    """Chooses stable or canary per service and user. A service without a canary target
    always answers stable whatever its weight."""

    def __init__(self, weights: dict[str, int] | None = None, canaries: set[str] | None = None):
        self._weights = dict(weights or {})
        self._canaries = set(canaries or ())

    def has_canary(self, service: str) -> bool:
        return service in self._canaries

    def weight(self, service: str) -> int:
        return self._weights.get(service, 0) if service in self._canaries else 0

    def set_weight(self, service: str, weight: int) -> None:
        if not 0 <= weight <= 100:
            raise ValueError("weight must be within 0..100")
        if weight and service not in self._canaries:
            raise LookupError(f"{service} has no canary target")
        self._weights[service] = weight

    def track_for(self, service: str, user_id: str | None) -> str:
        weight = self.weight(service)
        if weight <= 0:
            return STABLE
        if weight >= 100:
            return CANARY
        return CANARY if user_bucket(service, user_id or "") < weight * 100 else STABLE


@dataclass
class ServiceTracks:
    """One service's clients: the stable track and, when configured, the canary."""

    service: str
    stable: Downstream
    canary: Downstream | None = None

    def pick(self, router: TrackRouter, user_id: str | None) -> Downstream:
        track = router.track_for(self.service, user_id)
        chosen = self.canary if track == CANARY and self.canary is not None else self.stable
        record_track(self.service, chosen.track)
        return chosen

    def all(self) -> list[Downstream]:
        return [d for d in (self.stable, self.canary) if d is not None]


@dataclass
class ShardTracks:
    """candidate-gen: one Downstream per shard, per track."""

    stable: list[Downstream]
    canary: list[Downstream] = field(default_factory=list)
    service: str = CANDIDATE_GEN

    @property
    def shard_count(self) -> int:
        return len(self.stable)

    def pick(self, router: TrackRouter, user_id: str | None) -> list[Downstream]:
        track = router.track_for(self.service, user_id)
        chosen = self.canary if track == CANARY and self.canary else self.stable
        record_track(self.service, chosen[0].track if chosen else STABLE)
        return chosen

    def all(self) -> list[Downstream]:
        return [*self.stable, *self.canary]


def _targets(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


class Fleet:
    """Every downstream client the gateway uses, built from settings."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings

        def pair(service: str, target: str, canary: str, stub, grpc_service: str, timeout: float, reads: tuple):
            stable = Downstream(service, target, stub, grpc_service, timeout, reads, STABLE)
            other = Downstream(service, canary, stub, grpc_service, timeout, reads, CANARY) if canary else None
            return ServiceTracks(service, stable, other)

        self.feature_store = pair(
            FEATURE_STORE,
            settings.feature_store_target,
            settings.feature_store_canary_target,
            features_pb2_grpc.FeatureStoreStub,
            "recfleet.features.v1.FeatureStore",
            settings.feature_store_timeout,
            ("GetUserFeatures", "GetItemFeatures", "GetPopularItems", "ListFeatureViews", "ExportUser"),
        )
        self.ranking = pair(
            RANKING,
            settings.ranking_target,
            settings.ranking_canary_target,
            ranking_pb2_grpc.RankingServiceStub,
            "recfleet.ranking.v1.RankingService",
            settings.ranking_timeout,
            ("Rank", "GetModelStatus"),
        )
        self.event_ingest = pair(
            EVENT_INGEST,
            settings.event_ingest_target,
            settings.event_ingest_canary_target,
            ingest_pb2_grpc.EventIngestStub,
            "recfleet.ingest.v1.EventIngest",
            settings.event_ingest_timeout,
            (),
        )

        def shards(targets: list[str], track: str) -> list[Downstream]:
            return [
                Downstream(
                    f"{CANDIDATE_GEN}-shard-{index}",
                    target,
                    candidates_pb2_grpc.CandidateServiceStub,
                    "recfleet.candidates.v1.CandidateService",
                    settings.candidate_gen_timeout,
                    ("Retrieve", "SimilarItems", "GetShardStatus"),
                    track,
                )
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

    def downstreams(self) -> list[Downstream]:
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

    def __init__(self, downstreams: Sequence[Downstream], cache_seconds: float, timeout: float = 0.5):
        self._downstreams = list(downstreams)
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._checked_at = float("-inf")
        self._result: list[str] = []
        self._lock = asyncio.Lock()

    async def _check(self, downstream: Downstream) -> str | None:
        name = downstream.name if downstream.track == STABLE else f"{downstream.name}:{downstream.track}"
        stub = health_pb2_grpc.HealthStub(downstream.channel)
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
