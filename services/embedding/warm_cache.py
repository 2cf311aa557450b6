"""Filling a checkpoint's OpenVINO model cache (services.embedding.openvino_cache) in a child process.

Converting a checkpoint to OpenVINO needs torch and the eager model, which then stay in the process: about 450 MB
that a long-lived `cxr serve` would hold for its whole life although OpenVINO serves its searches. The API's
warm-up therefore has a child convert and compile a cold cache (Runtime.warm_model_cache), and loads the result
without torch; the first explanation loads torch later, if one is asked for.

    python -m services.embedding.warm_cache CHECKPOINT BACKEND CACHE_ROOT KEEP [THREADS]
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from .openvino_cache import IR_DIR, IR_XML, OPENVINO_BACKENDS, checkpoint_cache_key

log = logging.getLogger("cxr.embedding")
TIMEOUT_S = 900


def openvino_cache_is_warm(checkpoint: Path, backend: str, cache_root: Path) -> bool:
    """Whether `backend`'s converted model of `checkpoint` is in the cache (True for a back end without one)."""
    if backend not in OPENVINO_BACKENDS:
        return True
    return (Path(cache_root) / checkpoint_cache_key(checkpoint, backend) / IR_DIR / IR_XML).is_file()


def warm_in_child(checkpoint: Path, backend: str, cache_root: Path, keep: int, threads: int | None) -> bool:
    """Convert and compile into the cache in a child process; False (logged) when it failed, so that the caller
    loads in process and reports the real error."""
    argv = [sys.executable, "-m", __name__, str(checkpoint), backend, str(cache_root), str(keep), str(threads or 0)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not fill the model cache in a child process: %s", exc)
        return False
    if done.returncode != 0:
        log.warning("could not fill the model cache in a child process: %s", done.stderr.strip()[-2000:])
        return False
    return True


def main(argv: list[str]) -> None:
    import numpy as np

    from .batch import BatchEncoder

    checkpoint, backend, cache_root, keep, threads = argv
    encoder = BatchEncoder.from_checkpoint(
        checkpoint, backend=backend, cache_root=Path(cache_root), cache_keep=int(keep), threads=int(threads) or None
    )
    encoder.encode(np.zeros((1, encoder.image_size, encoder.image_size), dtype=np.float32))


if __name__ == "__main__":
    main(sys.argv[1:])
