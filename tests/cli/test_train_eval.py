"""`cxr train` then `cxr eval` end to end on real images, through the installed command's code paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
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
    assert "full mAP" in res.stdout and "chance" in res.stdout and "leakage: 0 exact" in res.stdout
    report = json.loads((out / "report.json").read_text())
    split = json.loads((run / "split.json").read_text())
    # The numbers describe this run: every test image queried, the whole train split as the gallery, the
    # model's own split, no leaks, and the printed table holds the report's own full mAP.
    assert report["n_queries"] + report["n_queries_without_relevant"] == len(split["test"])
    assert report["n_gallery"] == len(split["train"]) and report["indexing"]["indexed"] == len(split["train"])
    assert report["split"]["sha256"] == recipe["split_sha256"]  # eval reused the training split
    assert report["split"]["matches_training_split"] is True
    assert report["leakage"]["n_leaking_queries"] == 0 and report["leakage"]["queries_without_patient_id"] == 0
    assert set(report["per_class"]) == {"covid19", "normal", "pneumonia"}
    assert sum(c["n_queries"] for c in report["per_class"].values()) == report["n_queries"]
    for block in (report, report["chance"], report["baselines"]["raw_pixels"]):
        assert block["map"]["ci_low"] <= block["map"]["mean"] <= block["map"]["ci_high"]
        assert 0.0 < block["map"]["mean"] <= 1.0
    model_line = next(line for line in res.stdout.splitlines() if line.startswith("model "))
    assert float(model_line.split()[1]) == pytest.approx(report["map"]["mean"], abs=5e-5)
    assert report["store_agreement"]["rate"] == 1.0
    assert (out / "report.md").exists() and (out / "examples.png").stat().st_size > 1000


def _other_split(run: Path, tmp_path: Path) -> Path:
    """The training split with one test image moved to train: a different split file."""
    split = json.loads((run / "split.json").read_text())
    split["train"] = sorted([*split["train"], split["test"][0]])
    split["test"] = split["test"][1:]
    split["counts"] = {name: len(split[name]) for name in ("train", "val", "test")}
    path = tmp_path / "other-split.json"
    path.write_text(json.dumps(split))
    return path


def test_eval_refuses_another_split_and_train_refuses_another_manifest(
    data_dir: Path, public_sample: Path, tmp_path: Path
):
    manifest = public_sample / "manifest.csv"
    run = tmp_path / "run"
    args = ["--model", "vit-tiny", "--image-size", "32", "--steps", "2", "--batch-size", "16"]
    args += ["--min-class-images", "2", "--val-every", "2", "--warmup-steps", "1"]
    res = runner.invoke(app, ["train", "--manifest", str(manifest), *args, "--out", str(run)])
    assert res.exit_code == 0, res.output

    other = _other_split(run, tmp_path)
    evaluate = ["eval", "--model", str(run), "--manifest", str(manifest), "--split", str(other), "--n-boot", "100"]
    res = runner.invoke(app, [*evaluate, "--out", str(tmp_path / "refused")])
    assert res.exit_code == 1 and "trained on another split" in res.stderr and "--allow-split-mismatch" in res.stderr
    assert not (tmp_path / "refused" / "report.json").exists()
    res = runner.invoke(
        app, [*evaluate, "--out", str(tmp_path / "allowed"), "--allow-split-mismatch", "--no-baselines"]
    )
    assert res.exit_code == 0, res.output
    assert "**Split mismatch.**" in (tmp_path / "allowed" / "report.md").read_text()

    # A new user trains again into the same folder with an edited manifest: refused, naming the cause.
    copy = shutil.copytree(public_sample, tmp_path / "data")
    edited = copy / "manifest.csv"
    lines = edited.read_text().splitlines(keepends=True)
    edited.write_text("".join(lines[:-2]))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copyfile(run / "split.json", fresh / "split.json")  # e.g. left by a run that was stopped early
    res = runner.invoke(app, ["train", "--manifest", str(edited), *args, "--out", str(fresh)])
    assert res.exit_code == 1 and "made from another manifest" in res.stderr, res.output
    assert "< 2 train images" not in res.output and "delete" in res.stderr
