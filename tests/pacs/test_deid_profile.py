"""The de-identifier against PS3.15 Annex E: a DX instance filled with PHI in its data set, a nested sequence, private
tags and its File Meta Information comes out with every attribute handled as Table E.1-1 (Basic Profile with the
Retain Patient Characteristics Option) allows, nothing kept that is not listed here, and no PHI left in the file."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from services.pacs.deid import EMPTIED, FILE_META_KEPT, REMOVED, Deidentifier
from tests.pacs.dicom_factory import dx_from_jpeg, public_jpegs

SALT = b"annex-e-test-salt"

# Our action for each Table E.1-1 attribute the test instance carries, one of those the table permits (its code in
# the comment). X remove, Z present and empty, D a dummy (the pseudonym), U a keyed UID, K kept (Retain Patient
# Characteristics Option), A kept top-coded (PatientAge: Safe Harbor's 90+ band inside the option).
ANNEX_E: dict[str, str] = {
    "AccessionNumber": "Z",  # Z
    "AcquisitionDateTime": "X",  # X/D
    "AdditionalPatientHistory": "X",  # X
    "ContentDate": "Z",  # Z/D
    "ContentTime": "Z",  # Z/D
    "DeviceSerialNumber": "X",  # X/Z/D
    "FrameOfReferenceUID": "U",  # U
    "ImageComments": "X",  # X
    "InstitutionAddress": "X",  # X
    "InstitutionName": "X",  # X/Z/D
    "IssuerOfPatientID": "X",  # X
    "OperatorsName": "X",  # X/Z/D
    "OtherPatientIDsSequence": "X",  # X
    "PatientAddress": "X",  # X
    "PatientAge": "A",  # X; K with Retain Patient Characteristics
    "PatientBirthDate": "Z",  # Z
    "PatientBirthName": "X",  # X
    "PatientID": "D",  # Z (a dummy value is allowed)
    "PatientMotherBirthName": "X",  # X
    "PatientName": "Z",  # Z
    "PatientSex": "K",  # Z; K with Retain Patient Characteristics
    "PatientSize": "K",  # X; K with Retain Patient Characteristics
    "PatientTelephoneNumbers": "X",  # X
    "PatientWeight": "K",  # X; K with Retain Patient Characteristics
    "PerformingPhysicianName": "X",  # X
    "ProtocolName": "X",  # X/D (C only with Retain Safe Private / Description options, not used)
    "ReferencedImageSequence": "U",  # X/Z/U*: kept, UIDs inside replaced (its item: NESTED)
    "ReferringPhysicianName": "Z",  # Z
    "RequestingPhysician": "X",  # X
    "SeriesDate": "X",  # X/D
    "SeriesDescription": "X",  # X
    "SeriesInstanceUID": "U",  # U
    "SeriesTime": "X",  # X/D
    "SOPInstanceUID": "U",  # U
    "StationName": "X",  # X/Z/D
    "StudyDate": "Z",  # Z
    "StudyDescription": "X",  # X
    "StudyID": "Z",  # Z
    "StudyInstanceUID": "U",  # U
    "StudyTime": "Z",  # Z
}

# The item of ReferencedImageSequence: cleaned as the top level is.
NESTED: dict[str, str] = {
    "ReferencedSOPInstanceUID": "U",  # U
    "OperatorsName": "X",  # X/Z/D
    "PerformingPhysicianName": "X",  # X
}

# File Meta Information (group 0002). Table E.1-1 lists only MediaStorageSOPInstanceUID (U); we keep the rest that
# links the file to its instance and says how to read it, rename the writer, and remove everything else.
FILE_META: dict[str, str] = {
    "FileMetaInformationGroupLength": "K",
    "FileMetaInformationVersion": "K",
    "MediaStorageSOPClassUID": "K",
    "MediaStorageSOPInstanceUID": "U",
    "TransferSyntaxUID": "K",
    "ImplementationClassUID": "W",  # W: the writer of the copy (pydicom), not the sender's site build
    "ImplementationVersionName": "W",
    "SourceApplicationEntityTitle": "X",
    "SendingApplicationEntityTitle": "X",
    "ReceivingApplicationEntityTitle": "X",
    "SourcePresentationAddress": "X",
    "PrivateInformationCreatorUID": "X",
    "PrivateInformation": "X",
}

# Every attribute the profile keeps that Table E.1-1 does not list: image description, pixels and coded values that
# name no person, place, device or date, and the attributes that record the de-identification itself.
NOT_IN_TABLE: frozenset[str] = frozenset(
    """
    SOPClassUID Modality BodyPartExamined ViewPosition PresentationIntentType ImageType SeriesNumber InstanceNumber
    Rows Columns SamplesPerPixel PhotometricInterpretation BitsAllocated BitsStored HighBit PixelRepresentation
    PixelIntensityRelationship PixelIntensityRelationshipSign RescaleIntercept RescaleSlope RescaleType
    BurnedInAnnotation PixelData LossyImageCompression ReferencedSOPClassUID
    PatientIdentityRemoved DeidentificationMethod DeidentificationMethodCodeSequence
    CodeValue CodingSchemeDesignator CodeMeaning
    """.split()  # noqa: SIM905
)

# Free-text PHI put into the instance; none may be left anywhere in the written file.
PHI = {
    "AcquisitionDateTime": "20240105101500",
    "AdditionalPatientHistory": "Smoker, lives at 12 Elm Street",
    "ContentTime": "101533",
    "DeviceSerialNumber": "SN-DEVICE-4471",
    "FrameOfReferenceUID": "1.2.826.0.1.3680043.99.777.1",
    "ImageComments": "Patient Jane Roe, bed 12",
    "InstitutionAddress": "1 Hospital Road, Springfield",
    "IssuerOfPatientID": "SPRINGFIELD-GH",
    "OperatorsName": "Tech^Terry",
    "PatientAddress": "12 Elm Street",
    "PatientBirthName": "Roe^Jane",
    "PatientMotherBirthName": "Smith^Mary",
    "PatientTelephoneNumbers": "555-0199",
    "PerformingPhysicianName": "Quinn^Michaela",
    "ProtocolName": "CHEST PA Dr Quinn Room 3 Springfield",
    "RequestingPhysician": "Welby^Marcus",
    "SeriesDescription": "Chest PA for Jane Roe",
    "SeriesTime": "101501",
    "StationName": "SPRINGFIELD-DR3",
    "StudyDescription": "Follow-up Jane Roe",
    "StudyID": "STUDY-8812",
}
META_PHI = {
    "SourceApplicationEntityTitle": "SPRINGFLD_DR3",
    "SendingApplicationEntityTitle": "SPRINGFLD_GW",
    "ReceivingApplicationEntityTitle": "SPRINGFLD_PACS",
    "SourcePresentationAddress": "dicom://10.20.30.40:104",
    "ImplementationVersionName": "SPRINGFLD_V1",
    "PrivateInformationCreatorUID": "1.2.826.0.1.3680043.99.777.2",
}


def _phi_instance(cxr_public: Path) -> Dataset:
    ds = dx_from_jpeg(public_jpegs(cxr_public, 1)[0], 0, seed="cxr-test-annex-e")  # name, id, birth date, ...
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.PatientAge, ds.PatientSize, ds.PatientWeight = "093Y", 1.62, 58
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "OTHER-ID-5521", "OTHER-ISSUER"
    ds.OtherPatientIDsSequence = Sequence([other])
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.99.777.3"
    ref.OperatorsName = "Nested^Operator"
    ref.PerformingPhysicianName = "Nested^Physician"
    ds.ReferencedImageSequence = Sequence([ref])
    block = ds.private_block(0x0029, "SPRINGFIELD PACS", create=True)
    block.add_new(0x10, "LO", "private note: Jane Roe")
    for keyword, value in META_PHI.items():
        setattr(ds.file_meta, keyword, value)
    ds.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.99.777"
    ds.file_meta.PrivateInformation = b"SPRINGFIELD"
    return ds


def _check(elem_keyword: str, action: str, before: Dataset, after: Dataset, deid: Deidentifier) -> None:
    original = before[elem_keyword].value
    if action == "X":
        assert elem_keyword not in after, elem_keyword
        return
    assert elem_keyword in after, elem_keyword
    value = after[elem_keyword].value
    if action == "Z":
        assert value in (None, "", b""), (elem_keyword, value)
    elif action == "D":
        assert value and value != original and str(value).startswith("CXRPH-")
    elif action == "U" and isinstance(original, str):
        assert value == deid.uid(original), elem_keyword
    elif action == "K":
        assert value == original, elem_keyword
    elif action == "A":
        assert value == "090Y", value  # 093Y: the 90+ band
    elif action == "W":
        assert value in (PYDICOM_IMPLEMENTATION_UID, f"PYDICOM {'.'.join(pydicom.__version_info__)}"), value


def _keywords(ds: Dataset) -> set[str]:
    """Every keyword in `ds`, nested items included (private elements as "private")."""
    out = set()
    for elem in ds:
        out.add(elem.keyword or ("private" if elem.tag.is_private else str(elem.tag)))
        if elem.VR == "SQ":
            for item in elem.value:
                out |= _keywords(item)
    return out


def test_a_phi_filled_instance_comes_out_as_annex_e_asks(cxr_public: Path, tmp_path: Path) -> None:
    before = _phi_instance(cxr_public)
    source = tmp_path / "phi.dcm"
    before.save_as(source, enforce_file_format=True)
    before = pydicom.dcmread(source)
    after = pydicom.dcmread(source)
    deid = Deidentifier(SALT)
    deid.apply(after)

    assert set(ANNEX_E) <= _keywords(before)  # the table is exercised, not vacuous
    for keyword, action in ANNEX_E.items():
        _check(keyword, action, before, after, deid)
    for keyword, action in NESTED.items():
        _check(keyword, action, before.ReferencedImageSequence[0], after.ReferencedImageSequence[0], deid)
    for keyword, action in FILE_META.items():
        assert keyword in before.file_meta, keyword
        _check(keyword, action, before.file_meta, after.file_meta, deid)
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID

    # Nothing survives that is not accounted for: each kept attribute is in the table with a keep-like action, or
    # in NOT_IN_TABLE; private elements, overlays and everything else are gone.
    kept = {k for k, a in {**ANNEX_E, **NESTED, **FILE_META}.items() if a != "X"}
    unexpected = (_keywords(after) | _keywords(after.file_meta)) - kept - NOT_IN_TABLE
    assert not unexpected, unexpected
    assert not (NOT_IN_TABLE & (REMOVED | EMPTIED))  # the kept list contradicts no rule of the profile
    assert not set(FILE_META) - FILE_META_KEPT - {k for k, a in FILE_META.items() if a in "XW"}

    out = tmp_path / "deid.dcm"
    after.save_as(out, enforce_file_format=True)
    data = out.read_bytes()
    secrets = [*PHI.values(), *META_PHI.values(), "Doe^Janet", "MRN-7713-", "19610203", "ACC000000"]
    secrets += ["St Example Hospital", "House^Gregory", "OTHER-ID-5521", "Nested^", "Jane Roe", "SPRINGFIELD", "093Y"]
    leaked = [s for s in secrets if s.encode() in data]
    assert not leaked, leaked
    reread = pydicom.dcmread(out)  # still a valid instance: the spool and the decoder read it
    assert reread.SOPInstanceUID == after.SOPInstanceUID and reread.PatientIdentityRemoved == "YES"
