"""Vectors -> store: the VectorStore protocol, its embedded (qdrant-edge) and server (qdrant-client) adapters,
and the one place that maps an image record to a payload.

QdrantServerStore is imported on first use (PEP 562): qdrant-client takes over a second to import, and the
embedded store and the light commands (`cxr collections`, `cxr status`) never need it.
"""

from typing import Any

from services.index.edge import QdrantEdgeStore
from services.index.factory import index_tuning, open_store
from services.index.payload import PAYLOAD_FIELDS, build_payload, patient_hash, point_id
from services.index.store import (
    INDEXED_FIELDS,
    CollectionInfo,
    Hit,
    PointRecord,
    SearchFilter,
    VectorStore,
)
from services.index.tuning import IndexTuning

__all__ = [
    "INDEXED_FIELDS",
    "PAYLOAD_FIELDS",
    "CollectionInfo",
    "Hit",
    "IndexTuning",
    "PointRecord",
    "QdrantEdgeStore",
    "QdrantServerStore",
    "SearchFilter",
    "VectorStore",
    "build_payload",
    "index_tuning",
    "open_store",
    "patient_hash",
    "point_id",
]


def __getattr__(name: str) -> Any:
    if name == "QdrantServerStore":
        from services.index.server import QdrantServerStore

        return QdrantServerStore
    raise AttributeError(f"module 'services.index' has no attribute {name!r}")
