"""The README's main job, `cxr demo`, on the real public data with a tiny budget: train, index, search, print."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cli.main import app


def test_demo_trains_indexes_and_searches(data_dir: Path, cxr_public: Path):
    res = CliRunner().invoke(
        app, ["demo", "--data", str(cxr_public), "--train-minutes", "0.1", "--n-index", "24", "--k", "5"]
    )
    assert res.exit_code == 0, res.output
    assert "No trained checkpoint" in res.stderr and "minutes" in res.stderr  # says plainly that it trains
    assert "indexed 24" in res.stdout
    assert "held-back test image" in res.stdout and "share the query's label" in res.stdout
    assert (data_dir / "models" / "default" / "config.json").exists()

    again = CliRunner().invoke(app, ["demo", "--data", str(cxr_public), "--n-index", "24", "--k", "5"])
    assert again.exit_code == 0, again.output
    assert "using the trained checkpoint" in again.stderr
    assert "already present 24" in again.stdout  # re-indexing never duplicates
