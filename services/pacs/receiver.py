"""The DICOM receiver: a pynetdicom Storage SCP (and Verification SCP) that acknowledges only what is durable.

- Negotiates CR, DX (for presentation and for processing) and Secondary Capture Image Storage in every transfer
  syntax pynetdicom knows (ALL_TRANSFER_SYNTAXES), so JPEG, JPEG-LS, JPEG 2000 and RLE senders are accepted as is,
  never transcoded. Reports and other non-image objects (Encapsulated PDF, SR, KOS, presentation states) are
  negotiated only to be refused per instance with their reason (acceptance.NON_IMAGE_KINDS): never indexed. Other
  SOP classes (CT, MR, ...) are not negotiated.
- Admits an association (services/pacs/admission.py) only from a calling AE title on the allow-list, from the
  address that title is bound to (if any), to our called AE title, below `max_associations` associations; each
  refusal is logged with its real reason. A connection that never asks for an association takes no association
  slot and is closed after `acse_timeout_s`; an established one silent for `network_timeout_s` is aborted.
- Announces `max_pdu` as its maximum PDU and takes no instance over `max_instance_bytes`: a bigger one is read and
  dropped as it arrives (services/pacs/instance_cap.py) and answered 0xA700; the association goes on.
- The C-STORE handler takes `event.encoded_dataset()` (the bytes as sent), applies the acceptance rule of
  services/pacs/acceptance.py (not a chest radiograph -> 0xA901), writes the spool file (fsync + rename) and the
  ledger row, and answers 0x0000 only then: 0xA700 when the spool is below its watermark or unwritable, 0xA701
  when the ledger cannot record, 0xC000/0xC001 when the data set or its UID cannot be understood, 0xC003 when
  its SOP Instance UID is already taken by other pixels or another patient (services/pacs/intake.py). Never a
  false success.
- It never talks to the broker: a DispatchTrigger thread calls the injected `dispatch` after stores and on a timer,
  so receiving goes on while Redis is down.
- Logs carry SOP Instance UIDs, statuses and AE titles, never a patient name or id.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from services.governance.audit import AuditLog
from services.governance.metrics import CSTORES
from services.pacs.acceptance import (
    ACCEPTED_SOP_CLASSES,
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SUCCESS,
    non_image_kind,
)
from services.pacs.admission import Admission, parse_aets, parse_allow_list, reject_reason
from services.pacs.association_audit import AssociationAudit
from services.pacs.association_audit import calling_aet as _calling_aet
from services.pacs.association_audit import peer as _peer
from services.pacs.instance_cap import drop_if_over, received_size
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
    allow_aets: tuple[str, ...] = ()  # TITLE, TITLE@ADDRESS or TITLE@NETWORK/BITS
    allow_any_aet: bool = False
    max_associations: int = 64  # requested or established; idle connections do not count
    max_connections: int = 256  # TCP connections, idle ones included (pynetdicom's own limit)
    max_pdu: int = 262_144
    max_instance_bytes: int = 128 * 2**20
    dispatch_debounce_s: float = 0.5
    dispatch_interval_s: float = 10.0
    acse_timeout_s: float = 10.0
    network_timeout_s: float = 60.0
    dimse_timeout_s: float = 60.0


@dataclass
class ReceiverStats:
    """Counters since start (read by the CLI and the benchmark)."""

    stored: int = 0
    duplicates: int = 0
    failed: dict[int, int] = field(default_factory=dict)
    conflicts: int = 0
    oversized: int = 0
    rejected_associations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note(self, outcome: Outcome) -> None:
        with self.lock:
            self.conflicts += int(outcome.conflict)
            if outcome.ok:
                self.stored += 1
                self.duplicates += 0 if outcome.new else 1
            else:
                self.failed[outcome.status] = self.failed.get(outcome.status, 0) + 1


class Receiver:
    """A Storage SCP over `intake`. `start()` listens in background threads; `stop()` shuts it down."""

    def __init__(
        self, intake: Intake, cfg: ReceiverConfig, *, dispatch: Dispatch | None = None, audit: AuditLog | None = None
    ) -> None:
        if not cfg.allow_aets and not cfg.allow_any_aet:
            from services.errors import ConfigError

            raise ConfigError(
                "the receiver has no calling AE titles on its allow-list",
                "Pass --allow-aet AET (repeatable) or set CXR_DICOM_ALLOW_AETS; --allow-any-aet accepts everyone.",
            )
        self.intake, self.cfg = intake, cfg
        self.admission = Admission(
            parse_allow_list(cfg.allow_aets),
            called_aet=cfg.ae_title,
            any_caller=cfg.allow_any_aet,
            max_associations=cfg.max_associations,
        )
        self.trigger = DispatchTrigger(dispatch, debounce_s=cfg.dispatch_debounce_s, interval_s=cfg.dispatch_interval_s)
        self.stats = ReceiverStats()
        self.associations = AssociationAudit(audit)
        self._server = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self.cfg.port

    def _make_ae(self):  # noqa: ANN202 - pynetdicom.AE, imported lazily
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts

        ae = AE(ae_title=self.cfg.ae_title)
        # pynetdicom counts every connection (idle ones too) against maximum_associations: that is our connection
        # ceiling. The association limit, the allow-list and the host binding are decided in _on_requested.
        ae.maximum_associations = self.cfg.max_connections
        ae.maximum_pdu_size = self.cfg.max_pdu
        ae.acse_timeout = self.cfg.acse_timeout_s
        ae.network_timeout = self.cfg.network_timeout_s
        ae.dimse_timeout = self.cfg.dimse_timeout_s
        ae.require_called_aet = True
        ae.require_calling_aet = [c.aet for c in self.admission.callers.values()]  # a backstop; empty: anyone
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        for cx in StoragePresentationContexts:  # reports and other non-images: answered, refused, never kept
            if non_image_kind(cx.abstract_syntax):
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        return ae

    def start(self) -> Receiver:
        """Reconcile the spool with the ledger, then listen (returns at once)."""
        from pynetdicom import evt

        added = reconcile_spool(self.intake.spool, self.intake.ledger, collection=self.intake.collection)
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_RELEASED, self.associations.released),
            (evt.EVT_CONN_OPEN, _no_delay),
        ]
        self._server = self._make_ae().start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
        self.trigger.start()
        if added:
            self.trigger.poke()
        allow = ",".join(c.describe() for c in self.admission.callers.values()) or "any"
        log.info(
            "receiver %s listening on %s:%d (allow %s, max %d associations, %d connections, PDU %d, instance %d MiB)",
            self.cfg.ae_title,
            self.cfg.host,
            self.port,
            allow,
            self.cfg.max_associations,
            self.cfg.max_connections,
            self.cfg.max_pdu,
            self.cfg.max_instance_bytes // 2**20,
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

    def _on_requested(self, event) -> None:  # noqa: ANN001 - pynetdicom Event
        """Admit or refuse an association once its A-ASSOCIATE-RQ has arrived, logging the real reason."""
        assoc = event.assoc
        rq = assoc.requestor.primitive
        address = str(assoc.requestor.address)
        calling = str(rq.calling_ae_title).strip()
        refusal = self.admission.refusal(
            calling=calling, called=str(rq.called_ae_title), address=address, in_progress=_in_progress(assoc)
        )
        if refusal is None:
            return
        with self.stats.lock:
            self.stats.rejected_associations += 1
        log.warning("association from %s at %s refused: %s", calling or "?", address, refusal.reason)
        self.associations.refused(calling, address, refusal.reason)
        assoc.acse.send_reject(*refusal.codes)  # what pynetdicom's own ACSE check does on a rejection
        assoc.kill()

    def _on_pdu(self, event) -> None:  # noqa: ANN001
        if drop_if_over(event.assoc, self.cfg.max_instance_bytes):
            log.info(
                "an instance from %s passed %d bytes: dropping the rest as it arrives",
                _calling_aet(event),
                self.cfg.max_instance_bytes,
            )

    def _on_store(self, event) -> Dataset | int:  # noqa: ANN001 - pynetdicom Event
        request = event.request
        calling = _calling_aet(event)
        size = received_size(request.DataSet)
        if size > self.cfg.max_instance_bytes:
            with self.stats.lock:
                self.stats.oversized += 1
            outcome = Outcome(
                OUT_OF_RESOURCES,
                str(request.AffectedSOPInstanceUID or "") or None,
                f"instance of {size} bytes or more is over the {self.cfg.max_instance_bytes}-byte cap",
            )
        else:
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
                    source=f"AE {calling} at {_peer(event)}",
                    calling_aet=calling,
                )
        self.stats.note(outcome)
        CSTORES.labels(f"0x{outcome.status:04X}").inc()
        self.associations.note(event.assoc, outcome.status)
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
        """pynetdicom's own rejections (its connection ceiling, the allow-list backstop), with their reason."""
        with self.stats.lock:
            self.stats.rejected_associations += 1
        rj = getattr(event.assoc.acceptor, "primitive", None)
        reason = reject_reason(*(getattr(rj, name, None) for name in ("result", "result_source", "diagnostic")))
        if getattr(rj, "diagnostic", None) == 0x02 and getattr(rj, "result_source", None) == 0x03:
            reason += f": {len(event.assoc.ae.active_associations)} connections open, idle ones included (the limit"
            reason += f" is CXR_DICOM_MAX_CONNECTIONS={self.cfg.max_connections})"
        log.warning("association from %s at %s refused: %s", _calling_aet(event), _peer(event), reason)
        self.associations.refused(_calling_aet(event), _peer(event), reason)

    def _on_aborted(self, event) -> None:  # noqa: ANN001
        log.info("association from %s aborted", _calling_aet(event))
        self.associations.ended(event, "aborted")


def _no_delay(event) -> None:  # noqa: ANN001
    """TCP_NODELAY on each accepted connection: small DIMSE responses leave at once instead of waiting on Nagle."""
    import contextlib
    import socket

    with contextlib.suppress(AttributeError, OSError):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _in_progress(assoc) -> int:  # noqa: ANN001 - pynetdicom Association
    """Other associations of this AE that asked for an association and are not over: idle connections (no
    A-ASSOCIATE-RQ yet) do not count, so they cannot lock real senders out."""
    return sum(
        1
        for other in assoc.ae.active_associations
        if other is not assoc
        and other.is_acceptor
        and other.requestor.primitive is not None
        and not (other.is_rejected or other.is_aborted or other.is_released)
    )


__all__ = ["Receiver", "ReceiverConfig", "ReceiverStats", "parse_aets"]
