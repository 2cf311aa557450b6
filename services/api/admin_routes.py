"""Admin-scope routes: read the audit trail, and forget a patient, a study or an instance (as `cxr audit` and
`cxr forget` do). Their own calls are audited like every /v1 request."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from services.api.audit_trail import note
from services.api.state import ApiState, get_state

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class ForgetIn(BaseModel):
    patient_id: str | None = Field(None, max_length=64, description="The patient's id, as the PACS has it.")
    study_uid: str | None = Field(None, max_length=64, description="A Study Instance UID.")
    sop_uid: str | None = Field(None, max_length=64, description="A SOP Instance UID.")
    dry_run: bool = Field(False, description="Count what would go; remove nothing.")


@router.get("/audit", summary="Audit records, oldest first (admin)")
def audit(
    state: Annotated[ApiState, Depends(get_state)],
    since: Annotated[str | None, Query(description="An ISO time, or an age: 30m, 12h, 7d.")] = None,
    actor: Annotated[str | None, Query(max_length=80)] = None,
    action: Annotated[str | None, Query(max_length=80)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> dict[str, Any]:
    from services.governance.audit import since_from

    try:
        start = since_from(since) if since else None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    rows = state.audit.records(since=start, actor=actor, action=action, limit=limit)
    return {"records": [r.to_dict() for r in rows], "verified": state.audit.verify().ok}


@router.post("/forget", summary="Forget a patient, a study or an instance everywhere (admin)")
async def forget(request: Request, body: ForgetIn, state: Annotated[ApiState, Depends(get_state)]) -> dict[str, Any]:
    from services.governance.forget import forget as run_forget
    from services.governance.tombstones import Target, target_hashes

    try:
        target = Target.given(body.patient_id, body.study_uid, body.sop_uid)
    except ValueError:
        raise HTTPException(422, "give exactly one of patient_id, study_uid, sop_uid") from None
    settings = state.settings
    note(request, kind=target.kind, target_hash=target_hashes(target, settings.salt)[0][1], dry_run=body.dry_run)

    def work() -> dict[str, Any]:
        report = run_forget(
            settings, target, store=state.store(), ledger=state.runtime.ledger, dry_run=body.dry_run, purge=state.purge
        )
        state.thumbnails.clear()
        return report.to_dict()

    return await run_in_threadpool(work)
