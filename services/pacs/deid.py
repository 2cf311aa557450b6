"""Optional de-identification of spooled copies: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

With `CXR_SPOOL_DEIDENTIFY=true` the receiver and the puller keep only a cleaned copy in the spool:
- the attributes of Table E.1-1 that identify a person, an institution, a device or a date are removed, or emptied
  where the IOD needs them present (Type 2); any other person name (PN) anywhere is emptied too;
- private attributes, overlays, curves and the icon image are removed; nested sequences are cleaned the same way;
- every instance UID (anything not under the DICOM root 1.2.840.10008) is replaced by `2.25.<HMAC-SHA256 of the UID
  under the patient salt>`, as RSNA CTP's @hashuid does: the same original UID always gives the same new UID, so a
  resend, a re-pull or another series of the same study stays consistent and idempotent;
- PatientID becomes the pseudonym `CXRPH-<patient hash>`, the salted HMAC that payloads already store; the payload
  builder recognises it, so de-identified copies, original files and queries all give one `patient_hash`
  (same-patient exclusion keeps working, and the raw id never reaches the spool);
- sex, age, size and weight are kept (a subset of the Retain Patient Characteristics Option): the search filters use
  sex and age; PatientAge is top-coded (every age of 90 or over becomes "090Y", services.ages);
- ProtocolName is removed (free text, often naming a site, a room or a person);
- the File Meta Information keeps only what links the file to its instance and says how to read it (FILE_META_KEPT:
  group length, version, SOP class, the new SOP instance UID, transfer syntax); ImplementationClassUID and
  ImplementationVersionName become those of the software writing the copy (pydicom), not the sender's build; all
  else (the source, sending and receiving AE titles and presentation addresses, private information and its creator
  UID) is removed;
- an instance that says BurnedInAnnotation YES is refused: this profile cannot clean pixels.
"""

from __future__ import annotations

import hashlib
import hmac
import io

import pydicom
from pydicom import __version_info__ as pydicom_version
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from services.ages import dicom_age
from services.index.payload import patient_pseudonym

DICOM_ROOT = "1.2.840.10008."
METHOD = "PS3.15 Annex E Basic Profile, Retain Patient Chars.; cxr"  # LO: at most 64

# Type 2 attributes the CR/DX/SC IODs need present: emptied (Z), not removed.
EMPTIED: frozenset[str] = frozenset(
    {
        "PatientName",
        "PatientBirthDate",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyID",
        "ContentDate",
        "ContentTime",
    }
)

# The rest of Table E.1-1 that CR/DX/SC instances carry (X, D or X/Z collapse to removal here).
REMOVED: frozenset[str] = frozenset(
    """
    AcquisitionComments AcquisitionContextSequence AcquisitionDate AcquisitionDateTime AcquisitionTime
    AcquisitionDeviceProcessingDescription AcquisitionProtocolDescription ActualHumanPerformersSequence
    AdditionalPatientHistory AdmissionID AdmittingDate AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription
    AdmittingTime Allergies AuthorObserverSequence BranchOfService CassetteID CommentsOnThePerformedProcedureStep
    ConfidentialityConstraintOnPatientDataDescription ContentCreatorName ContentCreatorIdentificationCodeSequence
    ContributionDescription CountryOfResidence CurrentPatientLocation CustodialOrganizationSequence
    DataSetTrailingPadding DerivationDescription DetectorID DeviceSerialNumber DigitalSignaturesSequence
    DischargeDiagnosisDescription DistributionAddress DistributionName EthnicGroup FrameComments GantryID
    GeneratorID GraphicAnnotationSequence HumanPerformerName HumanPerformerOrganization IconImageSequence
    IdentifyingComments ImageComments ImagePresentationComments ImagingServiceRequestComments Impressions
    InstanceCreationDate InstanceCreationTime InstitutionAddress InstitutionCodeSequence InstitutionName
    InstitutionalDepartmentName InsurancePlanIdentification IntendedRecipientsOfResultsIdentificationSequence
    InterpretationApproverSequence InterpretationAuthor InterpretationDiagnosisDescription InterpretationIDIssuer
    InterpretationRecorder InterpretationText InterpretationTranscriber IssuerOfAdmissionID IssuerOfPatientID
    IssuerOfServiceEpisodeID MedicalAlerts MedicalRecordLocator MilitaryRank ModifiedAttributesSequence
    ModifyingDeviceID ModifyingDeviceManufacturer NameOfPhysiciansReadingStudy NamesOfIntendedRecipientsOfResults
    Occupation OperatorIdentificationSequence OperatorsName OriginalAttributesSequence OrderCallbackPhoneNumber
    OrderEnteredBy OrderEntererLocation OtherPatientIDs OtherPatientIDsSequence OtherPatientNames PatientAddress
    PatientComments PatientState PatientTransportArrangements PatientBirthName PatientBirthTime
    PatientInstitutionResidence PatientInsurancePlanCodeSequence PatientMotherBirthName
    PatientPrimaryLanguageCodeSequence PatientPrimaryLanguageModifierCodeSequence PatientReligiousPreference
    PatientTelephoneNumbers PerformedLocation PerformedProcedureStepDescription PerformedProcedureStepID
    PerformedProcedureStepStartDate PerformedProcedureStepStartTime PerformedStationAETitle
    PerformedStationGeographicLocationCodeSequence PerformedStationName PerformedStationNameCodeSequence
    PerformingPhysicianIdentificationSequence PerformingPhysicianName PersonAddress PersonIdentificationCodeSequence
    PersonName PersonTelephoneNumbers PhysicianApprovingInterpretation PhysiciansReadingStudyIdentificationSequence
    PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence PlateID PreMedication PregnancyStatus ProtocolName
    ReasonForTheImagingServiceRequest ReasonForStudy ReferencedPatientAliasSequence ReferencedPatientSequence
    ReferencedPerformedProcedureStepSequence ReferencedStudySequence ReferringPhysicianAddress
    ReferringPhysicianIdentificationSequence ReferringPhysicianTelephoneNumbers RegionOfResidence
    RequestAttributesSequence RequestedContrastAgent RequestedProcedureComments RequestedProcedureDescription
    RequestedProcedureID RequestedProcedureLocation RequestingPhysician RequestingService ResponsibleOrganization
    ResponsiblePerson ResultsComments ResultsDistributionListSequence ResultsIDIssuer ReviewerName
    ScheduledHumanPerformersSequence ScheduledPatientInstitutionResidence
    ScheduledPerformingPhysicianIdentificationSequence ScheduledPerformingPhysicianName
    ScheduledProcedureStepDescription ScheduledProcedureStepEndDate ScheduledProcedureStepEndTime
    ScheduledProcedureStepLocation ScheduledProcedureStepStartDate ScheduledProcedureStepStartTime
    ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence ScheduledStationName
    ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle SeriesDate
    SeriesDescription SeriesTime ServiceEpisodeDescription ServiceEpisodeID SmokingStatus SourceImageSequence
    SpecialNeeds StationName StudyComments StudyDescription StudyIDIssuer TextComments TextString
    TimezoneOffsetFromUTC TopicAuthor TopicKeywords TopicSubject TopicTitle VerifyingObserverIdentificationCodeSequence
    VerifyingObserverName VerifyingObserverSequence VerifyingOrganization VisitComments
    """.split()  # noqa: SIM905 - a word list reads like the standard's table
)


