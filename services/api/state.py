"""What one API process holds: the runtime (model and store, opened in the background at start), the submitter
of the background queue, the thumbnail cache and the explainer. Kept on `app.state.api`; nothing is created at
import."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from fastapi import HTTPException, Request

from services.config import Settings
from services.embedding import BatchEncoder
from services.errors import CxrError, PointNotFoundError
from services.governance.audit import audit_log
from services.imaging.budget import RASTER_GREY_BPP, DecodeBudget
from services.index import PointRecord, VectorStore
from services.pipeline.runtime import RuntimeLike
from services.pipeline.stored_image import load_stored_pixels

if TYPE_CHECKING:  # imported on the first explanation (ApiState.explainer)
    from services.embedding.explain import Explainer

log = logging.getLogger("cxr.api")
STORE_RETRY_S = 5.0


class Submitter(Protocol):
    """Hands files to the background queue (services.pipeline.submission.submit, wired by `cxr serve`) and says
    what it did as JSON-able data. `origin` is "upload" or "file"."""

    def __call__(self, paths: Sequence[Path], *, label: str | None, origin: str, collection: str) -> dict[str, Any]: ...


@dataclass
class Readiness:
    """Where the background start stands; `errors` says why a part is not ready (message, hint)."""

    model: bool = False
    store: bool = False
    errors: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    seconds: float | None = None

    @property
    def ready(self) -> bool:
        return self.model and self.store


@dataclass
class ApiState:
    """The settings, the runtime and its readiness, the submitter (None: no queue), the thumbnail cache, the
    explainer, the decode memory budget that every upload decode holds its share of, the heap trimmer that gives
    their memory back, and the audit trail."""

    settings: Settings
    runtime: RuntimeLike
    submitter: Submitter | None = None
    purge: Callable[[set[str]], int] | None = None  # a forgotten patient's queued messages out (workers.purge)
    readiness: Readiness = field(default_factory=Readiness)

    def __post_init__(self) -> None:
        from services.api.heap import HeapTrimmer
        from services.api.images import ThumbnailCache

        s = self.settings
        self.thumbnails = ThumbnailCache(s.api_thumbnail_cache_mb * 2**20)
        self.audit = audit_log(s)
        self.heap = HeapTrimmer(s.api_trim_after_mb * 2**20)  # trims after requests (HeapTrimMiddleware)
        self.decode_budget = DecodeBudget(
            s.api_decode_memory_mb * 2**20, s.api_decode_wait_s, on_release=self.heap.note
        )
        self._explainer: Explainer | None = None
        self._explainer_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Load the model and open the store in a thread, so /livez answers at once and /readyz tells."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._warm_up, name="cxr-api-warmup", daemon=True)
            self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> Readiness:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.readiness

    def _warm_up(self) -> None:
        t0 = time.perf_counter()
        self._attempt("model", self._load_model)
        while not self._stopping.is_set():  # the store may be down, or held elsewhere for a while: keep trying
            if self._attempt("store", self.runtime.store.collections):
                break
            self._stopping.wait(STORE_RETRY_S)
        self.readiness.seconds = round(time.perf_counter() - t0, 3)

    def _load_model(self) -> BatchEncoder:
        """The encoder, loaded once; a Runtime first fills a cold OpenVINO cache in a child process, so that this
        long-lived process holds no torch for the conversion (services.embedding.warm_cache)."""
        warm = getattr(self.runtime, "warm_model_cache", None)
        if warm is not None:
            warm()
        return self.runtime.encoder

    def _attempt(self, part: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
        except CxrError as exc:
            self._failed(part, exc.message, exc.hint or None)
            return False
        except Exception as exc:  # noqa: BLE001 - reported on /readyz rather than killing the server
            log.exception("%s not ready", part)
            self._failed(part, f"{type(exc).__name__}: {exc}", None)
            return False
        setattr(self.readiness, part, True)
        self.readiness.errors.pop(part, None)
        return True

    def _failed(self, part: str, message: str, hint: str | None) -> None:
        if self.readiness.errors.get(part, ("",))[0] != message:
            log.error("%s not ready: %s (%s)", part, message, hint)
        self.readiness.errors[part] = (message, hint)

    def encoder(self) -> BatchEncoder:
        """The model, or 503 while it loads (or when it could not be loaded)."""
        if not self.readiness.model:
            raise _not_ready(self.readiness, "model")
        return self.runtime.encoder

    def store(self) -> VectorStore:
        """The vector store, or 503 until it has answered once."""
        if not self.readiness.store:
            raise _not_ready(self.readiness, "store")
        return self.runtime.store

    def explainer(self) -> Explainer:
        """The Explainer of the model (built on first use, again if the model changed); 503 while the model loads.
        The first explanation loads torch and the eager model: a search served by OpenVINO needs neither."""
        encoder = self.encoder()
        with self._explainer_lock:
            if self._explainer is None or self._explainer.base is not encoder.encoder:
                from services.embedding.explain import Explainer

                self._explainer = Explainer(encoder)
            return self._explainer

    def point(self, point_id: object) -> PointRecord:
        """The stored point of this id in the default collection; PointNotFoundError (404) when there is none."""
        records = self.store().retrieve(self.settings.collection, [str(point_id)])
        if not records:
            raise PointNotFoundError(f"no point {point_id} in collection {self.settings.collection!r}")
        return records[0]

    def point_pixels(self, record: PointRecord) -> np.ndarray:
        """A stored point's decoded pixels, from its stored reference through this machine's ledger (opened once,
        on the runtime); StoredImageError (409) when its file is unknown here, gone or broken."""
        s = self.settings
        pixels = load_stored_pixels(
            self.runtime.ledger, record.payload, record.id, max_pixels=s.max_pixels, min_side=s.min_side
        )
        self.heap.note(pixels.size * RASTER_GREY_BPP)  # a full decode, not budgeted (the file was accepted before)
        return pixels

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
        self.runtime.close()


def _not_ready(readiness: Readiness, part: str) -> HTTPException:
    what = {"model": "the model", "store": "the vector store"}[part]
    error = readiness.errors.get(part)
    detail = f"{what} is not ready: {error[0]}" if error else f"{what} is still loading"
    return HTTPException(503, detail, headers={"Retry-After": "5"})


def get_state(request: Request) -> ApiState:
    """The app's ApiState (a FastAPI dependency)."""
    return request.app.state.api
