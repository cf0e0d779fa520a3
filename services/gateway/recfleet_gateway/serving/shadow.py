"""Shadow traffic: a read mirrored to the service's canary in the background, and how far
the canary's answer agrees with the stable one. The caller's response never waits for it.
Writes (event-ingest) are never mirrored: they would be stored twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Counter, Histogram
from recfleet.features.v1 import features_pb2
from recfleet_runtime.metrics import LATENCY_BUCKETS

from ..downstream.clients import DOWNSTREAM_ERRORS
from .items import ItemList

SHADOW_REQUESTS = Counter(
    "recfleet_gateway_shadow_requests_total",
    "Calls mirrored to a canary, by service and outcome.",
    ["service", "outcome"],
)
SHADOW_SECONDS = Histogram(
    "recfleet_gateway_shadow_seconds", "Latency of mirrored canary calls.", ["service"], buckets=LATENCY_BUCKETS
)
SHADOW_OVERLAP = Histogram(
    "recfleet_gateway_shadow_overlap_ratio",
    "Agreement of the mirrored canary answer with the stable one: overlap@10 of the items (ranking,"
    " candidate-gen shards), the share of equal feature values (feature-store).",
    ["service"],
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0),
)

RequestT = TypeVar("RequestT")
ReplyT = TypeVar("ReplyT")


def overlap_at_k(primary: list[str], other: list[str], k: int = 10) -> float:
    top = set(primary[:k])
    return len(top & set(other[:k])) / len(top) if top else 1.0


def item_overlap(primary_ids: list[str], listed: Callable[[ReplyT], ItemList]) -> Callable[[ReplyT], float]:
    """Agreement of a mirrored answer's items (`listed(reply)`) with the stable answer's
    ids (overlap@10)."""
    return lambda reply: overlap_at_k(primary_ids, listed(reply).item_ids)


def feature_agreement(
    primary: features_pb2.GetUserFeaturesResponse,
) -> Callable[[features_pb2.GetUserFeaturesResponse], float]:
    """Agreement of a mirrored user read with the stable one: the share of features (and
    the vector) whose values are equal."""

    def agreement(reply: features_pb2.GetUserFeaturesResponse) -> float:
        names = set(primary.features.values) | set(reply.features.values)
        equal = sum(primary.features.values.get(name) == reply.features.values.get(name) for name in names)
        equal += primary.user_vector == reply.user_vector
        return equal / (len(names) + 1)

    return agreement


class Shadow:
    """Mirrors reads to canaries. `wanted(service)` says whether to mirror this call (the
    traffic controller's shadow share); mirrored calls run as background tasks."""

    def __init__(self, wanted: Callable[[str], bool] = lambda service: False):
        self.wanted = wanted
        self._tasks: set[asyncio.Task] = set()

    def mirror(
        self,
        service: str,
        rpc: Callable[[RequestT], Awaitable[ReplyT]],
        request: RequestT,
        agreement: Callable[[ReplyT], float],
    ) -> None:
        """Send `rpc(request)` to the canary (`rpc` is a canary client's method) in the
        background and record its latency and `agreement` with the stable answer."""

        async def run() -> None:
            started = time.perf_counter()
            try:
                reply = await rpc(request)
            except DOWNSTREAM_ERRORS:
                SHADOW_REQUESTS.labels(service, "error").inc()
                return
            SHADOW_REQUESTS.labels(service, "ok").inc()
            SHADOW_SECONDS.labels(service).observe(time.perf_counter() - started)
            SHADOW_OVERLAP.labels(service).observe(agreement(reply))

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
