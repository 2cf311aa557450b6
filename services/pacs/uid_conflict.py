"""Is an instance arriving under a SOP Instance UID the spool already holds the same instance again, or another one?

A SOP Instance UID names one image of one patient for good, yet broken modalities and merged PACS reuse UIDs. Keyed
on the UID, the spool would then silently replace one patient's film by another's. So a second arrival is compared
with the first on what the image *is*, not on its file bytes:

- the pixels: the stored pixel data element compared as stored (fast, no decoding), else decoded (so a resend in
  another transfer syntax, or a lossy film resent as its own decompressed pixels, is still the same image), plus
  the photometric interpretation where it inverts the image (MONOCHROME1);
- the patient: PatientID (its salted hash in what is recorded; a de-identified copy carries the pseudonym, which
  is the same for the same patient).

Headers may differ (a resend re-stamps dates, a de-identified copy is rewritten): that is still a resend. Anything
else is a conflict, decided here and handled by services/pacs/intake.py. When the pixels cannot be decoded to be
compared, that is a conflict too: keeping the first is always safe, replacing it never is without proof.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from services.index.payload import patient_hash


@dataclass(frozen=True)
class Image:
    """What is compared of one instance: its parsed data set and the hash of its stored pixel data element."""

    ds: Dataset
    pixel_sha256: str

    @classmethod
    def parse(cls, data: bytes) -> Image:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        blob = bytes(ds["PixelData"].value or b"") if "PixelData" in ds else b""
        return cls(ds, hashlib.sha256(blob).hexdigest())

    @property
    def patient_id(self) -> str:
        return str(self.ds.get("PatientID", "") or "").strip()

    def patient_hash(self, salt: bytes | None) -> str | None:
        """The salted patient hash (the payloads' `patient_hash`); None without an id or a salt."""
        if not self.patient_id or not salt:
            return None
        return patient_hash(self.patient_id, salt)

    def decoded_sha256(self) -> str:
        """Hash of the decoded pixels (shape, type and values) and of an inverting photometric interpretation."""
        arr = self.ds.pixel_array
        photometric = str(self.ds.get("PhotometricInterpretation", "")).strip().upper()
        h = hashlib.sha256(f"{arr.dtype.str}|{arr.shape}|{photometric == 'MONOCHROME1'}|".encode())
        h.update(memoryview(arr.tobytes()))
        return h.hexdigest()


@dataclass(frozen=True)
class Verdict:
    """`same` when the second arrival is a resend; else `reason` says what differs (no PHI)."""

    same: bool
    reason: str = ""


def compare(first: Image, second: Image) -> Verdict:
    """Whether `second` is the same instance as `first` (a resend) or a different one under the same UID."""
    if first.patient_id != second.patient_id:
        return Verdict(False, "another patient")
    if first.pixel_sha256 == second.pixel_sha256:
        return Verdict(True)
    try:
        same_pixels = first.decoded_sha256() == second.decoded_sha256()
    except Exception as exc:  # noqa: BLE001 - any codec failure: cannot prove sameness
        return Verdict(False, f"pixels that cannot be compared ({type(exc).__name__})")
    return Verdict(True) if same_pixels else Verdict(False, "other pixels")
