"""Canary traffic control in the gateway.

- Weights and shadow shares converge on every replica: a refresh loop merges the admin
  API's state (Redis, shared by all replicas), the chart's routing file and the defaults,
  and applies the result to the `TrackRouter` every `traffic_refresh_seconds`.
- The analysis loop compares each canary with its stable track over a sliding window of
  the gateway's own downstream calls; on a breach it sets the weight to 0 in the shared
  store (every replica follows within one refresh), freezes the service until an operator
  acknowledges, writes the reason to Postgres and the log, and counts it in a metric.
- Staged rollouts: a rollout moves a canary through a schedule of weights, holding each
  stage until its traffic passes the gates and the recommendation KPIs of the canary
  against stable (`recfleet_runtime.rollout`, fed with the lists this replica served and
  the clicks it received); a KPI breach rolls back exactly as a call-gate breach does. The
  rollout's state is shared by every replica (`RolloutStore`); any replica may judge a
  stage, and only one advances it.
- Shadow: `shadow(service)` says whether to mirror this call to the canary.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import structlog
from prometheus_client import Counter, Gauge
from psycopg_pool import AsyncConnectionPool
from recfleet_runtime.canary import Gates, OutcomeWindow, evaluate
from recfleet_runtime.grpcclient import add_call_observer, remove_call_observer
from recfleet_runtime.rollout import (
    ABORTED,
    ADVANCE,
    COMPLETE,
    ROLLBACK,
    ROLLED_BACK,
    KpiGates,
    ListWindow,
    Rollout,
    Schedule,
    Verdict,
    judge,
)
from recfleet_store.rollouts import RolloutStore
from recfleet_store.traffic import (
    TrafficFrozen,
    TrafficState,
    TrafficStore,
    effective,
    read_routing_file,
    record_event,
)

from ..downstream.fleet import Fleet
from ..downstream.tracks import CANARY, CANDIDATE_GEN, FEATURE_STORE, MIRRORED, RANKING, SERVICES, STABLE

log = structlog.get_logger("recfleet.gateway.traffic")

# Every worker holds the same weights; a scrape reports the latest any of them set.
CANARY_WEIGHT = Gauge(
    "recfleet_gateway_canary_weight", "Canary weight in force, by service.", ["service"], multiprocess_mode="mostrecent"
)
SHADOW_PERCENT = Gauge(
    "recfleet_gateway_shadow_percent", "Shadow share in force, by service.", ["service"], multiprocess_mode="mostrecent"
)
ROLLBACKS = Counter("recfleet_gateway_canary_rollbacks_total", "Automatic canary rollbacks, by service.", ["service"])
KPIS = Gauge(
    "recfleet_gateway_canary_kpi",
    "Recommendation KPIs of a rollout's tracks at its last judgement on this replica: ctr, empty_rate,"
    " coverage (distinct items over as many lists on each track).",
    ["service", "track", "kpi"],
    multiprocess_mode="mostrecent",
)
KPI_GATES = ("ctr", "empty_rate", "coverage")
# The services whose calls make the recommendation lists: their rollouts are judged on the
# lists' KPIs as well as on their calls.
LIST_SERVICES = (CANDIDATE_GEN, RANKING, FEATURE_STORE)
# Who the events of a rollout's own moves name.
ANALYSIS_ACTOR = "canary-analysis"
ROLLOUT_ACTOR = "canary-rollout"


class RolloutConflict(RuntimeError):
    """A rollout is already in progress (start), none is (abort), or another writer
    changed it meanwhile."""


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
        rollouts: RolloutStore | None = None,
        lists: ListWindow | None = None,
        kpi_gates: KpiGates | None = None,
        schedule: Schedule | None = None,
        clock: Callable[[], float] = time.time,
    ):
        """`rollouts`: the shared rollout state; `lists`: the recommendation lists this
        process served and their clicks (the serving side records them); `kpi_gates` and
        `schedule`: the KPI gates and the default stages and hold of a rollout; `clock`:
        wall-clock time of the stages (shared by every replica)."""
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
        self.rollouts = rollouts if rollouts is not None else RolloutStore(store.redis)
        self.lists = lists if lists is not None else ListWindow()
        self.kpi_gates = kpi_gates if kpi_gates is not None else KpiGates()
        self.schedule = schedule if schedule is not None else Schedule()
        self._clock = clock
        self._task: asyncio.Task | None = None
        self._stopping = False
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
        """Roll back every canary that breaches its gates, and judge every rollout in
        progress; returns the services rolled back."""
        rolled_back = []
        rollouts = await self.rollouts.all(list(SERVICES))
        for service in SERVICES:
            rollout = rollouts.get(service)
            rollout = rollout if rollout is not None and rollout.running else None
            state = self.states[service]
            if rollout is not None and state.frozen:
                # Rolled back elsewhere (another replica, an operator): the rollout is over.
                await self.rollouts.replace(rollout, rollout.ended(ROLLED_BACK, state.reason or "rolled back"))
                continue
            weight = self.fleet.router.weight(service)
            if weight <= 0:
                continue
            breach = evaluate(self.window, service, self.gates_for(service))
            if breach is not None:
                await self._roll_back(service, breach.reason, rollout)
                rolled_back.append(service)
            elif rollout is not None and weight == rollout.weight and await self._judge(rollout):
                rolled_back.append(service)
        return rolled_back

    async def _roll_back(self, service: str, reason: str, rollout: Rollout | None) -> None:
        """Weight 0 here and in the shared store, frozen until acknowledged, with the
        reason in the events and the log; a rollout in progress ends with it."""
        self.fleet.router.set_weight(service, 0)
        await self.store.rollback(service, reason, ANALYSIS_ACTOR)
        await record_event(self.pool, service, "auto-rollback", 0, None, reason, ANALYSIS_ACTOR)
        ROLLBACKS.labels(service).inc()
        self.window.reset(service, CANARY)
        if rollout is not None:
            await self.rollouts.replace(rollout, rollout.ended(ROLLED_BACK, reason))
        log.error("canary rolled back", service=service, reason=reason)

    async def _judge(self, rollout: Rollout) -> bool:
        """Judge the rollout's stage on this replica's traffic: roll back, advance or hold.
        True when it rolled the canary back."""
        service, now = rollout.service, self._clock()
        lists = self.lists if service in LIST_SERVICES else None
        verdict = judge(rollout, now, self.window, lists, self.gates_for(service), self.kpi_gates)
        _export(service, verdict)
        checked = rollout.checked(verdict, now)
        if verdict.action == ROLLBACK:
            await self._roll_back(service, verdict.reason, checked)
            return True
        if verdict.action != ADVANCE:
            await self.rollouts.replace(rollout, checked)
            return False
        advanced = checked.advanced(now, verdict.reason)
        if not await self.rollouts.replace(rollout, advanced):
            return False  # another replica advanced it, or an operator stopped it
        shadow = self.states[service].shadow_percent
        try:
            await self.store.set(service, advanced.weight, shadow, ROLLOUT_ACTOR)
        except TrafficFrozen as error:
            await self.rollouts.replace(advanced, advanced.ended(ROLLED_BACK, str(error)))
            return False
        self.fleet.router.set_weight(service, advanced.weight)
        moved = "rollout complete at" if advanced.status == COMPLETE else "rollout at"
        reason = f"{moved} {advanced.stage_label()}; {verdict.reason}"
        await record_event(self.pool, service, "set", advanced.weight, shadow, reason, ROLLOUT_ACTOR)
        log.info("canary rollout advanced", service=service, weight=advanced.weight, status=advanced.status)
        return False

    # -- rollouts (admin API) -------------------------------------------------------

    async def rollout_of(self, service: str) -> Rollout | None:
        return await self.rollouts.get(service)

    async def all_rollouts(self) -> dict[str, Rollout]:
        return await self.rollouts.all(list(SERVICES))

    async def start_rollout(self, service: str, schedule: Schedule | None, actor: str) -> Rollout:
        """Start a staged rollout of the service's canary at its first stage (the default
        schedule unless one is given). TrafficFrozen while the service is frozen;
        RolloutConflict while another rollout of it is in progress."""
        await self.refresh()
        state = self.states[service]
        if state.frozen:
            raise TrafficFrozen(f"{service} was rolled back ({state.reason}); acknowledge before a rollout")
        current = await self.rollouts.get(service)
        if current is not None and current.running:
            raise RolloutConflict(
                f"{service} is already rolling out ({current.stage_label()}); abort it before starting another"
            )
        rollout = Rollout.start(service, schedule if schedule is not None else self.schedule, self._clock(), actor)
        if not await self.rollouts.replace(current, rollout):
            raise RolloutConflict(f"another rollout of {service} started meanwhile")
        try:
            await self.store.set(service, rollout.weight, state.shadow_percent, actor)
        except TrafficFrozen as error:
            await self.rollouts.replace(rollout, rollout.ended(ROLLED_BACK, str(error)))
            raise
        reason = f"rollout started: {rollout.schedule.describe()}"
        await record_event(self.pool, service, "set", rollout.weight, state.shadow_percent, reason, actor)
        await self.refresh()
        return rollout

    async def abort_rollout(self, service: str, reason: str, actor: str) -> Rollout:
        """Stop the rollout in progress and take the canary's traffic away (weight 0, not
        frozen). RolloutConflict when none is in progress."""
        current = await self.rollouts.get(service)
        if current is None or not current.running:
            raise RolloutConflict(f"{service} has no rollout in progress")
        aborted = current.ended(ABORTED, reason)
        if not await self.rollouts.replace(current, aborted):
            raise RolloutConflict(f"the rollout of {service} changed meanwhile; look at it again")
        shadow = self.states[service].shadow_percent
        await self.store.set(service, 0, shadow, actor)
        await record_event(
            self.pool, service, "set", 0, shadow, f"rollout aborted at {current.stage_label()}: {reason}", actor
        )
        await self.refresh()
        return aborted

    async def end_rollout(self, service: str, reason: str) -> None:
        """The rollout in progress, if any, ends rolled back (a manual rollback)."""
        current = await self.rollouts.get(service)
        if current is not None and current.running:
            await self.rollouts.replace(current, current.ended(ROLLED_BACK, reason))

    # -- lifecycle ------------------------------------------------------------------

    async def _loop(self) -> None:
        since_analysis = 0.0
        # Not `while True`: on Python 3.11 a cancellation that lands as a Redis reply
        # arrives is lost inside asyncio.wait_for (the client's reads use it), so `stop`
        # also raises a flag the loop checks.
        while not self._stopping:
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
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _export(service: str, verdict: Verdict) -> None:
    for reading in verdict.readings:
        if reading.gate in KPI_GATES:
            KPIS.labels(service, CANARY, reading.gate).set(reading.canary)
            KPIS.labels(service, STABLE, reading.gate).set(reading.stable)
