"""Choose the store from Settings: the Qdrant server when a URL is set, else the embedded store."""

from __future__ import annotations

from services.config import Settings
from services.errors import ConfigError
from services.index.edge import QdrantEdgeStore
from services.index.store import VectorStore
from services.index.tuning import IndexTuning


def index_tuning(settings: Settings) -> IndexTuning:
    """The index build and search parameters from Settings (CXR_INDEX_*, CXR_HNSW_*, CXR_SEARCH_*)."""
    return IndexTuning(
        threshold_points=settings.index_threshold_points,
        segment_points=settings.index_segment_points,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construct=settings.hnsw_ef_construct,
        index_threads=settings.index_threads,
        search_hnsw_ef=settings.search_hnsw_ef,
        acorn_max_selectivity=settings.search_acorn_selectivity,
        exact_filter_max_points=settings.search_exact_filter_max_points or None,
        label_parts=settings.index_label_parts,
        label_parts_from=settings.index_label_parts_from,
    )


def open_store(settings: Settings) -> VectorStore:
    """The server store if `settings.qdrant_url` is set, else the embedded store at `settings.store_path`."""
    if settings.qdrant_url:
        from services.index.server import QdrantServerStore  # qdrant-client is slow to import: only when used

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantServerStore(settings.qdrant_url, api_key=key, tuning=index_tuning(settings))
    if settings.qdrant_api_key:
        raise ConfigError("CXR_QDRANT_API_KEY is set without CXR_QDRANT_URL", "Set the URL or unset the key.")
    return QdrantEdgeStore(
        settings.store_path,
        wait_s=settings.store_wait_s,
        linger_s=settings.store_linger_s,
        tuning=index_tuning(settings),
    )
