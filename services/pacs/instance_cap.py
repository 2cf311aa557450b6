"""The receiver's per-instance byte cap, enforced while the instance arrives.

pynetdicom assembles each C-STORE data set in memory, PDU by PDU, before the handler sees it. Answering 0xA700 only
then would still let one sender hold any amount of memory. So, on every received PDU (EVT_PDU_RECV, in the thread
that assembles the message, just before this PDU is added), a data set already past the cap has its buffer swapped
for a `Discarded` one that only counts: memory stays at the cap plus one PDU, the rest of the message is read and
dropped, and the C-STORE handler answers 0xA700 while the association goes on. The handler also checks the size
itself, so the cap holds even where the hook cannot reach pynetdicom's message (then without the memory bound).
"""

from __future__ import annotations

import io


class Discarded(io.BytesIO):
    """A data set buffer that keeps nothing and counts what was written (`size`, the bytes received so far)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def write(self, data: bytes) -> int:  # type: ignore[override]
        n = len(data)
        self.size += n
        return n


def received_size(buffer: io.BytesIO | None) -> int:
    """Bytes of a C-STORE data set buffer (without copying it)."""
    if buffer is None:
        return 0
    if isinstance(buffer, Discarded):
        return buffer.size
    with buffer.getbuffer() as view:
        return view.nbytes


def drop_if_over(assoc: object, max_bytes: int) -> bool:
    """Swap the in-progress C-STORE data set of `assoc` for a `Discarded` counter once it holds more than
    `max_bytes`; True when it did. Reaches pynetdicom's `assoc.dimse.message` (documented as the message being
    assembled), and does nothing when that is not there."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    buffer = getattr(message, "data_set", None)
    if not isinstance(buffer, io.BytesIO) or isinstance(buffer, Discarded):
        return False
    size = received_size(buffer)
    if size <= max_bytes:
        return False
    message.data_set = Discarded(size)  # type: ignore[union-attr]
    return True
