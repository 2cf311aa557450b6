"""The OpenVINO model, kept on disk once converted and compiled, so that a later process (`cxr search` in a loop, a
worker's restart) starts without torch, without a conversion and without a compile.

A cache root (Settings.model_cache_dir, DATA_DIR/cache/openvino) holds one folder per key:
  <key>/ir/encoder.xml|.bin   the converted model, written once by whichever process converts first
  <key>/compiled-<cfg>.blob   the CPU plugin's export for one config (precision, threads, CPU, OpenVINO build)
The key hashes the checkpoint (its config.json, which records the weights' sha256, and the weights file's size and
mtime), the back end, the OpenVINO version and this layout's version: a changed checkpoint or another OpenVINO gets
a new key. Every file and folder is written beside its place and renamed into it, so a reader never sees half of one
and two processes that start at once both succeed (the later rename loses and its copy is dropped). A used key's
folder is touched; beyond `keep` keys, the least recently used are removed.

Writing the cache is best effort: a read-only or full disk costs the next process a conversion, never a failure.
Nothing here imports torch; the caller's `convert` does, on a miss only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.durable import write_atomically
from services.errors import ModelError

from .checkpoint_meta import CONFIG_FILE, WEIGHTS_FILE, checkpoint_folder, read_checkpoint_config

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
OPENVINO_BACKENDS = ("openvino", "openvino-bf16")
IR_DIR, IR_XML = "ir", "encoder.xml"
BLOBS_KEPT = 3  # per key: one per (threads, precision) in use; more means a config changed
STALE_TEMP_S = 3600.0  # a writer's leftover (it crashed) older than this is removed

# Where a compiled model came from: the blob (no conversion, no compile), the IR (compiled, then exported),
# a conversion (both written), or no cache folder at all.
SOURCES = ("compiled-cache", "ir-cache", "converted", "uncached")


def import_openvino() -> Any:
    """The openvino module, or a ModelError naming the package."""
    try:
        import openvino
    except ImportError:
        raise ModelError("the openvino back end needs the openvino package", "pip install openvino") from None
    return openvino


def checkpoint_cache_key(path: str | Path, backend: str) -> str:
    """`<folder name>-<backend>-<16 hex>` for the checkpoint at `path`, without reading its weights or loading
    openvino: a hash of config.json (it records the weights' sha256), the weights file's size and mtime (a file
    replaced without its config gets a new key, and the load then checks it), the back end, the installed
    OpenVINO version and LAYOUT_VERSION."""
    folder = checkpoint_folder(path)
    read_checkpoint_config(folder)  # refuses a folder that is not a cxr checkpoint
    weights = folder / WEIGHTS_FILE
    try:
        stat = weights.stat()
        config_sha = hashlib.sha256((folder / CONFIG_FILE).read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelError(f"{weights}: unreadable ({exc})") from exc
    try:
        version = metadata.version("openvino")
    except metadata.PackageNotFoundError:
        raise ModelError("the openvino back end needs the openvino package", "pip install openvino") from None
    material = {
        "layout": LAYOUT_VERSION,
        "backend": backend,
        "openvino": version,
        "config_sha256": config_sha,
        "weights": [stat.st_size, stat.st_mtime_ns],
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
    return f"{folder.resolve().name[:64]}-{backend}-{digest}"


def compile_config(backend: str, threads: int) -> dict[str, Any]:
    """The CPU plugin's config for `backend`; passed to both compile and import, so a blob runs as compiled."""
    if backend not in OPENVINO_BACKENDS:
        raise ModelError(f"not an OpenVINO back end: {backend!r}")
    precision = "bf16" if backend == "openvino-bf16" else "f32"
    return {"INFERENCE_NUM_THREADS": int(threads), "INFERENCE_PRECISION_HINT": precision}


class OpenVinoRunner:
    """(B, 1, S, S) float32 -> (B, dim) float32 through one compiled model; `source` says where it came from.

    Safe to call from several threads (the API's searches): one infer request runs one inference at a time (a
    second caller got "Infer Request is busy", a 500, with eight large uploads at once), and its output buffer is
    reused by the next inference, so each caller takes its rows out as a copy before the next one runs. One
    inference already uses every inference thread, so taking turns costs no throughput."""

    def __init__(self, compiled: ov.CompiledModel, source: str) -> None:
        self.compiled, self.source = compiled, source
        self._request = compiled.create_infer_request()
        self._output = compiled.output(0)
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.array(self._request.infer({0: batch})[self._output], dtype=np.float32, copy=True)


def load_compiled(
    folder: Path | None,
    backend: str,
    threads: int,
    convert: Callable[[], ov.Model],
    *,
    keep_keys: int | None = None,
) -> tuple[ov.CompiledModel, str]:
    """The compiled model for `backend`, and its source (one of SOURCES). `folder` is this checkpoint's key folder
    (None: no cache); `convert` builds the OpenVINO model on a miss. With `keep_keys`, `folder`'s parent is a cache
    root this module owns, and its least recently used keys beyond that many are removed."""
    ov = import_openvino()
    core = ov.Core()
    config = compile_config(backend, threads)
    if folder is None:
        return _compile(core, convert(), config), "uncached"
    blob = folder / f"compiled-{_config_digest(ov, core, config)}.blob"
    compiled = _import_blob(core, blob, config)
    if compiled is not None:
        _touch(folder)
        return compiled, "compiled-cache"
    model, source = _read_ir(core, folder), "ir-cache"
    if model is None:
        model, source = convert(), "converted"
        _save_ir(ov, model, folder)
        # compiled as read back, as every later process compiles it: the in-memory model's constants can differ in
        # the last bit, and a cold and a warm process should embed identically
        model = _read_ir(core, folder) or model
    compiled = _compile(core, model, config)
    _save_blob(compiled, blob)
    _touch(folder)
    if keep_keys is not None:
        prune_keys(folder.parent, keep_keys, current=folder)
    return compiled, source


def prune_keys(root: Path, keep: int, *, current: Path | None = None) -> list[Path]:
    """Remove the least recently used key folders of `root` beyond `keep` (never `current`); returns those removed.
    Each is renamed away before it is deleted, so a reader finds a whole key or none."""
    dated = [(_mtime(path), path) for path in _keys(root)]
    newest_first = [path for mtime, path in sorted(dated, reverse=True) if mtime]
    survivors = [current] if current is not None else []
    for path in newest_first:
        if len(survivors) >= keep:
            break
        if path != current:
            survivors.append(path)
    removed = [path for path in newest_first if path not in survivors and _discard(path)]
    _sweep_temporaries(root)
    return removed


def _config_digest(ov: Any, core: Any, config: dict[str, Any]) -> str:
    """A blob is only valid for the config, CPU and OpenVINO build that made it."""
    try:
        device = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    except RuntimeError:
        device = "cpu"
    material = {"config": config, "device": device, "openvino": ov.get_version(), "layout": LAYOUT_VERSION}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _compile(core: Any, model: Any, config: dict[str, Any]) -> Any:
    try:
        return core.compile_model(model, "CPU", config)
    except RuntimeError as exc:
        raise ModelError(f"OpenVINO cannot compile the encoder: {_reason(exc)}") from exc


def _import_blob(core: Any, blob: Path, config: dict[str, Any]) -> Any | None:
    try:
        data = blob.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the compiled model %s (%s); compiling again", blob, exc)
        return None
    try:
        return core.import_model(data, "CPU", config)
    except RuntimeError as exc:  # torn by a crash, or written by an OpenVINO that reads it differently
        log.warning("ignoring the compiled model %s (%s); compiling again", blob, _reason(exc))
        blob.unlink(missing_ok=True)
        return None


def _read_ir(core: Any, folder: Path) -> Any | None:
    xml = folder / IR_DIR / IR_XML
    if not xml.is_file():
        return None
    try:
        return core.read_model(str(xml))
    except RuntimeError as exc:
        log.warning("ignoring the converted model %s (%s); converting again", xml, _reason(exc))
        _discard(folder / IR_DIR)
        return None


def _save_ir(ov: Any, model: Any, folder: Path) -> None:
    """Write the IR into a temporary folder, then rename it to `ir`: the rename fails when another process got
    there first, and its identical copy stays."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".ir-", dir=folder))
    except OSError as exc:
        log.warning("cannot keep the converted model in %s (%s)", folder, exc)
        return
    try:
        ov.save_model(model, str(tmp / IR_XML), compress_to_fp16=False)
        os.rename(tmp, folder / IR_DIR)
    except OSError as exc:
        if not (folder / IR_DIR / IR_XML).is_file():
            log.warning("cannot keep the converted model in %s (%s)", folder, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_blob(compiled: Any, blob: Path) -> None:
    try:
        exported = compiled.export_model()
        data = exported.getvalue() if hasattr(exported, "getvalue") else bytes(exported)
        write_atomically(blob, data, tmp_prefix=".compiled-")
    except (OSError, RuntimeError) as exc:
        log.warning("cannot keep the compiled model %s (%s)", blob, exc)
        return
    blobs = sorted(((_mtime(p), p) for p in blob.parent.glob("compiled-*.blob")), reverse=True)
    for _, old in blobs[BLOBS_KEPT:]:
        if old != blob:
            old.unlink(missing_ok=True)
    _sweep_temporaries(blob.parent)


def _sweep_temporaries(folder: Path) -> None:
    """Remove what a crashed writer left (`.`-prefixed temporaries) once it is surely not being written."""
    now = time.time()
    for path in _entries(folder):
        if path.name.startswith(".") and (mtime := _mtime(path)) and now - mtime > STALE_TEMP_S:
            _discard(path)


def _discard(path: Path) -> bool:
    """Rename `path` to a hidden name, then delete it; False when it was already gone (another process)."""
    trash = path.with_name(f".trash-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(path, trash)
    except OSError:
        return False
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)
    return True


def _touch(folder: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(folder)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _keys(root: Path) -> list[Path]:
    return [path for path in _entries(root) if not path.name.startswith(".") and path.is_dir()]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile
        return 0.0


def _reason(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
