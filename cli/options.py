"""Shared CLI options, defined once, and the bridge from options to a typed Settings object."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.config import Settings

ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", "-m", help="Checkpoint folder (default: $CXR_MODEL or DATA_DIR/models/default)."),
]
CollectionOpt = Annotated[
    str | None,
    typer.Option("--collection", "-c", help="Collection name (default: $CXR_COLLECTION or 'cxr')."),
]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", min=1, help="Images per encoder batch.")]
MetricsPortOpt = Annotated[
    int | None,
    typer.Option("--metrics-port", min=1, max=65535, help="Serve Prometheus /metrics on CXR_METRICS_BIND:PORT."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ManifestOpt = Annotated[
    list[Path] | None,
    typer.Option("--manifest", help="CSV with path,label,patient_id,... (paths relative to it); repeatable."),
]


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with the CLI's explicit options (those not None) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
