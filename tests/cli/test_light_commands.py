"""Light commands (`cxr collections`, `cxr info`, `cxr status`, `cxr failures`, `cxr audit`, `cxr token list`,
`--help`) never load the model stack, and those that do not read the store do not load its engine either; `cxr
search` on a warm model cache loads OpenVINO but not torch. Each runs in a fresh interpreter, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.services import free_port

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "qdrant_client", "openvino")
WATCHED = (*HEAVY, "qdrant_edge", "numpy")

# Runs one command as the `cxr` script does (cli.main.main), then reports which heavy modules got imported.
_PROBE = """
import json, sys
from cli.main import main
sys.argv = ["cxr", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
loaded = [m for m in __WATCHED__ if m in sys.modules]
print(json.dumps({"exit": code, "heavy": [m for m in __HEAVY__ if m in loaded], "loaded": loaded}), file=sys.stderr)
""".replace("__HEAVY__", repr(HEAVY)).replace("__WATCHED__", repr(WATCHED))


def _run(args: list[str], env: dict[str, str]) -> tuple[dict, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    wall = time.perf_counter() - t0
    probe = json.loads(proc.stderr.strip().splitlines()[-1])
    return probe, proc.stdout, wall


@pytest.fixture()
def store_with_points(data_dir: Path) -> Path:
    from services.config import Settings
    from services.index import PointRecord, QdrantEdgeStore

    settings = Settings()
    store = QdrantEdgeStore(settings.store_path)
    store.create_collection("light", 8)
    vectors = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    store.upsert("light", [PointRecord(str(uuid.uuid4()), v, {"label": "normal"}) for v in vectors])
    store.close()
    return data_dir


def test_collections_does_not_load_the_model_stack(store_with_points: Path) -> None:
    probe, out, wall = _run(["collections", "--json"], {"CXR_DATA_DIR": str(store_with_points)})
    assert probe["exit"] == 0, out
    assert json.loads(out) == [{"name": "light", "dim": 8, "count": 3}]
    assert probe["heavy"] == [], f"cxr collections imported {probe['heavy']} (took {wall:.2f} s)"
    print(f"cxr collections --json: {wall:.2f} s wall in a fresh interpreter")


def test_info_reads_the_checkpoint_without_torch(data_dir: Path, tiny_checkpoint: Path) -> None:
    from services.embedding import checkpoint_id

    env = {"CXR_DATA_DIR": str(data_dir), "CXR_MODEL": str(tiny_checkpoint)}
    probe, out, wall = _run(["info", "--json"], env)
    assert probe["exit"] == 0, out
    info = json.loads(out)
    assert info["model_id"] == checkpoint_id(tiny_checkpoint)
    assert info["model_config"]["encoder"]["image_size"] == 32
    assert probe["heavy"] == [], f"cxr info imported {probe['heavy']} (took {wall:.2f} s)"
    print(f"cxr info --json: {wall:.2f} s wall in a fresh interpreter")


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--json"],
        ["failures", "--json"],
        ["audit", "--json"],
        ["audit", "verify"],
        ["token", "list", "--json"],
        ["--help"],
        ["search", "--help"],
        ["index", "--help"],
    ],
    ids=" ".join,
)
def test_listing_commands_and_help_load_neither_the_model_nor_the_store(data_dir: Path, args: list[str]) -> None:
    env = {
        "CXR_DATA_DIR": str(data_dir),
        "CXR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: status says so, at once
        "CXR_API_TOKENS_FILE": str(data_dir / "tokens.jsonl"),
    }
    probe, out, wall = _run(args, env)
    assert probe["exit"] == 0, out
    assert probe["heavy"] == [], f"cxr {' '.join(args)} imported {probe['heavy']} (took {wall:.2f} s)"
    assert "qdrant_edge" not in probe["loaded"], f"cxr {' '.join(args)} loaded the store engine"


def test_search_on_a_warm_model_cache_does_not_load_torch(
    data_dir: Path, tiny_checkpoint: Path, public_sample: Path
) -> None:
    env = {
        "CXR_DATA_DIR": str(data_dir),
        "CXR_MODEL": str(tiny_checkpoint),
        "CXR_INFERENCE_BACKEND": "openvino",
        "CXR_TORCH_THREADS": "1",
    }
    probe, out, _ = _run(["index", "--manifest", str(public_sample / "manifest.csv"), "--json"], env)
    assert probe["exit"] == 0, out  # the index converted the model and filled the cache
    query = public_sample / (public_sample / "manifest.csv").read_text().splitlines()[1].split(",")[0]
    probe, out, wall = _run(["search", str(query), "--k", "3", "--json"], env)
    assert probe["exit"] == 0, out
    assert len(json.loads(out)) == 3
    assert "openvino" in probe["loaded"]
    assert not {"torch", "transformers"} & set(probe["loaded"]), f"a warm cxr search imported {probe['loaded']}"
    print(f"cxr search --json on a warm cache: {wall:.2f} s wall in a fresh interpreter")


def test_inference_threads_agree_with_torch() -> None:
    code = (
        "from services.embedding.cpu_features import inference_threads; n = inference_threads(); "
        "import torch; print(n, torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ours, torchs = out.stdout.split()
    assert ours == torchs


def test_cpu_bf16_probe_agrees_with_torch() -> None:
    from services.embedding import bf16_supported, native_bf16_cpu

    assert native_bf16_cpu() == bf16_supported("cpu")


def test_ledger_and_pipeline_package_import_light() -> None:
    code = (
        "import sys, services.pipeline, services.pipeline.ledger, services.pacs.spool, services.index; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
