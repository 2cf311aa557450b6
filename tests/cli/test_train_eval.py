"""`cxr train` then `cxr eval` end to end on real images, through the installed command's code paths."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_train_then_eval_writes_checkpoint_and_report(data_dir: Path, public_sample: Path, tmp_path: Path):
    manifest = public_sample / "manifest.csv"
    run = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "--manifest",
            str(manifest),
            "--model",
            "vit-tiny",
            "--image-size",
            "32",
            "--steps",
            "4",
            "--batch-size",
            "16",
            "--min-class-images",
            "2",
            "--val-every",
            "2",
            "--warmup-steps",
            "1",
            "--recipe",
            "paper",
            "--out",
            str(run),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "best val MAP@R" in res.stdout
    recipe = json.loads((run / "config.json").read_text())["encoder"]["recipe"]
    assert recipe["loss"]["koleo_weight"] == 0.3 and recipe["loss"]["memory_size"] > 0

    out = tmp_path / "report"
    res = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(run),
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--n-boot",
            "200",
            "--merge",
            "pneumonia_bacterial,pneumonia_viral=pneumonia",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "full mAP" in res.stdout and "chance" in res.stdout
    report = json.loads((out / "report.json").read_text())
    for key in ("map", "map_at_r", "r_precision", "precision_at_k", "recall_at_k", "hit_at_k", "per_class"):
        assert key in report
    assert set(report["per_class"]) <= {"covid19", "normal", "pneumonia"}
    assert report["split"]["sha256"] == recipe["split_sha256"]  # eval reused the training split
    assert (out / "report.md").exists() and (out / "examples.png").stat().st_size > 1000
