"""Domain errors. Each message says what went wrong; `hint` says what to do next."""

from __future__ import annotations


class CxrError(Exception):
    """Base for every error cxr reports to a user as one line plus a hint."""

    default_hint = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class ConfigError(CxrError):
    """Settings that conflict or are missing."""

    default_hint = "Check the CXR_* environment variables (see deploy/cxr.env.example)."


class DecodeError(CxrError):
    """A file that cannot be turned into a grey image; names the file and the reason.

    `code` is a stable reason code (services.imaging.reasons.DecodeReason) that an API client can switch on;
    `reason` is a sentence for people, free of Python internals; `detail` is the decoder's own exception text,
    for logs only.
    """

    default_hint = "Skip the file or convert it to an uncompressed single-frame greyscale DICOM or PNG."
    default_code = "corrupt"

    def __init__(
        self, path: object, reason: str, hint: str | None = None, *, code: str | None = None, detail: str | None = None
    ) -> None:
        self.path = str(path)
        self.reason = reason
        self.code = code or self.default_code
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""), hint)


class ModelError(CxrError):
    """A checkpoint that is missing, unreadable or incompatible."""

    default_hint = "Train one with `cxr train` or pass --model pointing at a checkpoint folder."


class StoreError(CxrError):
    """The vector store refused an operation."""

    default_hint = "Check the data directory (CXR_DATA_DIR) or the Qdrant server (CXR_QDRANT_URL)."


class StoreLockedError(StoreError):
    """Another process owns the embedded store's shard directory."""

    default_hint = (
        "Only one process may open the embedded store. Stop the other cxr process (worker, server), "
        "or point CXR_QDRANT_URL at a Qdrant server so several processes can share it."
    )


class StoreUnavailableError(StoreError):
    """The Qdrant server could not be reached (down, restarting, network): worth retrying later."""

    default_hint = "Check that the Qdrant server at CXR_QDRANT_URL is up; queued work is retried."


class CollectionNotFoundError(StoreError):
    """The named collection does not exist."""

    default_hint = "Index some images first with `cxr index PATH`, or list collections with `cxr collections`."


class PointNotFoundError(StoreError):
    """A point id that the collection does not hold."""

    default_hint = "Use an id from a search result or `cxr search --json`."


class StoredImageError(CxrError):
    """An indexed point whose image cannot be found or read any more."""

    default_hint = "Re-index the image from where it lives now, or restore the file."


class ImageTooLargeError(DecodeError):
    """An image whose declared size is over the pixel limit (refused before its pixels are decoded)."""

    default_hint = "Raise CXR_MAX_PIXELS if the image is genuine."
    default_code = "too_large"


class DecodeBusyError(CxrError):
    """The decode memory budget is taken by other decodes: worth retrying in `retry_after_s` seconds."""

    default_hint = "Retry in a few seconds; the server is decoding other large images."
    code = "busy"

    def __init__(self, message: str, retry_after_s: int, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.retry_after_s = retry_after_s


class DataError(CxrError):
    """A manifest, split file or dataset that is malformed or inconsistent."""

    default_hint = "Check the manifest columns: path,label,patient_id (others optional)."


class PacsError(CxrError):
    """A PACS peer that refused, timed out or answered something unexpected."""

    default_hint = "Check the PACS URL, credentials and that it is reachable."


class ReportError(CxrError):
    """A similar-cases report that cannot be made for this query (services.reports)."""

    default_hint = "Give a DICOM, PNG or JPEG file, or the id of an indexed image (from `cxr search --json`)."
