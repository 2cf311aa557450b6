"""Choose the store from Settings: the Qdrant server when a URL is set, else the embedded store."""

from __future__ import annotations

from services.config import Settings
from services.errors import ConfigError
from services.index.edge import QdrantEdgeStore
from services.index.store import VectorStore


def open_store(settings: Settings) -> VectorStore:
    """The server store if `settings.qdrant_url` is set, else the embedded store at `settings.store_path`."""
    if settings.qdrant_url:
        from services.index.server import QdrantServerStore  # qdrant-client is slow to import: only when used

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantServerStore(settings.qdrant_url, api_key=key)
    if settings.qdrant_api_key:
        raise ConfigError("CXR_QDRANT_API_KEY is set without CXR_QDRANT_URL", "Set the URL or unset the key.")
    return QdrantEdgeStore(settings.store_path, wait_s=settings.store_wait_s, linger_s=settings.store_linger_s)
