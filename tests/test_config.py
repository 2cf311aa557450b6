"""Settings: conflicting options are refused up front, and the example env file documents every knob."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli.options import load_settings
from services.config import OTHER_CXR_VARIABLES, Settings
from services.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_path_and_url_together_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("CXR_QDRANT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("CXR_QDRANT_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="choose the server or the embedded store"):
        Settings()


def test_salt_is_created_once_per_data_dir_and_kept(data_dir: Path):
    first = Settings().salt
    assert len(first) == 64 and Settings().salt == first
    assert (data_dir / "patient_salt").read_text().strip().encode() == first


def test_configured_salt_wins(data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CXR_PATIENT_SALT", "pepper")
    assert Settings().salt == b"pepper"


def test_env_example_lists_every_setting():
    text = (REPO / "deploy" / "cxr.env.example").read_text()
    listed = set(re.findall(r"^# ?(CXR_[A-Z0-9_]+)=", text, flags=re.M))
    assert listed == {f"CXR_{name.upper()}" for name in Settings.model_fields}


def test_misspelt_keyword_is_refused_with_the_close_match():
    with pytest.raises(ConfigError, match=re.escape("unknown setting colection (did you mean collection?)")):
        Settings(colection="x")
    with pytest.raises(ConfigError, match="unknown setting bach_size") as err:
        load_settings(bach_size=3)
    assert "services.config.Settings" in err.value.hint


def test_misspelt_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch, data_dir: Path):
    # pydantic-settings itself never reads a CXR_ variable that names no field, even with extra="forbid"
    monkeypatch.setenv("CXR_QDRANT_ULR", "http://qdrant:6333")
    with pytest.raises(ConfigError, match=re.escape("CXR_QDRANT_ULR (did you mean CXR_QDRANT_URL?)")) as err:
        Settings()
    assert "deploy/cxr.env.example" in err.value.hint


def test_cli_reports_an_unknown_variable_in_one_line(data_dir: Path):
    from typer.testing import CliRunner

    from cli.main import app

    res = CliRunner().invoke(app, ["failures"], env={"CXR_COLECTION": "x"})
    assert res.exit_code == 1
    assert "unknown environment variable CXR_COLECTION (did you mean CXR_COLLECTION?)" in res.stderr
    assert "Traceback" not in res.stderr


def test_cxr_variables_that_are_not_settings_are_accepted(monkeypatch: pytest.MonkeyPatch, data_dir: Path):
    for name in OTHER_CXR_VARIABLES:
        monkeypatch.setenv(name, "1")
    assert Settings().collection == "cxr"


def _cxr_names(path: Path) -> set[str]:
    """The CXR_ variables a file sets or reads: `CXR_X=` (and `CXR_X:` outside Python), and quoted names in Python."""
    text = path.read_text(errors="replace")
    if path.suffix != ".py":
        return set(re.findall(r"\b(CXR_[A-Z0-9_]+)\s*[:=]", text))
    return set(re.findall(r"\b(CXR_[A-Z0-9_]+)=", text)) | set(re.findall(r"[\"'](CXR_[A-Z0-9_]+)[\"']", text))


def test_every_cxr_variable_the_repository_sets_or_reads_is_known():
    known = {f"CXR_{name.upper()}" for name in Settings.model_fields} | OTHER_CXR_VARIABLES
    files = [REPO / "docker-compose.yml", REPO / "Makefile", *(REPO / "deploy").iterdir()]
    files += [p for d in ("services", "cli", "workers", "tests", "benchmarks") for p in (REPO / d).rglob("*.py")]
    unknown = {
        f"{path.relative_to(REPO)}: {name}"
        for path in files
        if path.is_file() and path != Path(__file__).resolve()
        for name in _cxr_names(path) - known
    }
    assert not unknown


def test_queue_tests_environment_holds_only_settings(tmp_path: Path):
    from tests.workers.conftest import queue_env, settings_of

    env = queue_env(tmp_path, "redis://127.0.0.1:1/0", tmp_path / "model", queue_batch_size=4)
    assert settings_of(env).queue_batch_size == 4