# File Meta Information elements kept as they are; the two Implementation ones are rewritten, the rest removed.
FILE_META_KEPT: frozenset[str] = frozenset(
    {
        "FileMetaInformationGroupLength",
        "FileMetaInformationVersion",
        "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID",  # replaced by the new SOPInstanceUID
        "TransferSyntaxUID",
    }
)


class BurnedInAnnotationError(ValueError):
    """The instance says its pixels carry burned-in text, which this profile cannot remove."""


class Deidentifier:
    """Cleans data sets in place; UIDs and the patient pseudonym are keyed by `salt` (the patient salt)."""

    def __init__(self, salt: bytes) -> None:
        if not salt:
            raise ValueError("de-identification needs the patient salt: hashed UIDs without a key can be reversed")
        self._salt = salt

    def uid(self, original: str) -> str:
        """The replacement for one instance UID: the same input always gives the same output (<= 44 chars)."""
        digest = hmac.new(self._salt, b"uid:" + original.strip().encode(), hashlib.sha256).digest()
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    def apply(self, ds: Dataset) -> Dataset:
        """De-identify `ds` (and its file meta) in place and return it."""
        if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
            raise BurnedInAnnotationError("BurnedInAnnotation is YES; pixel data cannot be de-identified")
        pseudonym = patient_pseudonym(str(ds.get("PatientID", "") or ""), self._salt) or ""
        self._clean(ds)
        ds.PatientID = pseudonym
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        codes = []
        for value, meaning in (
            ("113100", "Basic Application Confidentiality Profile"),
            ("113108", "Retain Patient Characteristics Option"),
        ):
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(codes)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            self._clean_file_meta(meta)
            if "SOPInstanceUID" in ds:
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    @staticmethod
    def _clean_file_meta(meta: Dataset) -> None:
        for elem in list(meta):
            if elem.keyword not in FILE_META_KEPT:
                del meta[elem.tag]
        # Type 1: present, naming the writer of this copy (pydicom's defaults), not the sender's site build.
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"PYDICOM {'.'.join(pydicom_version)}"

    def _clean(self, ds: Dataset) -> None:
        ds.remove_private_tags()
        for elem in list(ds):
            group = elem.tag.group
            if 0x5000 <= group <= 0x50FF or (0x6000 <= group <= 0x60FF and elem.tag.element in (0x3000, 0x4000)):
                del ds[elem.tag]  # curves, overlay data and comments: may hold burned-in text
                continue
            keyword = elem.keyword
            if keyword in REMOVED:
                del ds[elem.tag]
            elif keyword in EMPTIED or elem.VR == "PN":
                elem.value = None
            elif keyword == "PatientAge":
                elem.value = dicom_age(str(elem.value or ""))  # 90 and over: one band; unreadable: emptied
            elif elem.VR == "UI" and elem.value:
                elem.value = self._uids(elem.value)
            elif elem.VR == "SQ":
                for item in elem.value:
                    self._clean(item)

    def _uids(self, value: object) -> object:
        values = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        out = [v if str(v).startswith(DICOM_ROOT) else self.uid(str(v)) for v in values]
        return out if len(out) != 1 else out[0]


def deidentify_bytes(deid: Deidentifier, data: bytes) -> tuple[bytes, str]:
    """A de-identified copy of the DICOM file `data` and its new SOP Instance UID, written like the original (same
    transfer syntax, pixels as sent). BurnedInAnnotationError, or the reader's error for a file it cannot parse."""
    ds = pydicom.dcmread(io.BytesIO(data), force=False)
    deid.apply(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue(), str(ds.SOPInstanceUID)
