"""Helpers for the queue tests: real `cxr worker` processes (own process group, so a test can SIGKILL the whole
worker), a real Redis, the real ledger and embedded store, real images from cxr-public."""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.config import Settings
from services.pipeline.ledger import Ledger
from tests.services import wait_for

REPO = Path(__file__).resolve().parents[2]
CXR = [sys.executable, "-m", "cli.main"]
_db = itertools.count(1)


def queue_env(data_dir: Path, redis_url: str, model: Path, **overrides: object) -> dict[str, str]:
    """The environment of a test's CLI and worker processes: short intervals so failures heal in seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(data_dir),
        CXR_REDIS_URL=redis_url,
        CXR_MODEL=str(model),
        CXR_TORCH_THREADS="1",
        CXR_DECODE_WORKERS="1",
        CXR_QUEUE_BATCH_SIZE="8",
        CXR_SWEEP_INTERVAL_S="0.5",
        CXR_REQUEUE_AFTER_S="20",
        CXR_VISIBILITY_TIMEOUT_S="6",
        CXR_UNACKED_RESTORE_INTERVAL_S="1",
        CXR_RETRY_BACKOFF_S="0.2",
        CXR_BROKER_TIMEOUT_S="1",
        CXR_STORE_LINGER_S="0.3",
        CXR_STORE_WAIT_S="10",
    )
    env.update({f"CXR_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


def settings_of(env: dict[str, str]) -> Settings:
    """The Settings the processes started with `env` see."""
    return Settings(**{k[4:].lower(): v for k, v in env.items() if k.startswith("CXR_")})


def cxr(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CXR, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


class WorkerProcess:
    """`cxr worker` in its own session: `kill()` SIGKILLs it with its celery children, as a crash would."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [*CXR, "worker", "--loglevel", "WARNING", *args],
                env=env,
                cwd=REPO,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        self._signal_group(signal.SIGKILL)  # whatever is left of the group
        self.proc.wait(timeout=30)

    def dump_stacks(self) -> None:
        """Ask `cxr worker` to write every thread's stack into its log (SIGUSR1, faulthandler), for a stuck run."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(1.0)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def session_processes(session: int) -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of every process in the session `session` (a `WorkerProcess` leads its own: the
    `cxr worker` parent, its celery workers and their pool processes), read from /proc."""
    found: dict[int, tuple[int, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # after the name: state, ppid, pgrp, sid
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # ended while we looked
            continue
        if int(fields[3]) == session:
            found[int(entry.name)] = (int(fields[1]), argv)
    return found


@pytest.fixture()
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Start workers with `WorkerProcess(...)` and append them here; all are stopped at teardown."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


@pytest.fixture()
def redis_db_url(redis_server) -> Iterator[str]:  # noqa: ANN001
    """A database of the session's Redis, emptied before and after the test, so tests never see each other's
    queues (there are 16 numbers and more tests: an earlier test's unacknowledged message, restored into a later
    test's queue, once ran there as a duplicate delivery)."""
    import redis

    url = redis_server.url.rsplit("/", 1)[0] + f"/{next(_db) % 16}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def real_images(cxr_public: Path, n: int) -> list[Path]:
    """`n` real images of cxr-public, the smallest files first (fast to decode), every class mixed."""
    with (cxr_public / "manifest.csv").open(newline="") as fh:
        paths = [cxr_public / row["path"] for row in csv.DictReader(fh)]
    return sorted(paths, key=lambda p: (p.stat().st_size, p.name))[:n]


def wait_ledger(settings: Settings, done: callable, *, timeout: float, what: str) -> dict[str, int]:  # type: ignore[valid-type]
    ledger = Ledger(settings.ledger_path)
    wait_for(lambda: done(ledger.counts()), timeout=timeout, what=what)
    return ledger.counts()
