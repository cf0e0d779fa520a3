"""Canary traffic control in the gateway.

- Weights and shadow shares converge on every replica: a refresh loop merges the admin
  API's state (Redis, shared by all replicas), the chart's routing file and the defaults,
  and applies the result to the `TrackRouter` every `traffic_refresh_seconds`.
- The analysis loop compares each canary with its stable track over a sliding window of
  the gateway's own downstream calls; on a breach it sets the weight to 0 in the shared
  store (every replica follows within one refresh), freezes the service until an operator
  acknowledges, writes the reason to Postgres and the log, and counts it in a metric.
- Shadow: `shadow(service)` says whether to mirror this call to the canary.
"""

from __future__ import annotations

import asyncio
import random

import structlog
from prometheus_client import Counter, Gauge
from psycopg_pool import AsyncConnectionPool
from recfleet_runtime.canary import Gates, OutcomeWindow, evaluate
from recfleet_runtime.grpcclient import add_call_observer, remove_call_observer
from recfleet_store.traffic import TrafficState, TrafficStore, effective, read_routing_file, record_event

from ..downstream.fleet import Fleet
from ..downstream.tracks import CANDIDATE_GEN, MIRRORED, SERVICES

log = structlog.get_logger("recfleet.gateway.traffic")

# Every worker holds the same weights; a scrape reports the latest any of them set.
CANARY_WEIGHT = Gauge(
    "recfleet_gateway_canary_weight", "Canary weight in force, by service.", ["service"], multiprocess_mode="mostrecent"
)
SHADOW_PERCENT = Gauge(
    "recfleet_gateway_shadow_percent", "Shadow share in force, by service.", ["service"], multiprocess_mode="mostrecent"
)
ROLLBACKS = Counter("recfleet_gateway_canary_rollbacks_total", "Automatic canary rollbacks, by service.", ["service"])


def service_of(downstream_name: str) -> str:
    return CANDIDATE_GEN if downstream_name.startswith(CANDIDATE_GEN) else downstream_name


class TrafficController:
    """The canary weights and shadow shares in force on this replica, and the analysis that
    rolls a canary back when it breaches its gates."""

    def __init__(
        self,
        fleet: Fleet,
        store: TrafficStore,
        pool: AsyncConnectionPool,
        routing_file: str,
        defaults: dict[str, int],
        gates: dict[str, Gates],
        default_gates: Gates,
        refresh_seconds: float = 1.0,
        analysis_seconds: float = 5.0,
    ):
        self.fleet = fleet
        self.store = store
        self.pool = pool
        self.routing_file = routing_file
        self.defaults = defaults
        self.gates = gates
        self.default_gates = default_gates
        self.refresh_seconds = refresh_seconds
        self.analysis_seconds = analysis_seconds
        self.window = OutcomeWindow(max(g.window_seconds for g in [default_gates, *gates.values()]))
        self.states: dict[str, TrafficState] = {s: TrafficState(s) for s in SERVICES}
        self._task: asyncio.Task | None = None
        self._rng = random.Random()

    # -- state ----------------------------------------------------------------------

    def gates_for(self, service: str) -> Gates:
        return self.gates.get(service, self.default_gates)

    async def refresh(self) -> None:
        admin = await self.store.overrides()
        routing = read_routing_file(self.routing_file)
        self.states = effective(list(SERVICES), admin, routing, self.defaults)
        router = self.fleet.router
        for service, state in self.states.items():
            weight = state.weight if router.has_canary(service) else 0
            if router.weight(service) != weight:
                router.set_weight(service, weight)
                log.info("canary weight applied", service=service, weight=weight, source=state.source)
            CANARY_WEIGHT.labels(service).set(weight)
            mirrored = router.has_canary(service) and service in MIRRORED
            SHADOW_PERCENT.labels(service).set(state.shadow_percent if mirrored else 0)

    def shadow(self, service: str) -> bool:
        """Mirror this call to the canary? Only for reads, when the service has a canary and
        a share is set."""
        state = self.states.get(service)
        if state is None or not state.shadow_percent or service not in MIRRORED:
            return False
        if not self.fleet.router.has_canary(service):
            return False
        return self._rng.random() * 100 < state.shadow_percent

    # -- analysis -------------------------------------------------------------------

    def observe(self, downstream_name: str, track: str, ok: bool, seconds: float) -> None:
        self.window.record(service_of(downstream_name), track, ok, seconds)

    async def analyse(self) -> list[str]:
        """Roll back every canary that breaches its gates; returns the services rolled back."""
        rolled_back = []
        for service in SERVICES:
            if self.fleet.router.weight(service) <= 0:
                continue
            breach = evaluate(self.window, service, self.gates_for(service))
            if breach is None:
                continue
            self.fleet.router.set_weight(service, 0)
            await self.store.rollback(service, breach.reason, "canary-analysis")
            await record_event(self.pool, service, "auto-rollback", 0, None, breach.reason, "canary-analysis")
            ROLLBACKS.labels(service).inc()
            self.window.reset(service, "canary")
            log.error("canary rolled back", service=service, reason=breach.reason)
            rolled_back.append(service)
        return rolled_back

    # -- lifecycle ------------------------------------------------------------------

    async def _loop(self) -> None:
        since_analysis = 0.0
        while True:
            try:
                await self.refresh()
                since_analysis += self.refresh_seconds
                if since_analysis >= self.analysis_seconds:
                    since_analysis = 0.0
                    await self.analyse()
            except Exception:
                log.exception("traffic loop step failed; keeping the last weights")
            await asyncio.sleep(self.refresh_seconds)

    async def start(self) -> None:
        add_call_observer(self.observe)
        try:
            await self.refresh()
        except Exception:
            log.exception("first traffic refresh failed; starting with defaults")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        remove_call_observer(self.observe)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
