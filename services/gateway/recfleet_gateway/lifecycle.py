"""How a gateway worker leaves a rollout without dropping requests.

On SIGTERM a worker does not stop at once: it answers `/healthz/ready` with 503 and
closes each keep-alive connection after its next response, so balancers and clients
move to other pods, while it keeps serving for `drain_seconds`. Only then does uvicorn's
own shutdown start (no new connections, in-flight requests get `grace_seconds`). A
second signal during the drain ends it at once.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from recfleet_runtime.logging import get_logger

log = get_logger("recfleet.gateway.lifecycle")
SIGNALS = (signal.SIGTERM, signal.SIGINT)

Handler = Callable[[int, FrameType | None], object]


class Drain:
    """The worker's drain state; `install` wraps the server's signal handlers."""

    def __init__(self, drain_seconds: float):
        self.drain_seconds = drain_seconds
        self.started_at: float | None = None
        self._timer: threading.Timer | None = None

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def install(self) -> None:
        """Called once uvicorn runs (its handlers are in place): ours go in front of
        them. Elsewhere (an app served in a test) the process's handlers stay as they are."""
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if isinstance(getattr(previous, "__self__", None), uvicorn.Server):
                signal.signal(sig, self._handler(previous))  # type: ignore[arg-type]

    def _handler(self, stop_server: Handler) -> Handler:
        def on_signal(sig: int, frame: FrameType | None) -> None:
            if self.draining or self.drain_seconds <= 0:
                # A second signal (or no drain configured): the server stops now.
                if self._timer is not None:
                    self._timer.cancel()
                stop_server(sig, frame)
                return
            self.started_at = time.monotonic()
            log.info("draining", drain_seconds=self.drain_seconds, signal=signal.Signals(sig).name)
            self._timer = threading.Timer(self.drain_seconds, stop_server, args=(sig, None))
            self._timer.daemon = True
            self._timer.start()

        return on_signal

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
