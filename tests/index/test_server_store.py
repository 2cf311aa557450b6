"""The server adapter's settings checks and error mapping, and the store factory."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from services.config import Settings
from services.errors import ConfigError, StoreError
from services.index import QdrantEdgeStore, QdrantServerStore, open_store


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"url": "http://127.0.0.1:6333", "location": ":memory:"},
        {"api_key": "secret", "location": ":memory:"},
    ],
)
def test_conflicting_or_missing_settings(kwargs: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        QdrantServerStore(**kwargs)


def test_unreachable_server_names_the_url() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    store = QdrantServerStore(url)
    with pytest.raises(StoreError, match=f"cannot reach Qdrant at {url}"):
        store.has_collection("cxr")
    with pytest.raises(StoreError, match=url):
        store.collections()
    store.close()


def test_open_store_picks_the_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CXR_QDRANT_URL", "CXR_QDRANT_PATH", "CXR_QDRANT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    embedded = open_store(Settings(data_dir=tmp_path))
    assert isinstance(embedded, QdrantEdgeStore) and embedded.root == tmp_path / "qdrant"
    server = open_store(Settings(data_dir=tmp_path, qdrant_url="https://qdrant.invalid:6333", qdrant_api_key="k"))
    assert isinstance(server, QdrantServerStore) and server.where == "https://qdrant.invalid:6333"
    server.close()
    with pytest.raises(ConfigError, match="without CXR_QDRANT_URL"):
        open_store(Settings(data_dir=tmp_path, qdrant_api_key="k"))
