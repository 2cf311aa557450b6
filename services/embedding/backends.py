"""Inference back ends for a trained encoder: the same function (grey (B, 1, S, S) in [0, 1] -> embeddings), run
by eager PyTorch in fp32 or bf16, torch.compile, ONNX Runtime, OpenVINO, or int8 dynamic quantisation.

`benchmarks/encoder_speed.py` measures each one's speed and its agreement with eager fp32 on real X-rays; the
default (Settings.inference_backend) is the fastest one that agrees. Every back end but the eager ones is
optional: a missing package gives a ModelError naming it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.errors import ModelError

from .model import CxrEncoder

BACKENDS = ("eager-fp32", "eager-bf16", "compile-bf16", "onnxruntime", "openvino", "openvino-bf16", "int8-dynamic")

Runner = Callable[[np.ndarray], np.ndarray]  # (B, 1, S, S) float32 -> (B, dim) float32


def _torch_runner(module: nn.Module, *, bf16: bool) -> Runner:
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


def _openvino_model(encoder: CxrEncoder, cache: Path | None):  # noqa: ANN202 - openvino.Model
    """The encoder as an OpenVINO model; converted once per checkpoint and kept as IR under `cache`."""
    import openvino as ov

    xml = cache / "encoder.xml" if cache else None
    if xml is not None and xml.is_file():
        return ov.Core().read_model(str(xml))
    size = encoder.config.image_size
    with _quiet_tracing():
        model = ov.convert_model(encoder, example_input=torch.rand(2, 1, size, size))
    model.reshape({0: ov.PartialShape([-1, 1, size, size])})
    if xml is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".ir-", dir=cache))
        ov.save_model(model, str(tmp / "encoder.xml"), compress_to_fp16=False)
        os.replace(tmp / "encoder.bin", cache / "encoder.bin")  # weights first, then the file that names them
        os.replace(tmp / "encoder.xml", xml)
        tmp.rmdir()
    return model


def _openvino_runner(encoder: CxrEncoder, threads: int, *, bf16: bool, cache: Path | None) -> Runner:
    try:
        import openvino as ov
    except ImportError:
        raise ModelError("the openvino back end needs the openvino package", "pip install openvino") from None
    try:
        model = _openvino_model(encoder, cache)
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"}
        compiled = ov.Core().compile_model(model, "CPU", config)
    except Exception as exc:
        raise ModelError(f"cannot convert the encoder with OpenVINO: {exc}") from exc
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(request.infer({0: batch})[compiled.output(0)], dtype=np.float32)

    return run


def make_runner(encoder: CxrEncoder, backend: str, *, threads: int | None = None, cache: Path | None = None) -> Runner:
    """A callable that embeds batches with `backend`; the encoder must be in eval mode on the CPU. `cache` is a
    folder for this checkpoint's converted model (OpenVINO IR), so later processes skip the conversion."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown inference back end {backend!r}; known: {', '.join(BACKENDS)}")
    encoder = encoder.eval()
    threads = threads or torch.get_num_threads()
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
    return _openvino_runner(encoder, threads, bf16=backend == "openvino-bf16", cache=cache)
