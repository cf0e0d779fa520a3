"""The audit trail of admin actions: who did what to which target under which request,
with the state before and after.

Auditing is best effort but never silent: an action that succeeded keeps its answer when
its entry cannot be written, and the failure is logged and counted in
`recfleet_gateway_audit_write_failures_total`. An action that failed is not recorded.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from recfleet_runtime.context import request_id_var
from recfleet_runtime.logging import get_logger

from ..adapters.audit import AuditRecord, AuditTable
from ..rest.auth import Principal

log = get_logger("recfleet.gateway.audit")
WRITE_FAILURES = Counter(
    "recfleet_gateway_audit_write_failures_total", "Admin actions whose audit entry could not be written."
)
# An audit entry waits this long for a Postgres connection, then counts as failed.
WAIT_SECONDS = 2.0

ACTIONS = (
    "traffic.set",
    "traffic.rollback",
    "traffic.ack",
    "traffic.rollout",
    "traffic.rollout_abort",
    "model.promote",
    "model.rollback",
    "job.start",
    "api_key.create",
    "api_key.revoke",
    "api_key.rotate",
    "bootstrap_key.disable",
    "bootstrap_key.enable",
    "experiment.create",
    "experiment.stop",
    "cache.flush",
    "user.erase",
)


class AuditTrail:
    """Records admin actions in the `audit_log` table and reads them back."""

    def __init__(self, table: AuditTable):
        self.table = table

    async def record(
        self,
        principal: Principal,
        action: str,
        target: str,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        """Record an action that succeeded; never raises."""
        assert action in ACTIONS, action
        entry = AuditRecord(principal.key_id, principal.name, request_id_var.get(), action, target, before, after)
        try:
            await self.table.insert(entry, WAIT_SECONDS)
        except Exception:
            WRITE_FAILURES.inc()
            log.exception("audit entry not written", action=action, target=target, key_id=principal.key_id)
