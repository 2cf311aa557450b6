"""Inference back ends for a trained encoder: the same function (grey (B, 1, S, S) in [0, 1] -> embeddings), run
by eager PyTorch in fp32 or bf16, torch.compile, ONNX Runtime, OpenVINO, or int8 dynamic quantisation.

`benchmarks/encoder_speed.py` measures each one's speed and its agreement with eager fp32 on real X-rays; the
default (Settings.inference_backend) is the fastest one that agrees. Every back end but the eager ones is
optional: a missing package gives a ModelError naming it.

torch is imported inside the functions that use it, so BACKENDS and the OpenVINO path on a warm cache
(services.embedding.openvino_cache) come without it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.errors import ModelError

from .cpu_features import inference_threads
from .openvino_cache import OpenVinoRunner, import_openvino, load_compiled

if TYPE_CHECKING:
    from torch import nn

    from .model import CxrEncoder

BACKENDS = ("eager-fp32", "eager-bf16", "compile-bf16", "onnxruntime", "openvino", "openvino-bf16", "int8-dynamic")

Runner = Callable[[np.ndarray], np.ndarray]  # (B, 1, S, S) float32 -> (B, dim) float32


def _torch_runner(module: nn.Module, *, bf16: bool) -> Runner:
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return module(torch.from_numpy(batch)).float().numpy()

    return run


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence what tracing a checkpoint always says and never means for us: TracerWarnings on shape checks that are
    constant for a fixed image size, torch.jit.trace's deprecation (OpenVINO and the ONNX exporter call it), and
    transformers' notes on attributes the tracer walks (gradient checkpointing, a loss the encoder never computes).
    Any other warning still shows."""
    import torch
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        # torch.onnx's TorchScript exporter (chosen on purpose: dynamo=False) announces its own deprecation
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed", module=r"torch\.onnx")
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)


def _onnx_file(encoder: CxrEncoder, folder: Path) -> Path:
    """Export the encoder once to ONNX with a dynamic batch axis."""
    import torch

    size = encoder.config.image_size
    path = folder / "encoder.onnx"
    example = torch.rand(2, 1, size, size)
    try:
        with _quiet_tracing(), contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115 - chatty exporter
            torch.onnx.export(
                encoder,
                (example,),
                str(path),
                input_names=["images"],
                output_names=["embeddings"],
                dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    except Exception as exc:
        raise ModelError(f"cannot export the encoder to ONNX: {exc}") from exc
    return path


def _onnxruntime_runner(encoder: CxrEncoder, folder: Path, threads: int) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("the onnxruntime back end needs the onnxruntime package", "pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(_onnx_file(encoder, folder)), opts, providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(["embeddings"], {"images": batch})[0].astype(np.float32)

    return run


def openvino_model(encoder: CxrEncoder) -> Any:  # openvino.Model
    """The encoder converted to an OpenVINO model with a dynamic batch axis (the slow step the cache saves)."""
    import torch

    ov = import_openvino()
    size = encoder.config.image_size
    try:
        with _quiet_tracing():
            model = ov.convert_model(encoder, example_input=torch.rand(2, 1, size, size))
        model.reshape({0: ov.PartialShape([-1, 1, size, size])})
    except Exception as exc:
        raise ModelError(f"cannot convert the encoder with OpenVINO: {exc}") from exc
    return model


def openvino_runner(
    get_encoder: Callable[[], CxrEncoder],
    backend: str,
    threads: int,
    cache: Path | None,
    *,
    keep_keys: int | None = None,
) -> OpenVinoRunner:
    """An OpenVINO runner; `get_encoder` is called only when the cache under `cache` cannot serve the model."""
    compiled, source = load_compiled(
        cache, backend, threads, lambda: openvino_model(get_encoder()), keep_keys=keep_keys
    )
    return OpenVinoRunner(compiled, source)


def make_runner(encoder: CxrEncoder, backend: str, *, threads: int | None = None, cache: Path | None = None) -> Runner:
    """A callable that embeds batches with `backend`; the encoder must be in eval mode on the CPU. `cache` is a
    folder for this checkpoint's OpenVINO model (converted and compiled; services.embedding.openvino_cache), so
    later processes skip the conversion and the compile; the caller vouches that it belongs to this encoder."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown inference back end {backend!r}; known: {', '.join(BACKENDS)}")
    import torch
    from torch import nn

    encoder = encoder.eval()
    threads = threads or inference_threads()
    if backend in ("eager-fp32", "eager-bf16"):
        return _torch_runner(encoder, bf16=backend == "eager-bf16")
    if backend == "compile-bf16":
        return _torch_runner(torch.compile(encoder, dynamic=True), bf16=True)
    if backend == "int8-dynamic":
        quantized = torch.ao.quantization.quantize_dynamic(encoder, {nn.Linear}, dtype=torch.qint8)
        return _torch_runner(quantized, bf16=False)
    if backend == "onnxruntime":
        folder = Path(tempfile.mkdtemp(prefix="cxr-onnx-"))
        return _onnxruntime_runner(encoder, folder, threads)
    return openvino_runner(lambda: encoder, backend, threads, cache)
