"""Background work repeated at a fixed interval, for as long as a component runs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Periodic:
    """Awaits `work` once on `start`, then again every `seconds` in a background task until
    `stop`. `work` handles its own errors: a failure must not end the loop."""

    def __init__(self, seconds: float, work: Callable[[], Awaitable[object]]):
        self.seconds = seconds
        self._work = work
        self._task: asyncio.Task[None] | None = None
        # Cancelling is not always enough: on Python 3.11 `asyncio.wait_for` (inside
        # redis-py) can swallow a cancellation that arrives with the reply, and the loop
        # would go on. The loop also ends at this flag.
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        await self._work()
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.seconds)
            if not self._stopping:
                await self._work()
