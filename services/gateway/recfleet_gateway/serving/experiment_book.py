"""Online experiments on the request path: the running experiments (re-read so that
every replica follows a create or stop), which variant a request gets, and the exposure
each response under an experiment logs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import psycopg
from recfleet_runtime.logging import get_logger

from ..adapters.experiments import ExperimentStore
from ..adapters.exposures import ExposureLog
from ..experiments import Assignment, ExperimentSpec, assignment, choose

log = get_logger("recfleet.gateway.exposures")


class ExperimentBook:
    """The running experiments, re-read every `refresh_seconds` so that every replica
    follows a create or stop; assigns requests and logs their exposures."""

    def __init__(self, store: ExperimentStore, exposures: ExposureLog, refresh_seconds: float):
        self.store = store
        self.exposures = exposures
        self.refresh_seconds = refresh_seconds
        self._running: list[ExperimentSpec] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.refreshed_at = 0.0

    async def refresh(self) -> None:
        try:
            self._running = await self.store.running()
            self.refreshed_at = time.monotonic()
        except (psycopg.Error, OSError) as error:
            # Keep serving the experiments known so far rather than none.
            log.warning("running experiments not re-read", error=str(error))

    def assign(self, user_id: str, surface: str) -> Assignment | None:
        spec = choose(self._running, surface)
        return None if spec is None else assignment(spec, user_id)

    def expose(self, response: dict) -> None:
        """Log a recommendation response served under an experiment (`experiment` set)."""
        chosen = response.get("experiment")
        if chosen:
            items = [item["item_id"] for item in response["items"]]
            self.exposures.record(response["request_id"], chosen["name"], chosen["variant"], response["user_id"], items)

    async def _every(self, seconds: float, work: Callable[[], Awaitable[object]]) -> None:
        # Also ends at `_stopping`: a cancellation can be swallowed inside redis-py on
        # Python 3.11 (recfleet_runtime.periodic says how).
        while not self._stopping:
            await asyncio.sleep(seconds)
            if self._stopping:
                return
            try:
                await work()
            except Exception as error:
                log.warning("experiment background work failed", error=str(error))

    async def start(self) -> None:
        self._stopping = False
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._every(self.refresh_seconds, self.refresh)),
            asyncio.create_task(self._every(self.exposures.flush_seconds, self.exposures.flush)),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.exposures.flush()
