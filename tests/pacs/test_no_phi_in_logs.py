"""No patient data in any log line: an export folder named after a patient and DICOM headers full of PHI go through
`cxr index` (inline), a C-STORE into the receiver, the indexing of what it received and `cxr search`, and every line
they write is read back. Subprocesses: their whole stdout and stderr (with CXR_DEBUG=1); in-process parts (the
receiver and the pynetdicom sender, the inline indexing of the spool, a search through the CLI): every log record at
DEBUG, pynetdicom's included."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

from pydicom.dataset import Dataset

from services.pacs.acceptance import NOT_A_CHEST_RADIOGRAPH, SUCCESS
from services.pacs.intake import Intake
from services.pacs.receiver import Receiver, ReceiverConfig
from services.pacs.spool import Spool
from services.pipeline.ledger import Ledger
from tests.pacs.conftest import REPO, index_inline, pacs_env, stored_payloads
from tests.pacs.dicom_factory import dx_from_jpeg, public_jpegs, save, send
from tests.services import free_port

FOLDER = "DOE^JOHN_19600101_MRN12345"
# Case-sensitive: "DOE" must not match "does", as an upper-cased comparison would.
PHI = ("DOE^JOHN", "DOE", "JOHN", "19600101", "MRN12345", "ACC-55231", "Mercy General", "Kildare^James", "Mercy DR2")


def _phi_dicom(jpeg: Path, index: int, folder: Path, *, body_part: str = "CHEST") -> Path:
    ds: Dataset = dx_from_jpeg(jpeg, index, seed="cxr-test-no-phi-logs", body_part=body_part)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JOHN", "MRN12345", "19600101"
    ds.AccessionNumber, ds.InstitutionName, ds.ReferringPhysicianName = "ACC-55231", "Mercy General", "Kildare^James"
    ds.StationName = "Mercy DR2"
    return save(ds, folder)


def _run(args: list[str], env: dict[str, str]) -> str:
    """A cxr command in its own process: stdout and stderr, both kept."""
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    return text


def _assert_no_phi(text: str, where: str) -> None:
    leaked = [part for part in PHI if part in text]
    assert not leaked, (
        f"{leaked} found in {where}: "
        + " | ".join(line for line in text.splitlines() if any(p in line for p in leaked))[:600]
    )


def test_index_receive_and_search_log_no_patient_data(
    pacs_settings, data_dir: Path, tiny_checkpoint: Path, cxr_public: Path, tmp_path: Path, caplog
) -> None:
    env = pacs_env(data_dir, tiny_checkpoint, debug=1)
    jpegs = public_jpegs(cxr_public, 6)
    export = tmp_path / "export" / FOLDER
    export.mkdir(parents=True)
    for i, jpeg in enumerate(jpegs[:3]):
        shutil.copy(jpeg, export / f"img_{i}{jpeg.suffix}")
    dicom = _phi_dicom(jpegs[3], 3, export)
    received = _phi_dicom(jpegs[4], 4, tmp_path / "to-send")
    query = _phi_dicom(jpegs[5], 5, tmp_path / "query")
    knee = _phi_dicom(jpegs[0], 6, tmp_path / "to-send", body_part="KNEE")  # refused: its warning is logged too
    for path in (dicom, received, query):
        assert b"DOE^JOHN" in path.read_bytes() and b"MRN12345" in path.read_bytes()

    index_out = _run(["index", str(tmp_path / "export")], env)
    assert "indexed 4" in index_out
    _assert_no_phi(index_out, "`cxr index` output")

    caplog.set_level(logging.DEBUG)  # the root logger: every library's records, pynetdicom's DEBUG ones too
    spool, ledger = Spool(pacs_settings.spool_path, min_free_mb=0), Ledger(pacs_settings.ledger_path)
    intake = Intake(spool, ledger, collection=pacs_settings.collection)
    cfg = ReceiverConfig(host="127.0.0.1", port=free_port(), allow_aets=("MODALITY",))
    with Receiver(intake, cfg) as rx:
        statuses = send([received, knee], "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
    assert sorted(statuses.values()) == [SUCCESS, NOT_A_CHEST_RADIOGRAPH]
    assert index_inline(pacs_settings)["indexed"] == 1
    assert len(stored_payloads(pacs_settings)) == 5
    assert "C-STORE" in caplog.text or "Store Request" in caplog.text  # the session was logged, at DEBUG
    _assert_no_phi(caplog.text, "the receiver's and the indexing's log records")

    search_out = _run(["search", str(query), "--k", "5", "--exclude-same-patient"], env)
    search_out += _run(["search", str(query), "--k", "5", "--json"], env)
    assert "img_0" in search_out or "img_1" in search_out  # the results were printed
    _assert_no_phi(search_out, "`cxr search` output")

    caplog.clear()
    from typer.testing import CliRunner

    from cli.main import app

    res = CliRunner().invoke(app, ["search", str(query), "--k", "5", "--exclude-same-patient"], env=env)
    assert res.exit_code == 0, res.output
    _assert_no_phi(res.output + res.stderr, "an in-process `cxr search`'s output")
    _assert_no_phi(caplog.text, "an in-process `cxr search`'s log records")
