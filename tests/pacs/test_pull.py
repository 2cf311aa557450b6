"""`cxr pacs pull` against a real Orthanc (DICOMweb plugin, authentication on): RG1 in J2K/JPEG-LS and DX films from
cxr-public go in by C-STORE, come out untranscoded in both modes, a rerun fetches nothing, the cursor never skips."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from cli.main import app
from services.pacs.http import PacsAuth, PacsUnreachableError
from services.pacs.intake import Intake
from services.pacs.pull import pull
from services.pacs.pull_batch import PullOptions
from services.pacs.spool import Spool
from services.pipeline.ledger import Ledger, sop_key
from tests.pacs.conftest import dx_files, index_inline, ledger_keys, stored_payloads
from tests.pacs.dicom_factory import PHI_ID_PREFIX, PHI_NAME_PREFIX, send
from tests.services import OrthancServer, free_port

SCU = "TESTSCU"


def _load(orthanc: OrthancServer, paths: list[Path]) -> dict[str, int]:
    orthanc.add_modality("testscu", SCU, free_port())
    return send(paths, "127.0.0.1", orthanc.dicom_port, called=orthanc.aet, calling=SCU)


def _pull_cli(orthanc: OrthancServer, *args: str) -> dict:
    url = orthanc.dicomweb_url if "orthanc-changes" not in args else orthanc.url
    result = CliRunner().invoke(
        app,
        ["pacs", "pull", "--url", url, "--user", orthanc.user, "--no-dispatch", "--json", *args],
        env={"CXR_PACS_PASSWORD": orthanc.password},
    )
    assert result.exit_code in (0, 3), result.output
    return json.loads(result.stdout[result.stdout.index("{") :])


@pytest.fixture()
def loaded(clean_orthanc: OrthancServer, rg1, dicom_dir: Path, dx_dir: Path) -> dict[str, set[str]]:
    """Orthanc holding the RG1 film (4 instances, 3 encodings + JPEG-LS), the tibia, and 10 DX films."""
    dx = dx_files(dx_dir, 10)
    statuses = _load(clean_orthanc, [i.path for i in rg1] + [dicom_dir / "RG3_J2KR.dcm"] + dx)
    assert set(statuses.values()) == {0}
    chest = {i.sop_uid for i in rg1} | {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in dx}
    return {"chest": chest}


def test_dicomweb_pull_fetches_as_stored_then_a_rerun_fetches_nothing(
    pacs_settings, loaded, orthanc, rg1, caplog: pytest.LogCaptureFixture
):
    import logging

    caplog.set_level(logging.DEBUG)  # every logger, dicomweb-client's and urllib3's included
    chest = loaded["chest"]
    # page size 2: the StudyDate windows are split, and the busiest day is paged with overlapping pages
    first = _pull_cli(orthanc, "--page-size", "2", "--modality", "CR,DX")
    assert first["stored"] == len(chest) and first["failed"] == [] and first["complete"]
    assert first["refused"] >= 1  # the tibia's series is refused from its QIDO record, never fetched
    assert ledger_keys(pacs_settings) == {sop_key(u) for u in chest}
    spool = Spool(pacs_settings.spool_path)
    for inst in rg1:  # WADO-RS with transfer-syntax=*: J2K stays J2K, JPEG-LS stays JPEG-LS, pixels identical
        if inst.path.name == "RG1_J2KI.dcm":
            continue  # same UID as RG1_UNCI, sent after it: Orthanc keeps the last one stored
        kept, sent = pydicom.dcmread(spool.path_for(inst.sop_uid)), pydicom.dcmread(inst.path)
        assert kept.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert kept.PixelData == sent.PixelData
    again = _pull_cli(orthanc, "--page-size", "2", "--since", "2000-01-01")  # lists all again, fetches none
    assert again["fetched"] == 0 and again["stored"] == 0 and again["already"] == len(chest)
    by_cursor = _pull_cli(orthanc)  # no --since: from the cursor (the last complete scan's day, minus overlap)
    assert by_cursor["fetched"] == 0 and by_cursor["stored"] == 0 and by_cursor["cursor"] == first["cursor"]
    counts = index_inline(pacs_settings)
    assert counts["indexed"] == len(chest) and counts["failed"] == 0
    payloads = stored_payloads(pacs_settings)
    uids = [p["sop_uid"] for p in payloads]
    assert sorted(uids) == sorted(chest)  # the set sent equals the set indexed, no duplicates
    text = json.dumps(payloads) + caplog.text
    assert "QIDO" in caplog.text or "dicomweb" in caplog.text  # the pull did log
    assert orthanc.password not in caplog.text
    assert PHI_NAME_PREFIX not in text and PHI_ID_PREFIX not in text and "CompressedSamples" not in text


def test_orthanc_changes_never_skip_a_failed_change_and_resume_in_order(pacs_settings, loaded, orthanc):
    chest = loaded["chest"]
    opts = PullOptions(url=orthanc.url, mode="orthanc-changes", auth=PacsAuth(*orthanc.auth), page_size=3)
    ledger = Ledger(pacs_settings.ledger_path)
    full = Intake(Spool(pacs_settings.spool_path, min_free_mb=10**9), ledger, collection="cxr")
    blocked = pull(full, opts)  # the spool refuses every write: the first instance fails, transiently
    assert not blocked.complete and blocked.stored == 0
    assert [f.permanent for f in blocked.failed] == [False]
    first_instance = orthanc.rest("GET", "/changes", params={"since": 0, "limit": 100}).json()["Changes"][0]
    assert first_instance["ChangeType"] == "NewInstance"
    assert int(ledger.cursor("orthanc-changes:" + orthanc.url) or 0) < first_instance["Seq"]  # not skipped
    intake = Intake(Spool(pacs_settings.spool_path, min_free_mb=0), ledger, collection="cxr")
    done = pull(intake, opts)
    assert done.complete and done.failed == [] and done.refused == 1  # the tibia
    assert ledger_keys(pacs_settings) == {sop_key(u) for u in chest}
    assert int(done.cursor) == orthanc.rest("GET", "/changes", params={"last": ""}).json()["Last"]
    rerun = pull(intake, opts)
    assert rerun.listed == 0 and rerun.fetched == 0 and rerun.stored == 0


def test_orthanc_changes_via_the_cli_with_a_modality_filter(pacs_settings, loaded, orthanc, rg1):
    out = _pull_cli(orthanc, "--mode", "orthanc-changes", "--modality", "CR")
    assert out["stored"] == len({i.sop_uid for i in rg1}) and out["failed"] == []  # the DX films are not asked for
    again = _pull_cli(orthanc, "--mode", "orthanc-changes", "--modality", "CR")
    assert again["listed"] == 0 and again["stored"] == 0


def test_a_pacs_that_does_not_answer_is_retried_then_reported(pacs_settings):
    intake = Intake(Spool(pacs_settings.spool_path, min_free_mb=0), Ledger(pacs_settings.ledger_path), collection="cxr")
    opts = PullOptions(
        url=f"http://127.0.0.1:{free_port()}", mode="orthanc-changes", retries=2, backoff_s=0.01, timeout_s=1
    )
    with pytest.raises(PacsUnreachableError, match="after 3 tries"):
        pull(intake, opts)
    assert ledger_keys(pacs_settings) == set()


def test_credentials_are_required_by_this_orthanc(pacs_settings, clean_orthanc):
    intake = Intake(Spool(pacs_settings.spool_path, min_free_mb=0), Ledger(pacs_settings.ledger_path), collection="cxr")
    from services.pacs.http import PacsHttpError

    with pytest.raises(PacsHttpError, match="401"):
        pull(intake, PullOptions(url=clean_orthanc.url, mode="orthanc-changes", retries=0))


def test_a_pull_into_a_second_collection_lands_there(pacs_settings, loaded, orthanc):
    """Instances already pulled (and indexed) into one collection are pulled into another: the ledger keeps an item
    per collection, the spool one file per instance."""
    chest = loaded["chest"]
    first = _pull_cli(orthanc, "--modality", "CR,DX")
    assert first["stored"] == len(chest)
    assert index_inline(pacs_settings)["indexed"] == len(chest)
    spooled = sorted(Spool(pacs_settings.spool_path).instances())

    second = _pull_cli(orthanc, "--modality", "CR,DX", "--since", "2000-01-01", "--collection", "pacs")
    assert second["stored"] == len(chest) and second["already"] == 0 and second["failed"] == []
    assert sorted(Spool(pacs_settings.spool_path).instances()) == spooled  # the same files serve both
    again = _pull_cli(orthanc, "--modality", "CR,DX", "--since", "2000-01-01", "--collection", "pacs")
    assert again["stored"] == 0 and again["already"] == len(chest)  # idempotent within the collection
    counts = index_inline(pacs_settings)
    assert counts["indexed"] == 2 * len(chest) and counts["failed"] == 0
    pacs = pacs_settings.model_copy(update={"collection": "pacs"})
    assert sorted(p["sop_uid"] for p in stored_payloads(pacs)) == sorted(chest)
    assert sorted(p["sop_uid"] for p in stored_payloads(pacs_settings)) == sorted(chest)  # the first is untouched
