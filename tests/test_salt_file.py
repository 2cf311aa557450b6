"""The patient-hash salt file: created 0600 whatever the umask, whole or not at all, one salt for racing first
callers, and a warning (once per process) when an existing one is readable by its group or others."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from services.config import Settings


@pytest.fixture()
def open_umask():  # noqa: ANN201
    """A permissive umask, as a service account often has: a plain open() would make a 0666 file."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_a_new_salt_file_is_0600_whatever_the_umask(data_dir: Path, open_umask: None) -> None:
    salt = Settings().salt
    path = data_dir / "patient_salt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().strip() == salt and len(salt) == 64
    assert sorted(p.name for p in data_dir.iterdir()) == ["patient_salt"]  # no temporary file left behind


def test_racing_first_callers_agree_on_one_salt(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    start = threading.Barrier(8)
    salts: list[bytes] = []

    def first_call() -> None:
        settings = Settings()
        start.wait()
        salts.append(settings.salt)

    threads = [threading.Thread(target=first_call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(salts) == 8 and len(set(salts)) == 1 and len(salts[0]) == 64
    assert sorted(p.name for p in data_dir.iterdir()) == ["patient_salt"]


@pytest.mark.parametrize(("mode", "who"), [(0o644, "its group and others"), (0o640, "its group"), (0o604, "others")])
def test_a_readable_salt_file_is_warned_about_once(
    data_dir: Path, caplog: pytest.LogCaptureFixture, mode: int, who: str
) -> None:
    data_dir.mkdir(parents=True)
    path = data_dir / "patient_salt"
    path.write_text("ab" * 32)
    path.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="cxr.config"):
        assert Settings().salt == b"ab" * 32
        assert Settings().salt == b"ab" * 32  # a second Settings in the same process: no second warning
    warnings = [r for r in caplog.records if r.name == "cxr.config"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert f"readable by {who}" in warnings[0].getMessage() and "chmod 600" in warnings[0].getMessage()
    assert "ab" * 32 not in warnings[0].getMessage()  # the salt itself is never logged


def test_a_private_or_configured_salt_is_not_warned_about(
    data_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.DEBUG, logger="cxr.config"):
        Settings().salt  # noqa: B018 - creates it, 0600
        Settings().salt  # noqa: B018 - reads it back
        monkeypatch.setenv("CXR_PATIENT_SALT", "pepper")
        assert Settings().salt == b"pepper"
    assert not [r for r in caplog.records if r.name == "cxr.config"]
