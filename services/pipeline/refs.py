"""Opaque source references: a payload says which image it came from without saying where it lives.

Hospital exports often name folders after the patient (`DOE^JOHN_19600101_MRN12345/`), so a stored payload never
holds a path. It holds `source_ref`, one of:

- `file:<32 hex>`: HMAC-SHA256, under the store's salt, of the file's absolute path (an indexed local file);
- `spool:<SOP Instance UID>`: an instance received or pulled into the spool.

Whoever indexes records `ref -> path` in this machine's ledger (`Ledger.put_refs`);
`services.pipeline.stored_image.resolve_source` reads it back,
falling back to the ledger row keyed by the same value (a queued file's key is its `file:` ref, an instance's
key is `sop:<UID>`). A machine without that ledger (another host on a shared Qdrant server) sees the ref and
nothing else. `services.pipeline.stored_image` goes on from the path to the point's pixels.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path

from services.errors import ConfigError

FILE_PREFIX = "file:"
SPOOL_PREFIX = "spool:"
_DOMAIN = b"cxr source ref\0"  # keeps these HMACs apart from the patient hashes made with the same salt

RefRecorder = Callable[[list[tuple[str, str]]], None]  # e.g. Ledger.put_refs: [(ref, absolute path), ...]


def file_ref(path: str | Path, salt: bytes) -> str:
    """`file:<hex>` for the local file at `path` (made absolute, not resolved, like the ledger's file keys)."""
    if not salt:
        raise ConfigError("the salt is empty; an unsalted hash of a file path can be guessed back")
    digest = hmac.new(salt, _DOMAIN + os.fsencode(Path(path).absolute()), hashlib.sha256)
    return FILE_PREFIX + digest.hexdigest()[:32]


def sop_key(sop_uid: str) -> str:
    """The ledger key of a received or pulled instance: 'sop:<SOP Instance UID>'."""
    return "sop:" + sop_uid.strip()


def spool_ref(sop_uid: str) -> str:
    """`spool:<SOP Instance UID>` for an instance kept in the spool."""
    return SPOOL_PREFIX + sop_uid.strip()


def row_key(ref: str) -> str:
    """The ledger key of the item a ref was made for: `sop:<UID>` for `spool:<UID>`, the ref itself for a file
    (a queued file's key is its `file:` ref). Where the row resolves the ref, the refs table need not."""
    return sop_key(ref[len(SPOOL_PREFIX) :]) if ref.startswith(SPOOL_PREFIX) else ref
