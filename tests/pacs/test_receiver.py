"""The DICOM receiver against real pynetdicom senders: every encoding lands as sent, non-chest films and unknown
callers are refused, success means durable, a kill mid-association loses and duplicates nothing, no PHI in logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from services.pacs.acceptance import (
    BAD_SOP_INSTANCE_UID,
    CANNOT_UNDERSTAND,
    NOT_A_CHEST_RADIOGRAPH,
    OUT_OF_RESOURCES,
    SOP_CLASS_MISMATCH,
    SUCCESS,
)
from services.pacs.deid import Deidentifier
from services.pacs.intake import Intake
from services.pacs.receiver import Receiver, ReceiverConfig
from services.pacs.spool import Spool
from services.pipeline.ledger import Ledger, sop_key
from tests.pacs.conftest import (
    ReceiverProcess,
    dx_files,
    index_inline,
    ledger_keys,
    pacs_env,
    stored_payloads,
)
from tests.pacs.dicom_factory import PHI_ID_PREFIX, PHI_NAME_PREFIX, save, send, send_as_is
from tests.services import free_port


def _receiver(settings, *, min_free_mb: int = 0, deid: bool = False, dispatch=None) -> Receiver:  # noqa: ANN001
    spool = Spool(settings.spool_path, min_free_mb=min_free_mb)
    intake = Intake(
        spool,
        Ledger(settings.ledger_path),
        collection=settings.collection,
        deidentifier=Deidentifier(settings.salt) if deid else None,
    )
    cfg = ReceiverConfig(host="127.0.0.1", port=free_port(), allow_aets=("MODALITY", "ORTHANC"))
    return Receiver(intake, cfg, dispatch=dispatch)


def test_every_rg1_encoding_is_stored_as_sent_and_the_tibia_is_refused(pacs_settings, rg1, dicom_dir: Path):
    with _receiver(pacs_settings) as rx:
        statuses = send(
            [i.path for i in rg1] + [dicom_dir / "RG3_J2KR.dcm"], "127.0.0.1", rx.port, called="CXR", calling="MODALITY"
        )
    tibia = str(pydicom.dcmread(dicom_dir / "RG3_J2KR.dcm", stop_before_pixels=True).SOPInstanceUID)
    assert statuses.pop(tibia) == NOT_A_CHEST_RADIOGRAPH
    assert set(statuses.values()) == {SUCCESS}
    uids = {i.sop_uid for i in rg1}
    assert len(uids) == 4  # RG1_J2KI and RG1_UNCI are one instance, stored once
    assert ledger_keys(pacs_settings) == {sop_key(u) for u in uids}
    spool = Spool(pacs_settings.spool_path)
    assert {p.stem for p in spool.instances()} == uids
    for inst in rg1:  # the sender's transfer syntax and pixel bytes are kept (never transcoded); J2KI/UNCI: last wins
        if inst.path.name == "RG1_J2KI.dcm":
            continue
        kept = pydicom.dcmread(spool.path_for(inst.sop_uid))
        sent = pydicom.dcmread(inst.path)
        assert kept.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert kept.PixelData == sent.PixelData
    assert rx.stats.stored == 5 and rx.stats.duplicates == 1


def test_unknown_calling_ae_and_wrong_called_ae_are_rejected_at_association(pacs_settings, rg1):
    from pynetdicom import AE

    with _receiver(pacs_settings) as rx:
        for calling, called in (("STRANGER", "CXR"), ("MODALITY", "NOT-CXR")):
            ae = AE(ae_title=calling)
            ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1")
            assoc = ae.associate("127.0.0.1", rx.port, ae_title=called)
            assert assoc.is_rejected and not assoc.is_established
        assert rx.stats.rejected_associations == 2
        with pytest.raises(ConnectionRefusedError):
            send([rg1[0].path], "127.0.0.1", rx.port, called="CXR", calling="STRANGER")
    assert ledger_keys(pacs_settings) == set()
    assert list(Spool(pacs_settings.spool_path).instances()) == []


def test_a_full_spool_answers_a700_and_records_nothing(pacs_settings, dx_dir: Path):
    with _receiver(pacs_settings, min_free_mb=10**9) as rx:  # a watermark no disk meets
        statuses = send(dx_files(dx_dir, 3), "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
    assert set(statuses.values()) == {OUT_OF_RESOURCES}
    assert ledger_keys(pacs_settings) == set()
    assert list(Spool(pacs_settings.spool_path).instances()) == []


def test_a_request_naming_another_instance_than_its_data_set_gets_a900(
    pacs_settings, dx_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """A C-STORE whose command names one instance (AffectedSOPInstanceUID) while its data set is another
    (SOPInstanceUID) is refused 0xA900 and nothing of it is kept; the same data set sent under its own UID lands.
    The sender is a real pynetdicom peer sending files as they are: its command takes the file meta's UID."""
    from pydicom.filereader import read_file_meta_info

    caplog.set_level(logging.WARNING, logger="cxr.pacs")
    ds = pydicom.dcmread(dx_files(dx_dir, 1)[0])
    uid = str(ds.SOPInstanceUID)
    right = save(ds, tmp_path / "right")
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["cxr-test", "another instance"])
    wrong = tmp_path / "wrong.dcm"
    ds.save_as(wrong, enforce_file_format=False)  # as a broken sender keeps it: the meta is written as it is
    assert str(read_file_meta_info(wrong).MediaStorageSOPInstanceUID) != uid  # what the command will say
    assert str(pydicom.dcmread(wrong, stop_before_pixels=True).SOPInstanceUID) == uid
    with _receiver(pacs_settings) as rx:
        statuses = send_as_is([wrong, right], "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
    assert statuses == {wrong: SOP_CLASS_MISMATCH, right: SUCCESS}
    assert ledger_keys(pacs_settings) == {sop_key(uid)}
    assert [p.stem for p in Spool(pacs_settings.spool_path).instances()] == [uid]
    assert rx.stats.failed == {SOP_CLASS_MISMATCH: 1} and rx.stats.stored == 1
    assert f"data set SOPInstanceUID {uid} differs from request" in caplog.text


def test_bytes_that_are_not_dicom_or_lack_a_uid_get_c000_range_answers(pacs_settings, dx_dir: Path):
    intake = Intake(Spool(pacs_settings.spool_path, min_free_mb=0), Ledger(pacs_settings.ledger_path), collection="cxr")
    assert intake.accept(b"\x00" * 300 + b"not dicom", origin="receiver").status == CANNOT_UNDERSTAND
    ds = pydicom.dcmread(dx_files(dx_dir, 1)[0])
    import io
    import warnings

    with warnings.catch_warnings():  # pydicom notes the malformed UID a broken modality sends, as it should
        warnings.filterwarnings("ignore", message="Invalid value for VR UI", category=UserWarning)
        ds.SOPInstanceUID = "1.2.3.abc"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=False)
        assert intake.accept(buf.getvalue(), origin="receiver").status == BAD_SOP_INSTANCE_UID
    assert ledger_keys(pacs_settings) == set()


