"""Settings: conflicting options are refused up front, and the example env file documents every knob."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.config import Settings
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
