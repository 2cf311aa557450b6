"""Runtime: the settings plus the lazily opened encoder, store and ledger that every shell (CLI, worker, API) shares."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from services.config import Settings
from services.errors import ModelError
from services.index import VectorStore, open_store
from services.pipeline.ledger import Ledger

if TYPE_CHECKING:  # torch loads only when the encoder is first used
    from services.embedding import BatchEncoder


class RuntimeLike(Protocol):
    """What a search runs with: a Runtime (CLI, worker), the API's runtime, or anything shaped like them."""

    settings: Settings

    @property
    def encoder(self) -> BatchEncoder: ...

    @property
    def store(self) -> VectorStore: ...

    @property
    def ledger(self) -> Ledger: ...

    def close(self) -> None: ...


class Runtime:
    """Opens the model and the store on first use, and closes the store on exit."""

    def __init__(self, settings: Settings, *, model_path: Path | None = None) -> None:
        self.settings = settings
        self.model_path = Path(model_path) if model_path else settings.model_path

    @cached_property
    def encoder(self) -> BatchEncoder:
        if not (self.model_path / "config.json").exists():
            raise ModelError(
                f"no checkpoint at {self.model_path}",
                "Train one with `cxr train --out DIR` (or run `cxr demo`), then pass --model DIR or set CXR_MODEL.",
            )
        from services.embedding.openvino_cache import OPENVINO_BACKENDS

        backend = self.settings.inference_backend
        if self.settings.torch_threads and backend not in OPENVINO_BACKENDS:  # OpenVINO takes them as `threads`
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        from services.embedding import BatchEncoder

        return BatchEncoder.from_checkpoint(
            self.model_path,
            batch_size=self.settings.batch_size,
            bf16=self.settings.bf16,
            backend=backend,
            cache_root=self.settings.model_cache_dir,
            cache_keep=self.settings.model_cache_keep,
            threads=self.settings.torch_threads,
        )

    def warm_model_cache(self) -> None:
        """Fill a cold OpenVINO model cache in a child process (services.embedding.warm_cache), so that loading the
        encoder here needs neither torch nor the eager model (what `cxr serve` wants); a no-op for other back ends,
        a warm cache or a missing checkpoint (the encoder's own load reports that)."""
        from services.embedding.openvino_cache import OPENVINO_BACKENDS

        backend = self.settings.inference_backend
        if "encoder" in self.__dict__ or backend not in OPENVINO_BACKENDS:
            return
        if not (self.model_path / "config.json").exists():
            return
        from services.embedding.warm_cache import openvino_cache_is_warm, warm_in_child

        cache_root = self.settings.model_cache_dir
        try:
            if openvino_cache_is_warm(self.model_path, backend, cache_root):
                return
        except ModelError:
            return
        warm_in_child(self.model_path, backend, cache_root, self.settings.model_cache_keep, self.settings.torch_threads)

    @cached_property
    def store(self) -> VectorStore:
        return open_store(self.settings)

    @cached_property
    def ledger(self) -> Ledger:
        """This machine's ledger (items, cursors, and the source refs that payloads carry instead of paths)."""
        return Ledger(self.settings.ledger_path)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
            del self.__dict__["store"]
        if "ledger" in self.__dict__:
            self.ledger.close()
            del self.__dict__["ledger"]

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
