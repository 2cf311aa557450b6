"""The OpenVINO model cache (services.embedding.openvino_cache): a second load of a checkpoint imports the compiled
model (no torch, no conversion, no compile) and embeds identically; a changed checkpoint gets a new key; the cache
keeps the most recently used keys only; loads racing on a cold cache all succeed and leave one whole copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from services.embedding import BatchEncoder, create_encoder, save_checkpoint
from services.embedding.backends import openvino_model
from services.embedding.openvino_cache import (
    IR_DIR,
    IR_XML,
    OpenVinoRunner,
    checkpoint_cache_key,
    load_compiled,
    prune_keys,
)

REPO = Path(__file__).resolve().parents[2]
SIZE = 32  # the checkpoints of tests/conftest.py and this file: vit-tiny at 32 px

# A later process, as a user's next `cxr search` would be: load, encode, report what it needed.
_WARM = """
import json, sys, time
import numpy as np
from services.embedding import BatchEncoder
t0 = time.perf_counter()
enc = BatchEncoder.from_checkpoint(sys.argv[1], backend="openvino", cache_root=sys.argv[2], threads=1)
out = enc.encode(np.load(sys.argv[3]))
np.save(sys.argv[4], out)
print(json.dumps({"source": enc.runner_source, "seconds": time.perf_counter() - t0,
                  "heavy": [m for m in ("torch", "transformers") if m in sys.modules]}))
