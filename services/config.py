"""One Settings object. Every knob is read from a CXR_-prefixed environment variable and documented here once."""

from __future__ import annotations

import difflib
import logging
import os
import stat
from functools import cached_property
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.errors import ConfigError

log = logging.getLogger("cxr.config")
_WARNED_SALT_FILES: set[Path] = set()  # each loose salt file is reported once per process

# The decoder's image-size guard, used wherever no Settings is at hand (the decoder's own defaults, option objects).
DEFAULT_MAX_PIXELS = 80_000_000  # more pixels than this is refused before decoding (bomb guard)
DEFAULT_MIN_SIDE = 32  # a shorter side than this is refused


# CXR_ variables that are not settings. Any other CXR_ name is refused as a typo (pydantic-settings would ignore it):
# the PACS credentials `cxr pacs pull` reads (cli/pacs_cmd.py), the switches of the tests and benchmarks, and one
# build argument.
OTHER_CXR_VARIABLES = frozenset(
    {
        "CXR_PACS_USER",
        "CXR_PACS_PASSWORD",
        "CXR_PACS_TOKEN",
        "CXR_SHARED_DATA",
        "CXR_TEST_SERVICES",
        "CXR_TEST_QDRANT_URL",
        "CXR_EXPLAIN_MODEL",
        "CXR_VIEWER_SCREENSHOT",
        "CXR_UPDATE_SCREENSHOTS",  # tests: rewrite the docs/img screenshots
        "CXR_UID",  # the image's user id, a build argument of deploy/Dockerfile
    }
)


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("cxr", appauthor=False))


def _with_close_match(names: list[str], known: list[str]) -> str:
    """`names` joined, each with the known name it most resembles: "colection (did you mean collection?)"."""
    out = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        out.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ", ".join(out)


