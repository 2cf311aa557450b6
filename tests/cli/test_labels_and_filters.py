"""Labels are checked where they enter the CLI (a manifest row, a folder name) and filter values resolve against
the collection: real files, the real embedded store, the tiny checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from services.labels import LabelError, check_label

runner = CliRunner()


@pytest.fixture()
def env(data_dir: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_MODEL", str(tiny_checkpoint))
    monkeypatch.setenv("CXR_BATCH_SIZE", "8")


@pytest.mark.parametrize("label", ["covid19", "Pneumonia viral", "other_ards", "v1.2-b", "Ünïcode", "x" * 64])
def test_labels_that_pass(label: str) -> None:
    assert check_label(f"  {label} ") == label


@pytest.mark.parametrize(
    ("label", "says"),
    [("<img onerror=alert(1)>", "'<'"), ("", "empty"), ("x" * 65, "65 characters"), ("a\tb", "'\\t'"), ("a/b", "'/'")],
)
def test_labels_that_are_refused(label: str, says: str) -> None:
    with pytest.raises(LabelError) as info:
        check_label(label)
    assert says in info.value.message and info.value.hint


def test_a_manifest_row_with_a_bad_label_is_refused_alone(env, public_sample: Path, tmp_path: Path) -> None:
    with (public_sample / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:3]
    for row in rows:
        row["path"] = str(public_sample / row["path"])
    rows[1]["label"] = "<img src=x onerror=alert(1)>"
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    res = runner.invoke(app, ["index", "--manifest", str(manifest), "--json"])
    assert res.exit_code == 3, res.output  # partial: the two good rows are indexed
    report = json.loads(res.stdout)
    assert report["indexed"] == 2 and len(report["failed"]) == 1
    failed = report["failed"][0]
    assert failed["path"] == f"{manifest}:3" and "row 2 refused" in failed["reason"] and "'<'" in failed["reason"]


def test_search_filters_ignore_case_and_refuse_unknown_values(env, public_sample: Path) -> None:
    assert runner.invoke(app, ["index", "--manifest", str(public_sample / "manifest.csv")]).exit_code == 0
    query = next((public_sample / "images" / "covid19").iterdir())

    def search(flt: str):  # noqa: ANN202
        return runner.invoke(app, ["search", str(query), "--k", "4", "--filter", flt, "--json"])

    exact = json.loads(search("label=normal").stdout)
    assert exact and json.loads(search("label=NORMAL").stdout) == exact
    unknown = search("label=pneumonia")
    assert unknown.exit_code == 1 and "no film has label 'pneumonia'; labels here: " in unknown.stderr
    assert "normal (6)" in unknown.stderr
