"""Light commands (`cxr collections`, `cxr info`) never load the model stack, and the ledger module (behind
`cxr status` / `cxr failures`) imports without it too. Each runs in a fresh interpreter, as a user would run it."""

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

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "qdrant_client")

# Runs one command in-process with the real Typer app, then reports which heavy modules got imported.
_PROBE = """
import json, sys
from cli.main import app
code = 0
try:
    app(args=sys.argv[1:], prog_name="cxr")
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps({"exit": code, "heavy": [m for m in __HEAVY__ if m in sys.modules]}), file=sys.stderr)
""".replace("__HEAVY__", repr(HEAVY))


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
