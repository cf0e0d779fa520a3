"""`/admin/v1/audit`: the audit log of admin actions, newest first (scope `admin`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from ...deps import COMMON_ERRORS, Services, authorize
from ...rest.responses import JSONBody
from ...rest.schemas import ID_PATTERN, Timestamp
from ..schemas import AuditAction, AuditPage

router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(authorize("admin"))])
MAX_PAGE = 500


@router.get("/audit", response_model=AuditPage, responses=COMMON_ERRORS, summary="Admin actions, newest first")
async def list_audit(
    *,
    services: Services,
    action: Annotated[AuditAction | None, Query(description="Only this action.")] = None,
    key_id: Annotated[str | None, Query(pattern=ID_PATTERN, description="Only actions of this key.")] = None,
    since: Annotated[Timestamp | None, Query(description="Only actions at or after this RFC 3339 time.")] = None,
    before: Annotated[
        int | None, Query(ge=1, description="Only entries older than this audit id (`next_before` of a page).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Entries per page.")] = 100,
):
    # One more than asked says whether an older page exists.
    rows = await services.audit.table.list(limit=limit + 1, action=action, key_id=key_id, since=since, before=before)
    entries = rows[:limit]
    next_before = entries[-1]["audit_id"] if len(rows) > limit else None
    return JSONBody({"entries": entries, "next_before": next_before})
