"""Ingest (find, decode, encode, upsert as overlapped stages) and query (image -> ranked hits).

Names are imported on first use (PEP 562), so `services.pipeline.ledger` and the light CLI commands that use it
(`cxr status`, `cxr failures`) never load torch through this package.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FileError": "services.pipeline.stages",
    "IngestOptions": "services.pipeline.ingest",
    "IngestReport": "services.pipeline.ingest",
    "Ingestor": "services.pipeline.ingest",
    "QueryOptions": "services.pipeline.query",
    "QueryResult": "services.pipeline.query",
    "hits_to_json": "services.pipeline.query",
    "search_bytes": "services.pipeline.query",
    "search_file": "services.pipeline.query",
    "Runtime": "services.pipeline.runtime",
    "IngestItem": "services.pipeline.sources",
    "Unfound": "services.pipeline.sources",
    "build_items": "services.pipeline.sources",
    "walk_files": "services.pipeline.sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'services.pipeline' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
