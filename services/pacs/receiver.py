"""The DICOM receiver: a pynetdicom Storage SCP (and Verification SCP) that acknowledges only what is durable.

- Negotiates CR, DX (for presentation and for processing) and Secondary Capture Image Storage in every transfer
  syntax pynetdicom knows (ALL_TRANSFER_SYNTAXES), so JPEG, JPEG-LS, JPEG 2000 and RLE senders are accepted as is,
  never transcoded. Other SOP classes (CT, MR, ...) are not negotiated.
- Rejects an association whose calling AE title is not on the allow-list, or whose called AE title is not ours.
- The C-STORE handler takes `event.encoded_dataset()` (the bytes as sent), applies the acceptance rule of
  services/pacs/acceptance.py (not a chest radiograph -> 0xA901), writes the spool file (fsync + rename) and the
  ledger row, and answers 0x0000 only then: 0xA700 when the spool is below its watermark or unwritable, 0xA701
  when the ledger cannot record, 0xC000/0xC001 when the data set or its UID cannot be understood. Never a false
  success.
- It never talks to the broker: a DispatchTrigger thread calls the injected `dispatch` after stores and on a timer,
  so receiving goes on while Redis is down.
- Logs carry SOP Instance UIDs, statuses and AE titles, never a patient name or id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from services.pacs.acceptance import ACCEPTED_SOP_CLASSES, CANNOT_UNDERSTAND, SUCCESS
from services.pacs.intake import Intake, Outcome, reconcile_spool
from services.pacs.trigger import Dispatch, DispatchTrigger

log = logging.getLogger("cxr.pacs")

VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class ReceiverConfig:
    """How the receiver listens. An empty `allow_aets` accepts any caller only with `allow_any_aet=True`."""

    ae_title: str = "CXR"
    host: str = "0.0.0.0"
    port: int = 11112
    allow_aets: tuple[str, ...] = ()
    allow_any_aet: bool = False
    max_associations: int = 64
    max_pdu: int = 0  # 0: no limit on what peers may send per PDU (fewer round trips for big films)
    dispatch_debounce_s: float = 0.5
    dispatch_interval_s: float = 10.0
    network_timeout_s: float = 60.0


@dataclass
class ReceiverStats:
    """Counters since start (read by the CLI and the benchmark)."""

    stored: int = 0
    duplicates: int = 0
    failed: dict[int, int] = field(default_factory=dict)
    rejected_associations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note(self, outcome: Outcome) -> None:
        with self.lock:
            if outcome.ok:
                self.stored += 1
                self.duplicates += 0 if outcome.new else 1
            else:
                self.failed[outcome.status] = self.failed.get(outcome.status, 0) + 1


class Receiver:
    """A Storage SCP over `intake`. `start()` listens in background threads; `stop()` shuts it down."""

    def __init__(self, intake: Intake, cfg: ReceiverConfig, *, dispatch: Dispatch | None = None) -> None:
        if not cfg.allow_aets and not cfg.allow_any_aet:
            from services.errors import ConfigError

            raise ConfigError(
                "the receiver has no calling AE titles on its allow-list",
                "Pass --allow-aet AET (repeatable) or set CXR_DICOM_ALLOW_AETS; --allow-any-aet accepts everyone.",
            )
        self.intake, self.cfg = intake, cfg
        self.trigger = DispatchTrigger(dispatch, debounce_s=cfg.dispatch_debounce_s, interval_s=cfg.dispatch_interval_s)
        self.stats = ReceiverStats()
        self._server = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self.cfg.port

    def _make_ae(self):  # noqa: ANN202 - pynetdicom.AE, imported lazily
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES

        ae = AE(ae_title=self.cfg.ae_title)
        ae.maximum_associations = self.cfg.max_associations
        ae.maximum_pdu_size = self.cfg.max_pdu
        ae.network_timeout = self.cfg.network_timeout_s
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.cfg.allow_aets)  # empty: anyone (only with allow_any_aet)
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        return ae

    def start(self) -> Receiver:
        """Reconcile the spool with the ledger, then listen (returns at once)."""
        from pynetdicom import evt

        added = reconcile_spool(self.intake.spool, self.intake.ledger, collection=self.intake.collection)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_OPEN, _no_delay),
        ]
        self._server = self._make_ae().start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
        self.trigger.start()
        if added:
            self.trigger.poke()
        allow = ",".join(self.cfg.allow_aets) or "any"
        log.info(
            "receiver %s listening on %s:%d (allow %s, max %d associations)",
            self.cfg.ae_title,
            self.cfg.host,
            self.port,
            allow,
            self.cfg.max_associations,
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.trigger.stop()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers (run in the association's thread)

    def _on_store(self, event) -> Dataset | int:  # noqa: ANN001 - pynetdicom Event
        request = event.request
        calling = _calling_aet(event)
        try:
            data = event.encoded_dataset()
        except Exception as exc:  # noqa: BLE001
            outcome = Outcome(CANNOT_UNDERSTAND, None, f"cannot read the C-STORE data set ({type(exc).__name__})")
        else:
            outcome = self.intake.accept(
                data,
                origin="receiver",
                expected_uid=str(request.AffectedSOPInstanceUID or "") or None,
                sent_as=str(request.AffectedSOPClassUID or "") or None,
            )
        self.stats.note(outcome)
        if outcome.ok:
            if outcome.new:
                self.trigger.poke()
            log.debug("stored %s from %s", outcome.sop_uid, calling)
            return SUCCESS
        log.warning(
            "C-STORE of %s from %s refused 0x%04X: %s", outcome.sop_uid or "?", calling, outcome.status, outcome.reason
        )
        status = Dataset()
        status.Status = outcome.status
        status.ErrorComment = outcome.reason[:64]
        return status

    def _on_echo(self, event) -> int:  # noqa: ANN001
        return SUCCESS

    def _on_rejected(self, event) -> None:  # noqa: ANN001
        with self.stats.lock:
            self.stats.rejected_associations += 1
        log.warning("association from %s rejected (calling AE not allowed or wrong called AE)", _calling_aet(event))

    def _on_aborted(self, event) -> None:  # noqa: ANN001
        log.info("association from %s aborted", _calling_aet(event))


def _no_delay(event) -> None:  # noqa: ANN001
    """TCP_NODELAY on each accepted connection: small DIMSE responses leave at once instead of waiting on Nagle."""
    import contextlib
    import socket

    with contextlib.suppress(AttributeError, OSError):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _calling_aet(event) -> str:  # noqa: ANN001
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except Exception:  # noqa: BLE001
        return "?"


def parse_aets(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """AE titles from repeated options and/or comma-separated settings, stripped, de-duplicated, order kept."""
    if values is None:
        return ()
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            aet = part.strip()
            if aet and aet not in out:
                if len(aet) > 16:
                    from services.errors import ConfigError

                    raise ConfigError(f"AE title {aet!r} is longer than 16 characters")
                out.append(aet)
    return tuple(out)
