"""The receiver's audit records: one per association (`dicom.associate`), written when it is released or aborted,
or when it is refused. Actor `ae:<calling AE title>`, client the peer's address, objects the instance counts by
C-STORE status; a refusal carries its reason's kind. Nothing of the instances themselves: no UID, no patient."""

from __future__ import annotations

import logging
import threading
from typing import Any

from services.governance.audit import AuditLog

log = logging.getLogger("cxr.receiver")


class AssociationAudit:
    """Counts each association's C-STOREs by status and records them when it ends (nothing when `audit` is None)."""

    def __init__(self, audit: AuditLog | None) -> None:
        self.audit = audit
        self._counts: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()

    def note(self, assoc: Any, status: int) -> None:
        with self._lock:
            counts = self._counts.setdefault(id(assoc), {})
            key = f"0x{status:04X}"
            counts[key] = counts.get(key, 0) + 1

    def released(self, event: Any) -> None:
        self.ended(event, "ok")

    def ended(self, event: Any, outcome: str) -> None:
        with self._lock:
            counts = self._counts.pop(id(event.assoc), {})
        stored = counts.get("0x0000", 0)
        objects = {"instances": sum(counts.values()), "stored": stored, "statuses": counts}
        self._write(calling_aet(event), peer(event), outcome, objects)

    def refused(self, calling: str, address: str, reason: str) -> None:
        kind = reason.split(":")[0].split("(")[0].strip()[:60]
        self._write(calling, address, "refused", {"reason": "".join(c for c in kind if c.isalnum() or c in " -_")})

    def _write(self, calling: str, address: str, outcome: str, objects: dict[str, Any]) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(f"ae:{calling or '?'}", "dicom.associate", outcome, client=address, objects=objects)
        except Exception:  # noqa: BLE001 - the association is over; its record failing must not kill the thread
            log.exception("audit record of an association from %s not written", calling)


def peer(event: Any) -> str:
    try:
        return str(event.assoc.requestor.address)
    except Exception:  # noqa: BLE001
        return "?"


def calling_aet(event: Any) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except Exception:  # noqa: BLE001
        return "?"
