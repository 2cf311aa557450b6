"""Real DICOM instances for the PACS tests: pydicom-data's RG1 chest films in their stored encodings plus a JPEG-LS
one made here, and DX instances wrapped around cxr-public JPEGs (the JPEG bytes become the encapsulated pixel data,
so nothing is re-encoded). Every generated instance carries a patient name and id, for the privacy checks."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
RG1_FILES = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG1_UNCI.dcm")  # J2KI and UNCI share one UID
PHI_NAME_PREFIX = "Doe^Janet^Q"
PHI_ID_PREFIX = "MRN-7713-"


@dataclass(frozen=True)
class Instance:
    path: Path
    sop_uid: str
    patient_id: str | None


def rg1_instances(dicom_dir: Path, out: Path) -> list[Instance]:
    """The four RG1 files as stored (explicit VR, J2K lossless, J2K lossy) and a JPEG-LS lossless re-encoding of
    RG1_UNCR under a new UID."""
    out.mkdir(parents=True, exist_ok=True)
    found = []
    for name in RG1_FILES:
        ds = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True)
        found.append(Instance(dicom_dir / name, str(ds.SOPInstanceUID), str(ds.PatientID)))
    jls = out / "RG1_JLSL.dcm"
    if not jls.exists():
        ds = pydicom.dcmread(dicom_dir / "RG1_UNCR.dcm")
        ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["cxr-test-rg1-jls"])
        ds.save_as(jls, enforce_file_format=True)
    ds = pydicom.dcmread(jls, stop_before_pixels=True)
    found.append(Instance(jls, str(ds.SOPInstanceUID), str(ds.PatientID)))
    return found


def public_jpegs(cxr_public: Path, n: int) -> list[Path]:
    """The first `n` images of the public set's manifest (real chest films, 8-bit grey JPEG)."""
    with (cxr_public / "manifest.csv").open(newline="") as fh:
        rows = [r for _, r in zip(range(n), csv.DictReader(fh), strict=False)]
    return [cxr_public / r["path"] for r in rows]


def dx_from_jpeg(
    jpeg: Path,
    index: int,
    *,
    study_date: str = "20240105",
    encapsulated: bool = True,
    body_part: str = "CHEST",
    patient: int | None = None,
    seed: str = "cxr-test-dx",
) -> Dataset:
    """A DX For Presentation instance around a real JPEG: the JPEG itself as JPEG Baseline pixel data, or its
    decoded pixels uncompressed. UIDs are derived from (seed, index), so a rebuilt instance keeps its UID."""
    raw = jpeg.read_bytes()
    with Image.open(io.BytesIO(raw)) as img:
        grey = img.mode == "L"
        pixels = np.asarray(img.convert("L"))
    encapsulated = encapsulated and grey  # only a single-channel JPEG can be wrapped as MONOCHROME2 as is
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if encapsulated else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = DX_FOR_PRESENTATION
    uid = generate_uid(entropy_srcs=[seed, str(index)])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    pnum = index if patient is None else patient
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study", str(index)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series", str(index)])
    ds.PatientName = f"{PHI_NAME_PREFIX}{pnum:04d}"
    ds.PatientID = f"{PHI_ID_PREFIX}{pnum:04d}"
    ds.PatientBirthDate = "19610203"
    ds.PatientSex = "F"
    ds.PatientAge = "063Y"
    ds.AccessionNumber = f"ACC{index:06d}"
    ds.InstitutionName = "St Example Hospital"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = "101500"
    ds.Modality = "DX"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesNumber = ds.InstanceNumber = 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.BurnedInAnnotation = "NO"
    if encapsulated:
        ds.PixelData = encapsulate([raw])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = pixels.tobytes()
    return ds


def save(ds: Dataset, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def send(
    paths: list[Path],
    host: str,
    port: int,
    *,
    called: str,
    calling: str,
    nodelay: bool = True,
    dimse_timeout: float = 180,
    resend_lost: bool = False,
) -> dict[str, int]:
    """C-STORE the files in one association (each in its own transfer syntax); {SOP UID: status}, -1 where no
    answer came. With `resend_lost`, instances left unanswered are sent once more on a new association, as a
    modality retries: pynetdicom's requestor can lose a response that arrives very fast (its reactor takes it off
    the queue before send_c_store waits; pydicom/pynetdicom#875), then aborts after `dimse_timeout`."""
    datasets = [pydicom.dcmread(p) for p in paths]
    out = _send_once(datasets, host, port, called, calling, nodelay, dimse_timeout, keep_going=resend_lost)
    lost = [d for d in datasets if out.get(str(d.SOPInstanceUID), -1) == -1]
    if resend_lost and lost:
        out.update(_send_once(lost, host, port, called, calling, nodelay, dimse_timeout, keep_going=False))
    return out


def _send_once(  # noqa: PLR0913 - the association's parameters, passed through
    datasets: list,
    host: str,
    port: int,
    called: str,
    calling: str,
    nodelay: bool,
    dimse_timeout: float,
    *,
    keep_going: bool,
) -> dict[str, int]:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    # A loaded 2-core machine can take longer than pynetdicom's 30 s defaults to answer; real modalities wait too.
    ae.acse_timeout = ae.network_timeout = 180
    ae.dimse_timeout = dimse_timeout
    for pair in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(*pair)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionRefusedError(f"association {calling} -> {called}@{port} not established")
    if nodelay:  # as DCMTK-based senders do: without it, Nagle + delayed ACK stall each C-STORE ~40 ms
        import socket

        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        out = {}
        for d in datasets:
            if keep_going and not assoc.is_established:  # aborted after a lost answer: the rest is resent
                out[str(d.SOPInstanceUID)] = -1
                continue
            status = assoc.send_c_store(d)
            out[str(d.SOPInstanceUID)] = int(status.Status) if "Status" in status else -1
        return out
    finally:
        assoc.release()


def send_as_is(paths: list[Path], host: str, port: int, *, called: str, calling: str) -> dict[Path, int]:
    """C-STORE the files in one association byte for byte, as a modality forwards what it holds: the data set after
    the file meta is sent unparsed (pynetdicom's chunked mode), so a truncated or malformed one arrives as it is.
    {path: status}; -1 where the peer answered no status."""
    from pydicom.filereader import read_file_meta_info
    from pynetdicom import AE, _config

    metas = {p: read_file_meta_info(p) for p in paths}
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 180
    for pair in sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas.values()}):
        ae.add_requested_context(*pair)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionRefusedError(f"association {calling} -> {called}@{port} not established")
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        out = {}
        for path in paths:
            status = assoc.send_c_store(path)
            out[path] = int(status.Status) if "Status" in status else -1
        return out
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()


def echo(host: str, port: int, *, called: str, calling: str) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and status.Status == 0
    finally:
        assoc.release()
