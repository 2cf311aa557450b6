"""Store fixtures: every adapter behind one `store_case` fixture, and clustered vectors with a known answer."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from services.index import Hit, IndexTuning, QdrantEdgeStore, QdrantServerStore, VectorStore

SERVER_ENV = "CXR_TEST_QDRANT_URL"


@dataclass
class StoreCase:
    """One adapter under test. `persistent`: data survives `reopen()`. `prefix` keeps collection names unique
    (a real server is shared), and `name()` builds them."""

    kind: str
    store: VectorStore
    persistent: bool
    opener: Callable[[], VectorStore]
    prefix: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:10])

    def name(self, suffix: str = "c") -> str:
        return f"{self.prefix}_{suffix}"

    def reopen(self) -> VectorStore:
        self.store.close()
        self.store = self.opener()
        return self.store


def _server_url_or_skip() -> str:
    url = os.environ.get(SERVER_ENV)
    if not url:
        pytest.skip(f"no Qdrant server: set {SERVER_ENV}=http://host:6333 to run the contract against one")
    from qdrant_client import QdrantClient

    try:
        QdrantClient(url=url, timeout=3, check_compatibility=False).get_collections()
    except Exception as exc:
        pytest.skip(f"{SERVER_ENV}={url} is not reachable: {exc}")
    return url


@pytest.fixture(scope="session")
def qdrant_container() -> Iterator[tuple[str, str]]:
    """(url, api_key) of a Qdrant server container from docker-compose.yml's pinned image, started once per
    session with testcontainers; skips with the reason where no Docker engine exists."""
    from tests.deploy.containers import qdrant_server

    with qdrant_server() as server:
        yield server.url, server.api_key


@pytest.fixture(params=["edge", "edge-parts", "memory", "server", "container"])
def store_case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreCase]:
    """Each adapter in turn; the real-server variant only when CXR_TEST_QDRANT_URL points at a live server, the
    container variant only where a Docker engine runs the compose file's Qdrant image."""
    opener: Callable[[], VectorStore]
    if request.param == "edge":
        # A tiny indexing threshold makes optimize() really build HNSW on a few thousand test vectors.
        opener = partial(QdrantEdgeStore, tmp_path / "qdrant", indexing_threshold_kb=10)
    elif request.param == "edge-parts":  # the default layout of new embedded collections: one graph per label
        parts = IndexTuning(label_parts=3, label_parts_from=0)  # parts from the first point, to test them
        opener = partial(QdrantEdgeStore, tmp_path / "qdrant", indexing_threshold_kb=10, tuning=parts)
    elif request.param == "memory":
        opener = partial(QdrantServerStore, location=":memory:")
    elif request.param == "server":
        opener = partial(QdrantServerStore, _server_url_or_skip())
    else:
        url, api_key = request.getfixturevalue("qdrant_container")
        opener = partial(QdrantServerStore, url, api_key=api_key)
    case = StoreCase(request.param, opener(), request.param != "memory", opener)
    yield case
    if case.kind in ("server", "container"):
        for info in case.store.collections():
            if info.name.startswith(case.prefix):
                case.store.delete_collection(info.name)
    case.store.close()


@dataclass(frozen=True)
class Clustered:
    """`n` unit vectors around `centres`; `cluster[i]` is point i's cluster, `ids[i]` its UUID."""

    vectors: np.ndarray
    cluster: np.ndarray
    centres: np.ndarray
    ids: list[str]


def clustered(n: int = 400, dim: int = 32, clusters: int = 8, noise: float = 0.25, seed: int = 0) -> Clustered:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster = rng.integers(0, clusters, size=n)
    vectors = centres[cluster] + noise * rng.normal(size=(n, dim)) / np.sqrt(dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [str(uuid.UUID(int=seed * 10**9 + i + 1)) for i in range(n)]
    return Clustered(vectors.astype(np.float32), cluster, centres.astype(np.float32), ids)


def held_out(data: Clustered, n: int, *, noise: float, seed: int, clusters: Sequence[int] | None = None) -> np.ndarray:
    """`n` unit vectors drawn around `data.centres` (those of `clusters` only, if given) as `clustered` draws its
    points, but from another seed: queries that are not in the index, so a search cannot just find itself."""
    rng = np.random.default_rng(seed)
    dim = data.centres.shape[1]
    pick = rng.choice(np.arange(len(data.centres)) if clusters is None else np.asarray(clusters), size=n)
    vectors = data.centres[pick] + noise * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def assert_like_exact(
    hits: Sequence[Sequence[Hit]], vectors: np.ndarray, ids: Sequence[str], queries: np.ndarray, k: int
) -> float:
    """Compare ranked `hits` with the exact top `k` of `queries` over `vectors` (point `ids[i]`): every score is the
    exact cosine of its point, in descending order, and no query is answered by a point that is not among
    `vectors`. Returns the recall@k against the exact top k."""
    truth, _ = exact_top_k(vectors, queries, k)
    row_of = {pid: i for i, pid in enumerate(ids)}
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    recalls = []
    for qi, (row, want) in enumerate(zip(hits, truth, strict=True)):
        assert len(row) == k and all(h.id in row_of for h in row)
        scores = np.array([h.score for h in row])
        exact = np.array([float(q[qi] @ v[row_of[h.id]]) for h in row])
        np.testing.assert_allclose(scores, exact, atol=1e-4)
        assert np.all(np.diff(scores) <= 1e-6)
        recalls.append(len({h.id for h in row} & {ids[i] for i in want}) / k)
    return float(np.mean(recalls))


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The naive twin: cosine scores of every point, top k indices and their scores."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ v.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)
