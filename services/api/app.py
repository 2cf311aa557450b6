"""The REST API and the web viewer as one FastAPI app: `create_app(settings)` builds it, `cxr serve` runs it.

Nothing happens at import: the model and the store open in a background thread when the app starts (its
lifespan), /readyz says when they are ready, and the store is closed when the app stops.

Routes (all under a bearer token with a scope when CXR_API_TOKEN or CXR_API_TOKENS_FILE is set, see
services.api.access; except /livez, /readyz, the viewer's static files and the OpenAPI schema, which hold no
patient data):
  scope `search`: POST /v1/search, POST /v1/search/similar, GET /v1/points/{id}, GET /v1/points/{id}/thumbnail,
  POST /v1/render, GET /v1/points/{id}/pixels, POST /v1/pixels, GET /v1/collections, GET /v1/facets,
  GET|POST /v1/explain, POST /v1/report; scope `index`: POST /v1/index; GET /livez, GET /readyz,
  GET /viewer/ (the viewer), GET /openapi.json, /docs and /redoc (their scripts under /docs-assets, never a CDN).
Every /v1 request is recorded in the audit trail before its answer is sent (services.api.audit_trail); every
request first passes the Host and cross-site checks (services.api.same_origin), then the body limits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from services.api import (
    admin_routes,
    explain_routes,
    health,
    index_routes,
    metrics_routes,
    pixel_routes,
    point_routes,
    report_routes,
    search_routes,
)
from services.api.access import ADMIN, INDEX, SEARCH, install_access, require_scope
from services.api.audit_trail import AuditMiddleware
from services.api.heap import HeapTrimMiddleware
from services.api.metrics_routes import MetricsMiddleware
from services.api.same_origin import SameOriginGuard, parse_allowed_hosts
from services.api.security import BodyLimitMiddleware, install_error_handlers
from services.api.state import ApiState, Submitter
from services.config import Settings
from services.pipeline.runtime import RuntimeLike

STATIC_DIR = Path(__file__).parent / "static"
DOCS_ASSETS = "/docs-assets"  # Swagger UI and ReDoc scripts, served from the package
DESCRIPTION = """Chest X-ray retrieval by image similarity.

Send a bearer token (`Authorization: Bearer $CXR_API_TOKEN`, or a named token from `cxr token add`) when the server
sets one; a named token needs the route's scope (`search`, `index` or `admin`), and only `admin` sees the UIDs,
patient hash, content hash and source ref in payloads (on an open API: nobody, unless CXR_API_EXPOSE_IDENTIFIERS).
Uploads are DICOM, PNG or JPEG, told apart by their bytes; filters use
the CLI's syntax (`label=covid19`, `view=PA,AP`, `label!=normal`).
"""


def create_app(
    settings: Settings,
    *,
    runtime: RuntimeLike | None = None,
    submitter: Submitter | None = None,
    purge: Callable[[set[str]], int] | None = None,
) -> FastAPI:
    """The app over `runtime` (default: a services.pipeline.Runtime of `settings`); `submitter` hands files to
    the background queue (POST /v1/index answers 503 without one); `purge` takes a forgotten patient's waiting
    messages out of it (workers.purge)."""
    if runtime is None:
        from services.pipeline.runtime import Runtime

        runtime = Runtime(settings)
    state = ApiState(settings, runtime, submitter, purge)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.close()

    from services import __version__ as version

    # /docs and /redoc from the files in the fastapi-offline wheel, never a CDN: they work with no internet
    app = FastAPIOffline(
        title="cxr", version=version, description=DESCRIPTION, lifespan=lifespan, static_url=DOCS_ASSETS
    )
    app.state.api = state

    app.add_middleware(HeapTrimMiddleware, heap=state.heap)  # innermost: trims once the handler has returned
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.api_max_upload_mb * 2**20 + 64 * 1024,
        read_timeout_s=settings.api_body_timeout_s,
    )
    gate = install_access(app, settings)
    allowed_hosts = parse_allowed_hosts(settings.api_allowed_hosts)
    # added last, so it runs first: a request for a foreign Host or from another site reads no body
    app.add_middleware(SameOriginGuard, check_host=gate.open or bool(allowed_hosts), allowed_hosts=allowed_hosts)
    # added last, so it runs first: every /v1 answer, refusals included, is recorded before it is sent
    app.add_middleware(AuditMiddleware, audit=state.audit)
    app.add_middleware(MetricsMiddleware)  # outermost: every answer counted and timed, refusals included
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics_routes.router)
    for router, scope in (
        (search_routes.router, SEARCH),
        (point_routes.router, SEARCH),
        (pixel_routes.router, SEARCH),
        (explain_routes.router, SEARCH),
        (report_routes.router, SEARCH),
        (index_routes.router, INDEX),
        (admin_routes.router, ADMIN),
    ):
        app.include_router(router, dependencies=[Depends(require_scope(scope))])
    app.mount("/viewer", StaticFiles(directory=STATIC_DIR, html=True), name="viewer")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("viewer/")

    return app
