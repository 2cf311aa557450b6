"""The loop back to the PACS, end to end: a film C-STOREd into `cxr dicom-listen` is indexed by `cxr worker`, whose
index writer plans its report and whose report queue builds it and stores it in a real Orthanc, by C-STORE and by
STOW-RS to its DICOMweb plugin. Also: a resend replaces (same UIDs), a PACS that is down gets everything once it is
back (backoff, then `cxr failures` and `cxr retry`), and the receiver never indexes a report sent to it."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from services.config import Settings
from services.pipeline.ledger import sop_key
from services.pipeline.report_ledger import ReportLedger
from tests.pacs.conftest import ReceiverProcess, WorkerProcess, ledger_keys, pacs_env
from tests.pacs.dicom_factory import dx_from_jpeg, public_jpegs, save, send
from tests.services import OrthancServer, RedisServer, wait_for
from tests.workers.conftest import cxr

pytestmark = pytest.mark.slow

PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SR = "1.2.840.10008.5.1.4.1.1.88.33"
SEED = "cxr-report-loop"


class Loop:
    """Redis, an Orthanc of its own (the tests stop it), the receiver and one worker sending reports to Orthanc."""

    def __init__(self, root: Path, model: Path, cxr_public: Path) -> None:
        self.root, self.model = root, model
        self.jpegs = public_jpegs(cxr_public, 40)
        self.films = root / "films"
        self.redis = RedisServer(root / "redis").start()
        self.orthanc = OrthancServer(root / "orthanc").start()
        self.data_dir = root / "cxr-data"
        self.env = self.env_for(f"dicom://{self.orthanc.aet}@127.0.0.1:{self.orthanc.dicom_port}")
        self.settings = Settings(**{k[4:].lower(): v for k, v in self.env.items() if k.startswith("CXR_")})
        self.receiver = ReceiverProcess(self.env, root, allow=("SEEDER", "MODALITY")).start()
        self.orthanc.add_modality("cxr", "CXR", self.receiver.port)  # cxr may store reports there
        self.worker = WorkerProcess(self.env, root).start()
        self.reports = ReportLedger(self.settings.ledger_path)

    def env_for(self, destination: str, **extra: object) -> dict[str, str]:
        return pacs_env(
            self.data_dir,
            self.model,
            redis_url=self.redis.url,
            sweep_interval_s=0.5,
            broker_timeout_s=1,
            receiver_dispatch_interval_s=1,
            retry_backoff_s=0.2,
            index_flush_s=0.2,
            report_destination=destination,
            report_from="MODALITY",  # films from SEEDER fill the archive and get no report
            report_retries=1,
            report_backoff_s=0.3,
            report_timeout_s=5,
            report_k=4,
            inference_backend="",  # eager, as the rest of the suite: no OpenVINO compile in each worker
            **extra,
        )

    def film(self, index: int) -> Path:
        """A DX film of its own patient and study (the same file for the same index)."""
        ds = dx_from_jpeg(self.jpegs[index], index, patient=1000 + index, seed=SEED, encapsulated=False)
        return save(ds, self.films)

    def store(self, paths: list[Path], calling: str = "MODALITY") -> None:
        got = send(paths, "127.0.0.1", self.receiver.port, called="CXR", calling=calling, resend_lost=True)
        assert set(got.values()) == {0}, got

    def wait_indexed(self, paths: list[Path], timeout: float = 60) -> None:
        want = {sop_key(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)) for p in paths}
        wait_for(lambda: want <= ledger_keys(self.settings, "indexed"), timeout=timeout, what="films indexed")

    def study_objects(self, study_uid: str) -> list[pydicom.Dataset]:
        """Every instance Orthanc holds in the study, parsed."""
        found = self.orthanc.rest(
            "POST", "/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}
        ).json()
        return [pydicom.dcmread(_bytes(self.orthanc.rest("GET", f"/instances/{i}/file").content)) for i in found]

    def wait_report(self, film: Path, timeout: float = 60) -> list[pydicom.Dataset]:
        """The report objects in the film's study once both arrived."""
        study = str(pydicom.dcmread(film, stop_before_pixels=True).StudyInstanceUID)

        def both() -> bool:
            return {str(d.SOPClassUID) for d in self.study_objects(study)} >= {PDF, SR}

        try:
            wait_for(both, timeout=timeout, what="the report in Orthanc")
        except TimeoutError:
            raise AssertionError(f"no report; worker log:\n{self.worker.log.read_text()[-3000:]}") from None
        return self.study_objects(study)

    def stop(self) -> None:
        self.receiver.stop()
        self.worker.stop()
        self.orthanc.stop()
        self.redis.stop()


