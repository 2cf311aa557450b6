"""What `cxr worker` runs: one celery worker process per queue, restarted when it exits, plus the heartbeat.

- A celery child that exits on its own (the watchdog found its consumer lost, an OOM kill, a crash) is started
  again after a short back-off (1 s, doubling to 30 s while it keeps failing fast); the other keeps running. The
  'processing' items it may have held (the index writer's unflushed points) go back to the sweep at once.
- The index writer is the single writer of the embedded store: a `cxr worker` runs it only while it holds the
  store's writer lock (`<store>.writer.lock`, an flock inherited by the celery child, so the lock lives as long
  as either). A second `cxr worker` on the same data directory stands by: it embeds, and takes over the index
  queue if the first one goes away. Two writers passing the store back and forth ran 3.5x slower than one.
- The index writer's child also consumes the `report` queue: a report's search runs in the process that holds the
  embedded store, so it never takes the store from the writer (services.reports.delivery).
- Every `worker_heartbeat_s` the worker beats in the ledger (services.pipeline.heartbeats); a clean stop leaves.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from services.config import Settings
from services.pipeline.heartbeats import Heartbeats, worker_id
from services.pipeline.ledger import Ledger
from workers.queues import EMBED_QUEUE, INDEX_QUEUE, REPORT_QUEUE

MAX_RESTART_DELAY_S = 30.0
HEALTHY_RUN_S = 60.0  # a child that ran this long before exiting is restarted after the shortest delay


def writer_lock_path(settings: Settings) -> Path:
    """The flock file that makes one process the index writer of the embedded store."""
    store = Path(settings.store_path)
    return store.with_name(store.name + ".writer.lock")


def try_writer_lock(path: Path) -> int | None:
    """The locked fd of `path` (the pid written in it), or None when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def consumed_queues(queue: str) -> str:
    """What the celery child started for `queue` consumes: the index writer takes the reports too."""
    return f"{INDEX_QUEUE},{REPORT_QUEUE}" if queue == INDEX_QUEUE else queue


def celery_command(queue: str, concurrency: int, loglevel: str) -> list[str]:
    # Tasks run in forked pool processes (a crash there requeues the task at once); the index writer has one.
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app:app",
        "worker",
        "-Q",
        consumed_queues(queue),
        "-P",
        "prefork",
        "-c",
        str(concurrency),
        "-n",
        f"{queue}-{os.getpid()}@%h",
        "-l",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


class Supervisor:
    """Starts, watches and restarts the celery children of `queues`; `run(stopping)` until `stopping()`."""

    def __init__(
        self, settings: Settings, queues: list[str], concurrency: int, loglevel: str, say: Callable[[str], None]
    ) -> None:
        self.settings, self.queues, self.say = settings, queues, say
        self.sizes = {q: concurrency if q == EMBED_QUEUE else 1 for q in queues}
        self.loglevel = loglevel
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_at: dict[str, float] = {}
        self.next_start: dict[str, float] = dict.fromkeys(queues, 0.0)
        self.delay: dict[str, float] = dict.fromkeys(queues, 1.0)
        self.lock_fd: int | None = None
        self.standing_by = False
        self.restarts = 0
        self.id = worker_id()
        self.heartbeats = Heartbeats(settings.ledger_path)

    def _needs_lock(self, queue: str) -> bool:
        return queue == INDEX_QUEUE and not self.settings.qdrant_url

    def _start(self, queue: str, now: float) -> None:
        fds: tuple[int, ...] = ()
        if self._needs_lock(queue):
            if self.lock_fd is None:
                self.lock_fd = try_writer_lock(writer_lock_path(self.settings))
            if self.lock_fd is None:
                if not self.standing_by:
                    path = writer_lock_path(self.settings)
                    self.say(
                        f"the index writer of {self.settings.store_path} runs in another process (pid"
                        f" {lock_holder(path)}, {path.name}); this worker stands by for it and embeds meanwhile"
                    )
                    self.standing_by = True
                self.next_start[queue] = now + 1.0
                return
            if self.standing_by:
                self.say("the other index writer is gone; this worker is the index writer now")
                self.standing_by = False
            fds = (self.lock_fd,)
        cmd = celery_command(queue, self.sizes[queue], self.loglevel)
        self.procs[queue] = subprocess.Popen(cmd, pass_fds=fds)
        self.started_at[queue] = now

    def _reap_exited(self, now: float) -> None:
        for queue, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[queue]
            ran = now - self.started_at[queue]
            self.delay[queue] = 1.0 if ran >= HEALTHY_RUN_S else min(MAX_RESTART_DELAY_S, self.delay[queue] * 2)
            self.next_start[queue] = now + self.delay[queue]
            self.restarts += 1
            released = Ledger(self.settings.ledger_path).release_processing(
                touched_before=time.time(), reason=f"celery worker for {queue} exited ({code})"
            )
            self.say(
                f"celery worker for {queue} exited with {code} after {ran:.0f} s; restarting it in"
                f" {self.delay[queue]:.0f} s ({released} item(s) in progress handed back to the sweep)"
            )

    def run(self, stopping: Callable[[], bool]) -> None:
        beat_every = self.settings.worker_heartbeat_s
        next_beat = 0.0
        while not stopping():
            now = time.monotonic()
            self._reap_exited(now)
            for queue in self.queues:
                if queue not in self.procs and now >= self.next_start[queue]:
                    self._start(queue, now)
            if now >= next_beat:
                try:
                    self.heartbeats.beat(self.id, ",".join(self.queues))
                except Exception as exc:  # noqa: BLE001 - a locked ledger for a moment; beat next round
                    self.say(f"heartbeat not recorded: {exc}")
                next_beat = now + beat_every
            time.sleep(0.2)

    def stop(self) -> None:
        """Warm-stop the children (running tasks finish), then leave the heartbeat table."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
        with contextlib.suppress(Exception):  # else the row goes stale and another worker's sweep reaps it
            self.heartbeats.leave(self.id)
