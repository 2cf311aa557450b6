"""Send a built report (its Encapsulated PDF and Comprehensive SR) to the PACS: C-STORE to an AE, or STOW-RS to a
DICOMweb root, as `CXR_REPORT_DESTINATION` says.

- `dicom://AET@host:port`: one association from our AE title (`CXR_REPORT_AET`, default `CXR_DICOM_AET`) with
  the Encapsulated PDF and Comprehensive SR Storage contexts; both objects in it, each answered success.
- `http(s)://.../dicom-web`: one STOW-RS request with both objects, authenticated as the pull is (basic auth or a
  bearer token: `CXR_REPORT_USER`/`CXR_REPORT_PASSWORD` or `CXR_REPORT_TOKEN`), through services.pacs.http.

The report's UIDs are deterministic (services.reports), so a resend replaces what the PACS holds and never
duplicates. A failure raises `DestinationError`, whose `transient` says whether a later try may pass (refused
connection, timeout, 5xx, out of resources) or not (a 4xx, a C-STORE refusal of the object itself).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from services.config import Settings
from services.errors import ConfigError, PacsError

if TYPE_CHECKING:
    from pydicom import Dataset

    from services.reports.build import Report

log = logging.getLogger("cxr.reports")

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
EXPLICIT_VR_LE, IMPLICIT_VR_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


class DestinationError(PacsError):
    """The destination did not take the report. `transient`: worth trying again later."""

    default_hint = "Check CXR_REPORT_DESTINATION and that the PACS is up; `cxr retry` re-arms a failed report."

    def __init__(self, message: str, *, transient: bool, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.transient = transient


@dataclass(frozen=True)
class DicomDestination:
    """A Storage SCP: its AE title, host and port."""

    aet: str
    host: str
    port: int

    def describe(self) -> str:
        return f"dicom://{self.aet}@{self.host}:{self.port}"


@dataclass(frozen=True)
class WebDestination:
    """A DICOMweb root that takes STOW-RS."""

    url: str

    def describe(self) -> str:
        from services.pacs.http import redact

        return redact(self.url)


Destination = DicomDestination | WebDestination


def parse_destination(text: str) -> Destination:
    """`dicom://AET@host:port` or an http(s) URL; ConfigError (naming the expected forms) for anything else."""
    value = text.strip()
    hint = "Set CXR_REPORT_DESTINATION to dicom://AET@host:port or to an http(s) DICOMweb root (.../dicom-web)."
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.hostname:
        return WebDestination(value.rstrip("/"))
    if parts.scheme == "dicom":
        aet = (parts.username or "").strip()
        try:
            port = parts.port
        except ValueError:
            port = None
        if aet and len(aet) <= 16 and parts.hostname and port:
            return DicomDestination(aet, parts.hostname, port)
    raise ConfigError(f"CXR_REPORT_DESTINATION {value[:80]!r} is not a destination cxr can send to", hint)


def destination_of(settings: Settings) -> Destination | None:
    """The configured destination; None when reports are not sent automatically."""
    text = (settings.report_destination or "").strip()
    return parse_destination(text) if text else None


def send_report(report: Report, settings: Settings, destination: Destination | None = None) -> None:
    """Store the report's PDF and SR at `destination` (default: CXR_REPORT_DESTINATION); DestinationError when
    the destination does not take both."""
    from services.reports.build import require_query_study

    require_query_study(report)  # a PNG or JPEG query has no study in the PACS to go back to
    dest = destination or destination_of(settings)
    if dest is None:
        raise ConfigError("no report destination is configured", "Set CXR_REPORT_DESTINATION (see the README, PACS).")
    datasets = [report.pdf_dataset, report.sr_dataset]
    if isinstance(dest, DicomDestination):
        _c_store(datasets, dest, settings)
    else:
        _stow(datasets, dest, settings)
    log.info("report of %s stored at %s", report.query_sop_uid or "an image", dest.describe())


def _c_store(datasets: list[Dataset], dest: DicomDestination, settings: Settings) -> None:
    from pynetdicom import AE

    ae = AE(ae_title=settings.report_aet or settings.dicom_aet)
    timeout = settings.report_timeout_s
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    for sop_class in (ENCAPSULATED_PDF_STORAGE, COMPREHENSIVE_SR_STORAGE):
        ae.add_requested_context(sop_class, [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
    where = dest.describe()
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet)
    except OSError as exc:
        raise DestinationError(f"cannot reach {where} ({type(exc).__name__})", transient=True) from None
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "is down or did not answer the association request"
        # a rejection names our AE title as unknown (permanent for this object) or is a passing limit: retry both,
        # the attempt counter bounds it and `cxr failures` shows the reason
        raise DestinationError(
            f"{where} {why}",
            transient=True,
            hint="Register cxr's AE title at the PACS (Orthanc: DicomModalities) and check host and port.",
        )
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == -1:
                raise DestinationError(f"{where} did not answer the C-STORE", transient=True)
            if code != 0 and not 0xB000 <= code <= 0xBFFF:  # warnings (B0xx) stored it
                comment = str(getattr(status, "ErrorComment", "") or "")[:64]
                transient = 0xA700 <= code <= 0xA7FF
                raise DestinationError(
                    f"{where} refused the C-STORE: 0x{code:04X} {comment}".strip(), transient=transient
                )
    except (OSError, RuntimeError, ValueError) as exc:
        raise DestinationError(f"C-STORE to {where} failed ({type(exc).__name__}: {exc})", transient=True) from None
    finally:
        if assoc.is_established:
            assoc.release()


def report_auth(settings: Settings):  # noqa: ANN201 - services.pacs.http.PacsAuth
    """The STOW-RS credentials, checked like the pull's (user and password together, or a token)."""
    from services.pacs.http import PacsAuth

    password = settings.report_password.get_secret_value() if settings.report_password else None
    token = settings.report_token.get_secret_value() if settings.report_token else None
    return PacsAuth(user=settings.report_user, password=password, token=token)


def _stow(datasets: list[Dataset], dest: WebDestination, settings: Settings) -> None:
    from dicomweb_client import DICOMwebClient

    from services.pacs.http import PacsHttpError, PacsUnreachableError, make_session, with_retries

    client = DICOMwebClient(dest.url, session=make_session(report_auth(settings)), timeout=settings.report_timeout_s)
    client.set_http_retry_params(retry=False)
    where = dest.describe()
    try:
        answer = with_retries(lambda: client.store_instances(datasets), what=f"STOW-RS to {where}", retries=0)
    except PacsHttpError as exc:
        raise DestinationError(exc.message, transient=exc.transient) from None
    except PacsUnreachableError as exc:
        raise DestinationError(exc.message, transient=True) from None
    failed = list(getattr(answer, "FailedSOPSequence", None) or [])
    if failed:
        reasons = sorted({f"0x{int(getattr(f, 'FailureReason', 0)):04X}" for f in failed})
        raise DestinationError(f"{where} did not store {len(failed)} object(s) ({', '.join(reasons)})", transient=False)