def test_receiving_goes_on_while_the_broker_is_down_and_logs_hold_no_phi(
    pacs_settings, dx_dir: Path, caplog: pytest.LogCaptureFixture
):
    from workers.dispatch import make_dispatcher

    # the real dispatcher, pointed at a port where no Redis listens
    down = pacs_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "broker_timeout_s": 0.5})
    caplog.set_level(logging.DEBUG)
    files = dx_files(dx_dir, 8)
    rx = _receiver(pacs_settings, dispatch=make_dispatcher(down))
    with rx:
        statuses = send(files, "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
        rx.trigger.fire()  # one dispatch now (the trigger thread also tries after the debounce)
    assert set(statuses.values()) == {SUCCESS}
    assert rx.trigger.calls >= 1
    counts = Ledger(pacs_settings.ledger_path).counts()
    assert counts["received"] == len(files) and counts["queued"] == 0  # nothing lost, waiting for the broker
    text = caplog.text
    assert "C-STORE" in text or "stored" in text or "receiver" in text  # the log did record the session
    assert PHI_NAME_PREFIX not in text and PHI_ID_PREFIX not in text and "Doe" not in text


def test_deidentified_spool_keeps_no_phi_and_the_patient_hash_of_the_original(pacs_settings, dx_dir: Path):
    from services.index.payload import patient_hash

    files = dx_files(dx_dir, 4)
    originals = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    with _receiver(pacs_settings, deid=True) as rx:
        first = send(files, "127.0.0.1", rx.port, called="CXR", calling="MODALITY")
        again = send(files, "127.0.0.1", rx.port, called="CXR", calling="MODALITY")  # a resend: same names
    assert set(first.values()) == set(again.values()) == {SUCCESS}
    kept = sorted(Spool(pacs_settings.spool_path).instances())
    assert len(kept) == len(files)
    deid = Deidentifier(pacs_settings.salt)
    assert {p.stem for p in kept} == {deid.uid(str(o.SOPInstanceUID)) for o in originals}
    for path in kept:
        raw = path.read_bytes()
        assert PHI_NAME_PREFIX.encode() not in raw and PHI_ID_PREFIX.encode() not in raw
        assert b"St Example Hospital" not in raw and b"House^Gregory" not in raw
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and ds.StudyInstanceUID.startswith("2.25.")
        assert ds.PatientSex == "F" and ds.PatientAge == "063Y"  # kept: the search filters use them
    index_inline(pacs_settings)
    hashes = {p["patient_hash"] for p in stored_payloads(pacs_settings)}
    assert hashes == {patient_hash(str(o.PatientID), pacs_settings.salt) for o in originals}


def test_receiver_killed_mid_association_then_resent_gives_one_point_per_uid(
    pacs_settings, data_dir: Path, tiny_checkpoint: Path, dx_dir: Path, tmp_path: Path
):
    from pynetdicom import AE

    files = dx_files(dx_dir, 30)
    datasets = [pydicom.dcmread(f) for f in files]
    env = pacs_env(data_dir, tiny_checkpoint)
    rx = ReceiverProcess(env, tmp_path, allow=("MODALITY",)).start()
    try:
        ae = AE(ae_title="MODALITY")
        for pair in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
            ae.add_requested_context(*pair)
        assoc = ae.associate("127.0.0.1", rx.port, ae_title="CXR")
        acked = []
        for d in datasets:
            if len(acked) == 12:
                rx.kill()  # SIGKILL while the association is open, between two C-STOREs
            if not assoc.is_established:
                break
            try:
                status = assoc.send_c_store(d)
            except RuntimeError:  # the peer vanished mid-request
                break
            if "Status" in status and status.Status == SUCCESS:
                acked.append(str(d.SOPInstanceUID))
        assert len(acked) == 12 and not assoc.is_established
        on_disk = ledger_keys(pacs_settings)
        assert {sop_key(u) for u in acked} <= on_disk  # every acknowledged instance survived the kill
        rx = ReceiverProcess(env, tmp_path, allow=("MODALITY",), port=rx.port).start()
        statuses = send(files, "127.0.0.1", rx.port, called="CXR", calling="MODALITY")  # the sender resends all
        assert set(statuses.values()) == {SUCCESS}
    finally:
        rx.stop()
    sent = {str(d.SOPInstanceUID) for d in datasets}
    assert ledger_keys(pacs_settings) == {sop_key(u) for u in sent}
    counts = index_inline(pacs_settings)
    assert counts["indexed"] == len(sent) and counts["failed"] == 0
    payloads = stored_payloads(pacs_settings)
    uids = [p["sop_uid"] for p in payloads]
    assert len(uids) == len(set(uids)) == len(sent) and set(uids) == sent  # one point per UID
    text = rx.text() + "".join(map(str, payloads))
    assert PHI_NAME_PREFIX not in text and PHI_ID_PREFIX not in text
