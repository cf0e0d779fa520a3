"""User erasure across every store, tracked by a receipt in the `erasures` table.

The request is recorded first (so the receipt exists even if the gateway dies), then
each store erases the user: event-ingest (events, Kafka tombstone), the feature store
(online and offline features, profile) and the gateway's own state (result cache,
rate-limit counters, experiment exposures, buffered or written). `stores` records each
store's outcome; `completed_at` is set once all succeeded. A failed store is retried a
few times, then left `failed` for an operator.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

from recfleet.features.v1 import features_pb2
from recfleet.ingest.v1 import ingest_pb2
from recfleet_runtime.logging import get_logger

from ..adapters.erasures import ErasureTable
from ..adapters.exposures import ExposureLog
from ..downstream.clients import DOWNSTREAM_ERRORS
from ..downstream.fleet import Fleet
from ..rest.ratelimit import RateLimiter
from .cache import ResultCache

log = get_logger("recfleet.gateway.erasure")
ERASE_TIMEOUT = 30.0
ATTEMPTS = 3


def receipt_status(completed: bool, stores: dict) -> str:
    if completed:
        return "completed"
    if any(state.get("state") == "failed" for state in stores.values()):
        return "failed"
    return "pending"


class ErasureService:
    def __init__(
        self,
        table: ErasureTable,
        fleet: Fleet,
        cache: ResultCache,
        limiter: RateLimiter,
        exposures: ExposureLog | None = None,
    ):
        self._table = table
        self._exposures = exposures
        self._fleet = fleet
        self._cache = cache
        self._limiter = limiter
        self._tasks: set[asyncio.Task] = set()
        self.retry_pause = 1.0

    async def request(self, user_id: str) -> dict:
        """Records the request and starts the erasure in the background; returns the receipt."""
        receipt_id = "er_" + secrets.token_hex(12)
        stores = {name: {"state": "pending"} for name in ("event-ingest", "feature-store", "gateway")}
        await self._table.insert(receipt_id, user_id, stores)
        task = asyncio.create_task(self._run(receipt_id, user_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        receipt = await self.get(receipt_id)
        assert receipt is not None
        return receipt

    async def get(self, receipt_id: str) -> dict | None:
        row = await self._table.get(receipt_id)
        if row is None:
            return None
        return {
            "receipt_id": row.receipt_id,
            "user_id": row.user_id,
            "status": receipt_status(row.completed_at is not None, row.stores),
            "requested_at": row.requested_at,
            "completed_at": row.completed_at,
            "stores": row.stores,
        }

    async def _attempt(self, receipt_id: str, store: str, action: Callable[[], Awaitable[dict]]) -> bool:
        error = ""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                outcome = await action()
            except (*DOWNSTREAM_ERRORS, OSError) as exc:
                error = str(exc.details()) if hasattr(exc, "details") else str(exc)
                log.warning("erasure step failed", store=store, attempt=attempt, error=error)
                await asyncio.sleep(self.retry_pause * attempt)
                continue
            await self._table.record_store(receipt_id, store, {"state": "done", **outcome})
            return True
        await self._table.record_store(receipt_id, store, {"state": "failed", "error": error, "attempts": ATTEMPTS})
        return False

    async def _run(self, receipt_id: str, user_id: str) -> None:
        async def ingest() -> dict:
            reply = await self._fleet.event_ingest.stable.erase_user(
                ingest_pb2.EraseUserRequest(user_id=user_id, receipt_id=receipt_id), timeout=ERASE_TIMEOUT
            )
            return {"events_removed": reply.events_removed, "tombstone_written": reply.tombstone_written}

        async def features() -> dict:
            reply = await self._fleet.feature_store.stable.erase_user(
                features_pb2.EraseUserRequest(user_id=user_id, receipt_id=receipt_id), timeout=ERASE_TIMEOUT
            )
            return {"removed": dict(reply.removed)}

        async def gateway() -> dict:
            removed = await self._cache.forget_user(user_id)
            await self._limiter.forget_user(user_id)
            exposures = await self._exposures.erase_user(user_id) if self._exposures is not None else 0
            return {"cache_keys_removed": removed, "rate_limit_counters": "cleared", "exposures_removed": exposures}

        try:
            results = await asyncio.gather(
                self._attempt(receipt_id, "event-ingest", ingest),
                self._attempt(receipt_id, "feature-store", features),
                self._attempt(receipt_id, "gateway", gateway),
            )
            if all(results):
                await self._table.mark_completed(receipt_id)
                log.info("erasure completed", receipt_id=receipt_id)
        except Exception:
            log.exception("erasure crashed", receipt_id=receipt_id)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
