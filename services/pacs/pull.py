"""Pull from a PACS: find new chest radiographs there, fetch them as stored, and take them in like the receiver.

Two modes, one contract:
- `dicomweb` (any DICOMweb PACS): QIDO-RS finds studies in StudyDate windows, then series (filtered by modality and
  the acceptance rule before anything is fetched), then instances; WADO-RS fetches each with `transfer-syntax=*`,
  so the server sends what it stores instead of transcoding. See services/pacs/dicomweb.py.
- `orthanc-changes` (Orthanc): the `/changes` feed from the stored sequence number, in order. See
  services/pacs/orthanc_changes.py.

Every fetched instance goes through `Intake.accept` (rule, optional de-identification, spool fsync + rename,
ledger), so a re-pull never duplicates: an instance the ledger holds is not fetched again. The cursor is committed
only after what it covers is durable. Transient errors (timeouts, 5xx) are retried with backoff; an instance that
still fails is a per-item failure and the rest goes on; a permanently bad one is recorded in the ledger as failed
(`cxr failures`). The dispatcher is called after each batch, never in the fetch path.
"""

from __future__ import annotations

import time

from services.errors import ConfigError
from services.pacs.dicomweb import pull_dicomweb
from services.pacs.intake import Intake
from services.pacs.orthanc_changes import pull_orthanc_changes
from services.pacs.pull_batch import PullOptions, PullReport
from services.pacs.trigger import Dispatch


def pull(intake: Intake, opts: PullOptions, *, dispatch: Dispatch | None = None) -> PullReport:
    """Run one pull in `opts.mode` and return its report."""
    t0 = time.perf_counter()
    if opts.mode == "dicomweb":
        report = pull_dicomweb(intake, opts, dispatch=dispatch)
    elif opts.mode == "orthanc-changes":
        report = pull_orthanc_changes(intake, opts, dispatch=dispatch)
    else:
        raise ConfigError(f"unknown pull mode {opts.mode!r}", "Use --mode dicomweb or --mode orthanc-changes.")
    report.seconds = round(time.perf_counter() - t0, 3)
    return report
