"""The `cxr` shell: exit codes, stdout/stderr separation, JSON shapes, error map. Real files, real embedded store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


@pytest.fixture()
def env(data_dir: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("CXR_MODEL", str(tiny_checkpoint))
    monkeypatch.setenv("CXR_BATCH_SIZE", "8")
    return {"CXR_DATA_DIR": str(data_dir), "CXR_MODEL": str(tiny_checkpoint)}


def test_index_then_search_json(env, public_sample: Path):
    res = runner.invoke(app, ["index", "--manifest", str(public_sample / "manifest.csv"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["indexed"] == 24 and summary["failed"] == []

    query = next((public_sample / "images" / "covid19").iterdir())
    res = runner.invoke(app, ["search", str(query), "--k", "3", "--filter", "label=normal", "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert {h["payload"]["label"] for h in hits} == {"normal"}
    assert set(hits[0]) == {"rank", "id", "score", "payload"}

    res = runner.invoke(app, ["search", str(query), "--k", "2"])
    assert res.exit_code == 0 and "score" in res.stdout

    res = runner.invoke(app, ["collections", "--json"])
    assert json.loads(res.stdout) == [{"name": "cxr", "dim": 64, "count": 24}]


def test_index_partial_failure_exits_3_and_lists_failures(env, public_sample: Path, tmp_path: Path):
    folder = tmp_path / "studies"
    shutil.copytree(public_sample / "images" / "normal", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    errors = tmp_path / "errors.jsonl"
    res = runner.invoke(app, ["index", str(folder), "--errors-out", str(errors)])
    assert res.exit_code == 3, res.output
    assert "broken.png" in res.stdout and "indexed 6" in res.stdout
    record = json.loads(errors.read_text().splitlines()[0])
    assert record["stage"] == "decode" and record["path"].endswith("broken.png")


def test_index_nothing_landed_is_a_domain_error(env, tmp_path: Path):
    (tmp_path / "a.txt").write_text("hello")
    res = runner.invoke(app, ["index", str(tmp_path)])
    assert res.exit_code == 1
    assert "none of 1 file(s) could be indexed" in res.stderr


def test_domain_error_is_one_line_with_hint(env, tmp_path: Path):
    res = runner.invoke(app, ["search", str(tmp_path / "nope.dcm")])
    assert res.exit_code == 1
    assert "nope.dcm" in res.stderr and "hint:" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_checkpoint_says_how_to_get_one(env, tmp_path: Path, public_sample: Path):
    res = runner.invoke(app, ["index", str(public_sample / "images"), "--model", str(tmp_path / "nothing")])
    assert res.exit_code == 1
    assert "no checkpoint" in res.stderr and "cxr train" in res.stderr


def test_usage_errors_exit_2(env):
    assert runner.invoke(app, ["search"]).exit_code == 2
    assert runner.invoke(app, ["index", "--label-from", "nowhere", "x"]).exit_code == 2
    assert runner.invoke(app, ["index"]).exit_code == 2


def test_bad_filter_is_a_domain_error(env, public_sample: Path):
    runner.invoke(app, ["index", "--manifest", str(public_sample / "manifest.csv")])
    query = next((public_sample / "images" / "normal").iterdir())
    res = runner.invoke(app, ["search", str(query), "--filter", "colour=red"])
    assert res.exit_code == 1 and "unknown filter field" in res.stderr


def test_info_and_optimize(env, public_sample: Path):
    runner.invoke(app, ["index", "--manifest", str(public_sample / "manifest.csv")])
    res = runner.invoke(app, ["info", "--json"])
    data = json.loads(res.stdout)
    assert data["model_id"] and data["store"].startswith("embedded")
    res = runner.invoke(app, ["optimize"])
    assert res.exit_code == 0 and "optimized cxr" in res.stdout


def test_every_command_help_has_an_example(env):
    for cmd in ("index", "search", "train", "collections", "optimize", "info", "demo"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "Example: cxr" in res.stdout, cmd


def test_installed_console_script_runs(env):
    exe = Path(sys.executable).with_name("cxr")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=os.environ, check=True)
    assert "Chest X-ray retrieval" in out.stdout
