"""`GET /livez` (the process answers; no dependencies) and `GET /readyz` (503 until the model and the store are
ready, with the reason while they are not)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from services.api.state import ApiState, get_state

router = APIRouter(tags=["health"])


@router.get("/livez", summary="Liveness: the process answers")
def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the model is loaded and the store answers",
    responses={503: {"description": "Not ready yet, or a part failed (see `errors`)"}},
)
def readyz(state: Annotated[ApiState, Depends(get_state)]) -> JSONResponse:
    r = state.readiness
    body: dict[str, Any] = {
        "status": "ready" if r.ready else "starting",
        "model": r.model,
        "store": r.store,
        "collection": state.settings.collection,
    }
    if r.errors:
        body["status"] = "not ready"
        body["errors"] = {part: {"message": m, "hint": h} for part, (m, h) in r.errors.items()}
    return JSONResponse(body, status_code=200 if r.ready else 503, headers=None if r.ready else {"Retry-After": "5"})