class Settings(BaseSettings):
    """Runtime configuration. Build with `Settings()` (reads the environment) and pass it down explicitly."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="forbid")

    data_dir: Path = Field(default_factory=_default_data_dir, description="Root for the store, models, salt.")
    qdrant_path: Path | None = Field(None, description="Embedded store directory; default DATA_DIR/qdrant.")
    qdrant_url: str | None = Field(None, description="Qdrant server URL; when set, the server store is used.")
    qdrant_api_key: SecretStr | None = Field(None, description="API key for the Qdrant server.")
    collection: str = Field("cxr", description="Default collection name.")
    model: Path | None = Field(None, description="Checkpoint folder; default DATA_DIR/models/default.")
    batch_size: int = Field(32, ge=1, description="Images per encoder batch.")
    bf16: bool | None = Field(None, description="bf16 autocast for inference; None = on where the CPU has it.")
    inference_backend: str | None = Field(
        "openvino",
        description="Encoder back end (index, workers, search): eager-fp32, eager-bf16, compile-bf16, onnxruntime,"
        " openvino, openvino-bf16, int8-dynamic; empty = eager (bf16 where supported). benchmarks/encoder_speed.py"
        " picked openvino (fp32): 2.6x eager bf16 with exact agreement.",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="Inference threads (torch intra-op and OpenVINO); None = torch's default."
    )
    model_cache_keep: int = Field(
        4, ge=1, description="Compiled OpenVINO models kept in DATA_DIR/cache/openvino; least recently used go first."
    )
    decode_workers: int = Field(2, ge=0, description="Decoder threads overlapped with inference (0 = inline).")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1024, description="Refuse images with more pixels (bomb guard).")
    min_side: int = Field(DEFAULT_MIN_SIDE, ge=1, description="Refuse images whose shorter side is smaller.")
    patient_salt: SecretStr | None = Field(
        None, description="Salt for patient-id hashes; default a random salt kept in DATA_DIR/patient_salt."
    )
    store_wait_s: float = Field(
        30.0, ge=0, description="How long to wait for another process to hand over the embedded store."
    )
    store_linger_s: float = Field(
        2.0, ge=0, description="Keep the embedded store open this long after a call unless another process waits."
    )
    index_threshold_points: int = Field(
        20_000, ge=1, description="Unindexed points at which the index writer refreshes the HNSW index."
    )
    index_flush_points: int = Field(
        1024, ge=1, description="The index writer flushes the embedded store once this many points wait."
    )
    index_flush_s: float = Field(
        2.0, ge=0, description="The index writer flushes once the oldest unflushed point waited this long (s)."
    )
    index_segment_points: int = Field(
        200_000, ge=1, description="Largest index segment; a refresh rebuilds at most one segment of this size."
    )
    index_label_parts: int = Field(
        8,
        ge=0,
        description="New embedded collections give up to this many labels a graph of their own (0 = one graph).",
    )
    index_label_parts_from: int = Field(
        20_000, ge=0, description="Labels get graphs of their own once the shared one holds this many points."
    )
    hnsw_m: int = Field(16, ge=2, description="HNSW graph degree for new collections.")
    hnsw_ef_construct: int = Field(100, ge=4, description="HNSW build beam for new collections.")
    index_threads: int = Field(0, ge=0, description="Threads for one HNSW build in the embedded store (0 = all cores).")
    search_hnsw_ef: int = Field(256, ge=1, description="HNSW search beam when a query gives none.")
    search_acorn_selectivity: float = Field(
        0.4, ge=0, le=1, description="Filtered searches keeping at most this share of points use ACORN (0 = off)."
    )
    search_exact_filter_max_points: int = Field(
        500_000,
        ge=0,
        description="Filtered searches whose filter keeps at most this many points are exact (0 = never).",
    )
    spool_dir: Path | None = Field(None, description="Received DICOM instances; default DATA_DIR/spool.")
    spool_min_free_mb: int = Field(512, ge=0, description="Refuse C-STORE (0xA700) below this much free space.")
    max_attempts: int = Field(5, ge=1, description="Starts of one item before it is marked failed (dead letter).")
    requeue_after_s: float = Field(
        900.0, gt=0, description="Re-send a queued item untouched this long (lost message or worker)."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker and result backend.")
    queue_batch_size: int = Field(64, ge=1, description="Images per embed task on the background queue.")
    visibility_timeout_s: float = Field(
        300.0,
        gt=0,
        description="A dead worker's unacknowledged task is redelivered after this long (live workers renew theirs).",
    )
    unacked_restore_interval_s: float = Field(
        5.0, gt=0, description="How often a worker looks for unacknowledged tasks of dead workers to redeliver."
    )
    broker_timeout_s: float = Field(
        2.0, gt=0, description="Connect/socket timeout towards Redis, so publishing never hangs while it is down."
    )
    sweep_interval_s: float = Field(
        30.0, gt=0, description="How often `cxr worker` re-sends ledger items not yet queued or lost (the sweep)."
    )
    task_retries: int = Field(
        4, ge=0, description="Celery retries of a task hit by a transient error (then the sweep)."
    )
    watchdog_stall_s: float = Field(
        120.0,
        gt=0,
        description="A celery worker idle this long while its queue holds messages has lost its consumer: it exits"
        " and `cxr worker` restarts it.",
    )
    worker_heartbeat_s: float = Field(
        5.0,
        gt=0,
        description="`cxr worker` records a heartbeat this often; one silent for 6 beats is dead and the sweep"
        " re-sends the 'processing' items it may have held at once.",
    )
    health_max_queue_wait_s: float = Field(
        900.0,
        gt=0,
        description="deploy/healthcheck.py worker fails when an item has been queued this long and nothing started"
        " or was indexed meanwhile.",
    )
    retry_backoff_s: float = Field(2.0, gt=0, description="First retry delay of a transient error; doubles, max 60 s.")
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token the REST API requires, with every scope (actor 'api-token'); unset with no"
        " CXR_API_TOKENS_FILE = no token, and `cxr serve` binds loopback only.",
    )
    api_tokens_file: Path | None = Field(
        None,
        description="Named, scoped API tokens (`cxr token add|list|revoke`): JSON lines of name, scopes and the"
        " SHA-256 of the secret; `cxr serve` rereads it when it changes. Unset = no named tokens.",
    )
    api_expose_identifiers: bool = Field(
        False,
        description="On an open API (no token configured), send payloads with the raw UIDs, patient hash, content"
        " hash and source ref; off = the display payload only. With tokens only the `admin` scope sees them.",
    )
    api_max_upload_mb: int = Field(64, ge=1, description="Largest request body the REST API reads (413 beyond).")
    api_import_dir: Path | None = Field(
        None, description="POST /v1/index may name server-side files only under this folder; unset = uploads only."
    )
    api_upload_retention_h: float = Field(
        0.0,
        ge=0,
        description="Hours a file uploaded to POST /v1/index is kept once indexed or failed; 0 = deleted at the"
        " worker's next sweep (its points' thumbnails then say the image is gone).",
    )
    api_allowed_hosts: str = Field(
        "",
        description="Comma-separated host names the REST API answers to besides loopback and its own address "
        "(421 for others; without CXR_API_TOKEN always checked, with one only when set); '*' = any.",
    )
    api_header_timeout_s: float = Field(
        10.0, gt=0, description="A connection must send a whole request head within this many seconds, or is closed."
    )
    api_keep_alive_s: int = Field(5, ge=1, description="An idle keep-alive connection is closed after this many s.")
    api_body_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait (s) for the next part of a request body (408 and closed beyond)."
    )
    api_max_connections: int = Field(
        200, ge=2, description="Open connections the REST API serves at once; a request beyond is answered 503."
    )
    api_max_header_kb: int = Field(16, ge=1, description="Largest request head (KiB: request line and headers).")
    api_decode_memory_mb: int = Field(
        6144,
        ge=16,
        description="Memory (MiB) all of the API's concurrent decodes may take, estimated from each upload's header "
        "(about 30-45 B per pixel; 8-16 for the reduced decode of a search or preview); a decode that finds it taken "
        "waits, then gets 503.",
    )
    api_decode_wait_s: float = Field(
        5.0, ge=0, description="How long an upload waits for room in the decode memory budget before a 503."
    )
    api_trim_after_mb: int = Field(
        32,
        ge=0,
        description="Give freed memory back to the OS (glibc malloc_trim) after requests once decodes of this many "
        "MiB in all (their estimated peaks) have ended since the last time; 0 = never.",
    )
    api_thumbnail_cache_mb: int = Field(
        32, ge=0, description="Rendered thumbnails the API keeps in memory (MiB, least recently used dropped first)."
    )
    dicom_aet: str = Field("CXR", min_length=1, max_length=16, description="The receiver's AE title (called AE).")
    dicom_host: str = Field("0.0.0.0", description="Address `cxr dicom-listen` binds (all interfaces by default).")
    dicom_bind: str = Field(
        "127.0.0.1",
        description="docker-compose.yml only: the host address the receiver's port 11112 is published on (loopback"
        " unless set; inside the container the receiver listens on CXR_DICOM_HOST).",
    )
    dicom_port: int = Field(11112, ge=1, le=65535, description="Port `cxr dicom-listen` listens on.")
    dicom_allow_aets: str = Field(
        "",
        description="Comma-separated calling AE titles the receiver accepts, each optionally bound to a host or"
        " network (ORTHANC@10.0.0.5, CR_ROOM1@10.1.2.0/24); others are rejected at association.",
    )
    dicom_max_associations: int = Field(64, ge=1, description="Concurrent associations the receiver accepts.")
    dicom_max_connections: int = Field(
        256,
        ge=1,
        description="TCP connections the receiver holds at once, idle ones (no association asked yet) included.",
    )
    dicom_acse_timeout_s: float = Field(
        10.0, gt=0, description="A connection that asks for no association (or release) within this long is closed."
    )
    dicom_network_timeout_s: float = Field(
        60.0, gt=0, description="An association silent this long (s) is aborted, its slot freed."
    )
    dicom_dimse_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait (s) for the rest of a DIMSE message once it has begun."
    )
    dicom_max_pdu: int = Field(
        262_144, ge=4096, le=2**32 - 1, description="Largest PDU (bytes) the receiver tells senders it accepts."
    )
    dicom_max_instance_mb: int = Field(
        128, ge=1, description="Largest instance (MiB) the receiver takes; beyond it C-STORE answers 0xA700."
    )
    spool_quarantine_conflicts: bool = Field(
        False,
        description="Keep an instance whose SOP Instance UID is taken by different content in spool/.conflicts"
        " (recorded, never indexed) and answer success, instead of refusing it with 0xC003.",
    )
    spool_deidentify: bool = Field(
        False,
        description="Keep only PS3.15 Annex E de-identified copies in the spool and of DICOM uploaded to the API"
        " (hashed UIDs, pseudonym id).",
    )
    receiver_dispatch_interval_s: float = Field(
        10.0, gt=0, description="The receiver and puller call the dispatcher at least this often (s), besides stores."
    )
    pacs_timeout_s: float = Field(30.0, gt=0, description="Connect/read timeout (s) of each PACS HTTP request.")
    pacs_retries: int = Field(4, ge=0, description="Retries of a PACS request after a timeout or a 5xx/429 answer.")
    # Similar-cases reports sent back to the PACS (services/reports/deliver.py, services/reports/trigger.py)
    report_destination: str | None = Field(
        None,
        description="Where reports of received and pulled films go: dicom://AET@host:port (C-STORE) or an"
        " http(s) DICOMweb root (STOW-RS); unset = no automatic reports.",
    )
    report_aet: str | None = Field(None, max_length=16, description="Our calling AE title; default CXR_DICOM_AET.")
    report_user: str | None = Field(None, description="STOW-RS basic-auth user (with CXR_REPORT_PASSWORD).")
    report_password: SecretStr | None = Field(None, description="STOW-RS basic-auth password.")
    report_token: SecretStr | None = Field(None, description="STOW-RS bearer token (instead of user/password).")
    report_from: str = Field(
        "", description="Report only films from these calling AE titles and/or 'pull' (comma-separated); empty = all."
    )
    report_modalities: str = Field("CR,DX", description="Report only films of these modalities (when present).")
    report_per_study: bool = Field(True, description="At most one report per study (its first suitable image).")
    report_k: int = Field(10, ge=1, le=50, description="Similar films in an automatic report.")
    report_retries: int = Field(8, ge=0, description="Retries of a report whose destination fails, then failed.")
    report_backoff_s: float = Field(10.0, gt=0, description="First report retry delay (s); doubles, at most 600 s.")
    report_timeout_s: float = Field(30.0, gt=0, description="Connect/response timeout (s) towards the destination.")
    metrics_bind: str = Field(
        "127.0.0.1",
        description="Address the --metrics-port endpoints of `cxr worker` and `cxr dicom-listen` listen on (no patient"
        " data, no token: loopback unless set).",
    )
    audit_enabled: bool = Field(
        True,
        description="Keep the audit trail (DATA_DIR/audit.sqlite3): who searched, viewed, indexed, received or"
        " forgot what, and when. Off only to measure its cost.",
    )
    forget_resend: str = Field(
        "refuse",
        pattern="^(refuse|skip)$",
        description="An instance or file of a forgotten patient, study or instance that arrives again: 'refuse' (a"
        " C-STORE failure status, a failed ledger item) or 'skip' (answered success, never kept).",
    )
    debug: bool = Field(False, description="Print tracebacks for domain errors.")

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown(cls, data: Any) -> Any:
        # A misspelt keyword or CXR_ variable would otherwise leave its default in place without a word: extra="forbid"
        # raises a bare ValidationError for the first, and pydantic-settings never reads a variable naming no field.
        fields = list(cls.model_fields)
        unknown = sorted(set(data) - set(fields)) if isinstance(data, dict) else []
        if unknown:
            raise ConfigError(
                f"unknown setting {_with_close_match(unknown, fields)}",
                "Use a field of services.config.Settings (deploy/cxr.env.example lists each as a CXR_ variable).",
            )
        variables = [f"CXR_{name.upper()}" for name in fields]
        allowed = {*variables, *OTHER_CXR_VARIABLES}
        stray = sorted(k for k in os.environ if k.upper().startswith("CXR_") and k.upper() not in allowed)
        if stray:
            raise ConfigError(
                f"unknown environment variable {_with_close_match(stray, variables)}",
                "Correct or unset it: deploy/cxr.env.example lists every CXR_ setting.",
            )
        return data

    @model_validator(mode="after")
    def _reject_conflicts(self) -> Settings:
        if self.qdrant_url and self.qdrant_path:
            raise ConfigError(
                "Both CXR_QDRANT_URL and CXR_QDRANT_PATH are set: choose the server or the embedded store.",
                "Unset one of them.",
            )
        return self

    @property
    def store_path(self) -> Path:
        return self.qdrant_path or self.data_dir / "qdrant"

    @property
    def spool_path(self) -> Path:
        return self.spool_dir or self.data_dir / "spool"

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.sqlite3"

    @property
    def model_path(self) -> Path:
        return self.model or self.data_dir / "models" / "default"

    @property
    def model_cache_dir(self) -> Path:
        """Converted and compiled models, one folder per checkpoint, back end and OpenVINO version."""
        return self.data_dir / "cache" / "openvino"

    @cached_property
    def salt(self) -> bytes:
        """The patient-hash salt: configured, or created once per data directory and kept there."""
        if self.patient_salt is not None:
            return self.patient_salt.get_secret_value().encode()
        path = self.data_dir / "patient_salt"
        if not path.exists():
            import secrets

            from services.durable import create_atomically

            path.parent.mkdir(parents=True, exist_ok=True)
            # 0600, complete before it is visible, and exclusive: two first-time callers agree on one salt
            create_atomically(path, secrets.token_hex(32).encode(), mode=0o600)
        else:
            _warn_if_readable_by_others(path)
        return path.read_text().strip().encode()


def _warn_if_readable_by_others(path: Path) -> None:
    """Log once per process and file when the salt file is readable by its group or by others: with the salt,
    anyone who can guess patient ids can recognise them in the stored hashes."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not mode & (stat.S_IRGRP | stat.S_IROTH) or path in _WARNED_SALT_FILES:
        return
    _WARNED_SALT_FILES.add(path)
    readers = " and ".join(who for bit, who in ((stat.S_IRGRP, "its group"), (stat.S_IROTH, "others")) if mode & bit)
    log.warning(
        "the patient-hash salt %s is readable by %s (mode %s); restrict it: chmod 600 %s",
        path,
        readers,
        oct(stat.S_IMODE(mode)),
        path,
    )