def _bytes(data: bytes):  # noqa: ANN202 - a file object for pydicom
    import io

    return io.BytesIO(data)


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, cxr_public: Path):
    stack = Loop(tmp_path_factory.mktemp("report-loop"), tiny_checkpoint, cxr_public)
    seeds = [stack.film(i) for i in range(6)]  # 6 patients to compare with, from a caller outside the scope
    stack.store(seeds, calling="SEEDER")
    stack.wait_indexed(seeds)
    yield stack
    stack.stop()


def _check_report(objects: list[pydicom.Dataset], film: Path) -> tuple[str, str]:
    """One PDF and one SR, in the film's study and patient, each in a new series of its own (Modality is a series
    attribute: DOC and SR cannot share one); their UIDs."""
    src = pydicom.dcmread(film, stop_before_pixels=True)
    by_class = {c: [d for d in objects if str(d.SOPClassUID) == c] for c in (PDF, SR)}
    seen = [(str(d.SOPClassUID), str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in objects]
    assert len(by_class[PDF]) == 1 and len(by_class[SR]) == 1, seen
    pdf, sr = by_class[PDF][0], by_class[SR][0]
    for d in (pdf, sr):
        assert d.StudyInstanceUID == src.StudyInstanceUID and d.PatientID == src.PatientID
        assert d.SeriesInstanceUID != src.SeriesInstanceUID
    assert pdf.SeriesInstanceUID != sr.SeriesInstanceUID and (pdf.Modality, sr.Modality) == ("DOC", "SR")
    assert pdf.SeriesDescription == sr.SeriesDescription == "cxr similar cases"
    assert bytes(pdf.EncapsulatedDocument).startswith(b"%PDF")
    return str(pdf.SOPInstanceUID), str(sr.SOPInstanceUID)


def _resend(loop: Loop, uid: str) -> None:
    """Send a sent report again the way an operator does: its row failed, re-armed (`cxr retry`), published."""
    from services.reports.trigger import dispatch_due_reports
    from workers.dispatch import make_report_publish

    key, before = sop_key(uid), loop.reports.get(loop.settings.collection, sop_key(uid))
    loop.reports.mark_attempt_failed(loop.settings.collection, key, "resend for the test", final=True)
    assert [r.key for r in loop.reports.retry([before.name])] == [key]
    assert dispatch_due_reports(loop.settings, loop.reports, make_report_publish(loop.settings)) == 1

    def sent_again() -> bool:
        row = loop.reports.get(loop.settings.collection, key)
        return row.state == "sent" and row.sent_at > before.sent_at

    wait_for(sent_again, timeout=60, what="the report sent again")


def _uid(film: Path) -> str:
    return str(pydicom.dcmread(film, stop_before_pixels=True).SOPInstanceUID)


def test_a_received_film_comes_back_as_a_pdf_and_an_sr_in_its_study_and_a_resend_replaces(loop: Loop):
    film = loop.film(20)
    loop.store([film])
    uids = _check_report(loop.wait_report(film), film)
    uid = _uid(film)
    wait_for(lambda: loop.reports.get(loop.settings.collection, sop_key(uid)).state == "sent", what="report sent")
    row = loop.reports.get(loop.settings.collection, sop_key(uid))
    assert row is not None and row.attempts == 1 and (row.pdf_uid, row.sr_uid) == uids

    loop.store([film])  # the same film again: its study has its report (one per study), no second one is planned
    _resend(loop, uid)  # and the report itself sent again: the same UIDs replace what Orthanc holds
    assert _check_report(loop.wait_report(film), film) == uids
    assert loop.reports.counts() == {"pending": 0, "sent": 1, "failed": 0}  # the seeded films (SEEDER) got none


def test_a_pacs_that_is_down_gets_every_report_once_it_is_back(loop: Loop):
    films = [loop.film(i) for i in (21, 22, 23)]
    keys = {sop_key(_uid(f)) for f in films}
    loop.orthanc.stop()
    try:
        loop.store(films)
        loop.wait_indexed(films)

        def failed() -> set[str]:
            return {r.key for r in loop.reports.failures()}

        wait_for(lambda: keys <= failed(), timeout=60, what="reports failed after their retry")
        rows = [loop.reports.get(loop.settings.collection, k) for k in keys]
        seen = [(r.attempts, r.reason) for r in rows if r is not None]
        assert len(seen) == 3 and all(n == 2 and "is down or did not answer" in (why or "") for n, why in seen), seen
        listed = json.loads(cxr(loop.env, "failures", "--json").stdout)
        assert {x["key"] for x in listed if x["stage"] == "report"} >= {"report:" + k[4:] for k in keys}
    finally:
        loop.orthanc.start()  # same ports, same storage
    out = cxr(loop.env, "retry", "--all")
    assert out.returncode == 0 and "re-armed 3 report(s)" in out.stdout, out.stdout + out.stderr
    for film in films:
        _check_report(loop.wait_report(film), film)
    # Orthanc holds a report before the worker that sent it marks it sent: wait for the mark, not only the files
    wait_for(
        lambda: all(loop.reports.get(loop.settings.collection, k).state == "sent" for k in keys),
        what="every report marked sent",
    )


def test_stow_rs_to_orthanc_dicomweb(loop: Loop):
    """The worker restarted with a DICOMweb destination (Orthanc's DICOMweb root, with the pull's credential
    options: basic auth here): a film C-STOREd into cxr comes back by STOW-RS, through the same queue and report
    task; then its report sent again (`cxr retry`) replaces it."""
    o = loop.orthanc
    stow_env = loop.env_for(o.dicomweb_url, report_user=o.user, report_password=o.password)
    loop.worker.stop()
    worker = WorkerProcess(stow_env, loop.root).start()
    try:
        film = loop.film(24)
        loop.store([film])
        uids = _check_report(loop.wait_report(film), film)
        key = sop_key(_uid(film))
        wait_for(lambda: loop.reports.get(loop.settings.collection, key).state == "sent", what="report sent")
        row = loop.reports.get(loop.settings.collection, key)
        assert row.destination.startswith(o.dicomweb_url.split("://")[0] + "://") and (row.pdf_uid, row.sr_uid) == uids
        _resend(loop, _uid(film))
        assert _check_report(loop.wait_report(film), film) == uids
    finally:
        worker.stop()
        loop.worker = WorkerProcess(loop.env, loop.root).start()  # back to C-STORE for the tests after


def test_the_receiver_refuses_to_index_a_pdf_and_an_sr(loop: Loop, tmp_path: Path):
    from services.pipeline.runtime import Runtime
    from services.reports.build import build_report

    uid = _uid(loop.film(0))
    with Runtime(loop.settings) as runtime:
        report = build_report(loop.settings.spool_path / f"{uid}.dcm", settings=loop.settings, searcher=runtime, k=4)
    paths = [save(report.pdf_dataset, tmp_path), save(report.sr_dataset, tmp_path)]
    got = send(paths, "127.0.0.1", loop.receiver.port, called="CXR", calling="MODALITY")
    assert set(got.values()) == {0xA901}, got
    for ds in (report.pdf_dataset, report.sr_dataset):
        key = sop_key(str(ds.SOPInstanceUID))
        assert key not in ledger_keys(loop.settings)
        assert not (loop.settings.spool_path / f"{ds.SOPInstanceUID}.dcm").exists()
    log = loop.receiver.text()
    assert "is an encapsulated document (PDF, CDA, ...), a report: never indexed" in log
    assert "is a Structured Report or Key Object Selection, a report: never indexed" in log


def test_destinations_are_parsed_or_refused_naming_the_forms():
    from services.errors import ConfigError
    from services.reports.deliver import DicomDestination, WebDestination, parse_destination

    assert parse_destination("dicom://ORTHANC@10.0.0.9:4242") == DicomDestination("ORTHANC", "10.0.0.9", 4242)
    assert parse_destination("https://pacs.example/dicom-web/") == WebDestination("https://pacs.example/dicom-web")
    for bad in ("10.0.0.9:4242", "dicom://10.0.0.9:4242", "dicom://ORTHANC@10.0.0.9", "ftp://pacs/x"):
        with pytest.raises(ConfigError) as err:
            parse_destination(bad)
        assert "dicom://AET@host:port" in err.value.hint
