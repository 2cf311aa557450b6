"""Vectors -> store: the VectorStore protocol, its embedded (qdrant-edge) and server (qdrant-client) adapters,
and the one place that maps an image record to a payload.

Names are imported on first use (PEP 562): `services.index.payload` (what tombstones and `cxr index`'s module
need) comes without numpy or qdrant-edge, so `cxr status`, `cxr failures` and `--help` never load a store engine;
qdrant-client takes over a second to import, and only the server store needs it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "INDEXED_FIELDS": "services.index.store",
    "PAYLOAD_FIELDS": "services.index.payload",
    "CollectionInfo": "services.index.store",
    "Hit": "services.index.store",
    "IndexTuning": "services.index.tuning",
    "PointRecord": "services.index.store",
    "QdrantEdgeStore": "services.index.edge",
    "QdrantServerStore": "services.index.server",
    "SearchFilter": "services.index.store",
    "VectorStore": "services.index.store",
    "build_payload": "services.index.payload",
    "index_tuning": "services.index.factory",
    "open_store": "services.index.factory",
    "patient_hash": "services.index.payload",
    "point_id": "services.index.payload",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'services.index' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
