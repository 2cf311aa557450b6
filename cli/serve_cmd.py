"""`cxr serve`: the REST API and the web viewer (services.api) under uvicorn."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.errors import stderr
from cli.options import CollectionOpt, MetricsPortOpt, ModelOpt, load_settings
from services.api.same_origin import is_loopback_host
from services.api.tokens import auth_configured


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: the only hosts an API without any token may listen on."""
    return is_loopback_host(host)


def make_submitter(settings: Any) -> Any:
    """POST /v1/index -> the ledger and the background queue (services.pipeline.submission), as the API's Submitter."""
    from dataclasses import asdict, replace

    from services.pipeline.sources import build_items
    from services.pipeline.submission import submit
    from workers.dispatch import make_publish

    publish = make_publish(settings)

    def submitter(paths: Any, *, label: str | None, origin: str, collection: str) -> dict[str, Any]:
        items, unfound = build_items(list(paths), label_from="none")
        if label is not None:
            items = [replace(item, label=label) for item in items]
        done = submit(settings, items, publish=publish, collection=collection, origin=origin)
        return {
            "recorded": done.recorded,
            "already": done.already,
            "sent": done.sent,
            "unfound": [asdict(u) for u in unfound],
        }

    return submitter


def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on. Without any API token: loopback only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="Port to listen on.")] = 8000,
    queue: Annotated[
        bool | None,
        typer.Option(
            "--queue/--no-queue",
            help="Let POST /v1/index hand files to the background queue (default: on when CXR_REDIS_URL is set).",
        ),
    ] = None,
    collection: CollectionOpt = None,
    model: ModelOpt = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Serve the REST API and the viewer (open http://HOST:PORT/viewer/).

    Example: CXR_API_TOKEN=$(openssl rand -hex 24) cxr serve --host 0.0.0.0 --port 8000
    """
    settings = load_settings(collection=collection, model=model)
    if not auth_configured(settings):  # with CXR_API_TOKENS_FILE set every /v1 call needs a token, even if none exists
        if not is_loopback(host):
            stderr.print(
                f"error: refusing to listen on {host} without a token: anyone who reaches it could read the images",
                markup=False,
            )
            stderr.print(
                "hint: set CXR_API_TOKEN or CXR_API_TOKENS_FILE (`cxr token add`), or keep --host 127.0.0.1",
                markup=False,
            )
            raise typer.Exit(2)
        stderr.print(
            f"no CXR_API_TOKEN or CXR_API_TOKENS_FILE: the API is open, so it listens on {host} (this machine) only",
            markup=False,
        )
    use_queue = queue if queue is not None else "redis_url" in settings.model_fields_set
    submitter = make_submitter(settings) if use_queue else None
    if submitter is None:
        stderr.print("POST /v1/index is off (no queue): set CXR_REDIS_URL or pass --queue to turn it on", markup=False)

    import uvicorn

    from services.api.app import create_app
    from services.api.server import server_config
    from workers.purge import purger

    app = create_app(settings, submitter=submitter, purge=purger(settings))
    if metrics_port:  # besides /metrics on the API: a token-free listener on CXR_METRICS_BIND, like the workers'
        from workers.metrics import serve_metrics

        serve_metrics(settings, metrics_port)
    stderr.print(f"viewer: http://{host}:{port}/viewer/  API docs: http://{host}:{port}/docs", markup=False)
    uvicorn.Server(server_config(app, settings, host=host, port=port, log_level=log_level)).run()