"""


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(3).random((n, SIZE, SIZE), dtype=np.float32)


def _keys(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith("."))


def test_a_second_load_uses_the_compiled_model_without_torch_and_embeds_identically(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    root, images = tmp_path / "cache", _images(5)
    np.save(tmp_path / "x.npy", images)
    t0 = time.perf_counter()
    cold = BatchEncoder.from_checkpoint(tiny_checkpoint, backend="openvino", cache_root=root, threads=1)
    first = cold.encode(images)
    cold_s = time.perf_counter() - t0
    assert cold.runner_source == "converted"
    (key,) = _keys(root)
    assert key.name == checkpoint_cache_key(tiny_checkpoint, "openvino")
    assert (key / IR_DIR / IR_XML).is_file() and len(list(key.glob("compiled-*.blob"))) == 1

    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _WARM,
            str(tiny_checkpoint),
            str(root),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    warm = json.loads(proc.stdout.strip().splitlines()[-1])
    assert warm["source"] == "compiled-cache"
    assert warm["heavy"] == [], f"a warm load imported {warm['heavy']}"
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), first)
    assert _keys(root) == [key]  # no second copy
    print(f"\nopenvino load+encode: cold {cold_s:.2f} s in-process, warm {warm['seconds']:.2f} s in a fresh process")

    again = BatchEncoder.from_checkpoint(tiny_checkpoint, backend="openvino", cache_root=root, threads=1)
    np.testing.assert_array_equal(again.encode(images), first)
    assert again.runner_source == "compiled-cache"
    assert again.encoder.config == cold.encoder.config  # the eager module still loads on demand (the explainer)


def test_a_changed_checkpoint_gets_a_new_key_and_the_old_one_is_dropped(tmp_path: Path) -> None:
    folder, root, images = tmp_path / "ckpt", tmp_path / "cache", _images(3)
    save_checkpoint(create_encoder("vit-tiny", image_size=SIZE, embed_dim=64, seed=0), folder)
    key = checkpoint_cache_key(folder, "openvino")
    assert checkpoint_cache_key(folder, "openvino") == key  # stable
    assert checkpoint_cache_key(folder, "openvino-bf16") != key  # per back end
    old = BatchEncoder.from_checkpoint(folder, backend="openvino", cache_root=root, cache_keep=1, threads=1)
    before = old.encode(images)

    save_checkpoint(create_encoder("vit-tiny", image_size=SIZE, embed_dim=64, seed=1), folder)  # retrained
    new_key = checkpoint_cache_key(folder, "openvino")
    assert new_key != key
    new = BatchEncoder.from_checkpoint(folder, backend="openvino", cache_root=root, cache_keep=1, threads=1)
    after = new.encode(images)
    assert new.runner_source == "converted"
    assert not np.allclose(after, before, atol=1e-3)
    assert [p.name for p in _keys(root)] == [new_key]  # bounded: the old key went

    weights = folder / "model.safetensors"  # weights replaced without their config: a new key, checked on load
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert checkpoint_cache_key(folder, "openvino") != new_key


def test_the_cache_keeps_the_most_recently_used_keys(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    keys = [root / f"ckpt{i}-openvino-{i:016x}" for i in range(5)]
    for age, key in enumerate(reversed(keys)):  # keys[0] is the oldest
        key.mkdir(parents=True)
        (key / "compiled-x.blob").write_bytes(b"x")
        os.utime(key, (time.time() - 100 * (age + 1),) * 2)
    os.utime(keys[0], (time.time() - 10_000,) * 2)
    stale = root / ".trash-abc"  # what a crashed pruner left
    stale.mkdir()
    os.utime(stale, (time.time() - 10_000,) * 2)
    fresh_tmp = root / ".ir-writing"  # a writer at work: never touched
    fresh_tmp.mkdir()

    removed = prune_keys(root, 3, current=keys[0])
    assert sorted(removed) == sorted(keys[1:3])
    assert _keys(root) == sorted([keys[0], keys[3], keys[4]])  # the one in use, then the two newest
    assert not stale.exists() and fresh_tmp.exists()


def test_loads_racing_on_a_cold_cache_all_succeed_with_one_copy(tmp_path: Path, tiny_encoder) -> None:
    import openvino as ov

    side = tmp_path / "side"
    ov.save_model(openvino_model(tiny_encoder), str(side / "m.xml"), compress_to_fp16=False)
    folder, n = tmp_path / "cache" / "key", 3
    barrier = threading.Barrier(n)

    def convert() -> object:  # every loader converts at once, then all write
        barrier.wait(timeout=60)
        return ov.Core().read_model(str(side / "m.xml"))

    results: list[tuple[object, str]] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            results.append(load_compiled(folder, "openvino", 1, convert))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == n
    assert {source for _, source in results} == {"converted"}
    batch = _images(4)[:, None]
    outputs = [OpenVinoRunner(compiled, source)(batch) for compiled, source in results]
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])
    (blob,) = folder.glob("compiled-*.blob")
    assert sorted(p.name for p in folder.iterdir()) == sorted([IR_DIR, blob.name])  # one IR, one blob, no temporaries

    compiled, source = load_compiled(folder, "openvino", 1, convert=lambda: pytest.fail("converted again"))
    assert source == "compiled-cache"
    np.testing.assert_array_equal(OpenVinoRunner(compiled, source)(batch), outputs[0])


def test_a_torn_blob_is_compiled_again_from_the_ir(tmp_path: Path, tiny_encoder) -> None:
    folder = tmp_path / "key"
    compiled, _ = load_compiled(folder, "openvino", 1, lambda: openvino_model(tiny_encoder))
    want = OpenVinoRunner(compiled, "")(_images(2)[:, None])
    (blob,) = folder.glob("compiled-*.blob")
    blob.write_bytes(blob.read_bytes()[:1000])  # a disk that lost the tail
    compiled, source = load_compiled(folder, "openvino", 1, convert=lambda: pytest.fail("converted again"))
    assert source == "ir-cache"
    np.testing.assert_array_equal(OpenVinoRunner(compiled, source)(_images(2)[:, None]), want)
    assert load_compiled(folder, "openvino", 1, convert=lambda: pytest.fail("converted again"))[1] == "compiled-cache"


def test_threads_encoding_at_once_share_one_runner_and_each_gets_its_own_rows(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    """The API encodes each search in its own thread. One infer request runs one inference at a time and reuses its
    output buffer: eight threads at once once got "Infer Request is busy" (a 500 in benchmarks/upload_burst.py).
    Every thread must get the rows of its own images, as encoding them alone gives."""
    encoder = BatchEncoder.from_checkpoint(tiny_checkpoint, backend="openvino", cache_root=tmp_path / "c", threads=1)
    batches = [np.random.default_rng(i).random((3, SIZE, SIZE), dtype=np.float32) for i in range(8)]
    alone = [encoder.encode(b) for b in batches]
    start = threading.Barrier(len(batches))
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        start.wait()
        try:
            for _ in range(20):
                got[i] = encoder.encode(batches[i])
                np.testing.assert_array_equal(got[i], alone[i])
        except BaseException as exc:  # noqa: BLE001 - reported below, with the thread's index
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:2]
    assert sorted(got) == list(range(len(batches)))
