"""Exits a celery worker whose consumer stopped consuming, so that `cxr worker` (or compose/systemd) restarts it.

After a Redis outage that lands while a task runs, Celery 5.x can reconnect without a live consumer (celery #8091,
#9054, #10302): the process stays up, logs "Connected to redis", and never takes a message again. Reproduced
here (tests/workers/test_redis_outage_mid_task.py): Redis stopped 8 s mid-task, 40 items 'queued' and untouched
90 s after it returned. The symptom is plain from outside the consumer: messages wait on this worker's queues
while it runs nothing and holds nothing. A healthy idle consumer takes a waiting message within a second (kombu
polls BRPOP every second), and a busy one holds what it runs, so "waiting, and idle" for `watchdog_stall_s` is a
lost consumer. The watchdog then exits the worker (nothing runs, so nothing is lost) and a fresh process consumes.

It also writes a status file per worker (DATA_DIR/workers/<pid>.json: queues, last check, stalled since) that
deploy/healthcheck.py reads. Celery-specific, so it lives here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("cxr.watchdog")

# kombu keeps a queue's messages in the list named after it, plus one list per priority step (sep \x06\x16).
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
EXIT_STALLED = 75  # EX_TEMPFAIL: `cxr worker` restarts the process


def check_interval_s(stall_s: float) -> float:
    """How often the watchdog looks: ten times per stall bound, between 0.5 s and 10 s."""
    return min(10.0, max(0.5, stall_s / 10))


def status_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "workers"


def waiting_messages(client: Any, queues: list[str]) -> int:
    """Messages waiting in Redis on `queues` (raises the client's error while Redis is down)."""
    pipe = client.pipeline()
    for q in queues:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(q + suffix)
    return sum(pipe.execute())


class ConsumerWatchdog(threading.Thread):
    """Every `interval_s`: if `queues()` hold messages while `busy()` is false, for `stall_s` in a row, call
    `on_stall()`. Redis not answering is an outage, not a stall (Celery reconnects by itself)."""

    def __init__(
        self,
        client: Any,
        queues: Callable[[], list[str]],
        busy: Callable[[], bool],
        *,
        stall_s: float,
        status_file: Path | None,
        on_stall: Callable[[], None],
    ) -> None:
        super().__init__(name="cxr-watchdog", daemon=True)
        self.client, self.queues, self.busy = client, queues, busy
        self.stall_s, self.status_file, self.on_stall = stall_s, status_file, on_stall
        self.interval_s = check_interval_s(stall_s)
        self.stalled_since: float | None = None
        self._stop = threading.Event()

    def check(self, now: float) -> bool:
        """One look; True when the consumer is judged lost."""
        names = self.queues()
        try:
            waiting = waiting_messages(self.client, names) if names else 0
        except Exception:  # noqa: BLE001 - Redis away: the consumer reconnects; judge again once it answers
            self.stalled_since = None
            return False
        if waiting and not self.busy():
            self.stalled_since = self.stalled_since or now
        else:
            self.stalled_since = None
        self._write_status(now, names, waiting)
        return self.stalled_since is not None and now - self.stalled_since >= self.stall_s

    def _write_status(self, now: float, queues: list[str], waiting: int) -> None:
        if self.status_file is None:
            return
        doc = {"pid": os.getpid(), "queues": queues, "checked_at": now, "waiting": waiting}
        doc.update(stalled_since=self.stalled_since, interval_s=self.interval_s, stall_s=self.stall_s)
        try:
            self.status_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc))
            tmp.replace(self.status_file)
        except OSError as exc:
            log.warning("cannot write the worker status file: %s", exc)

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.check(time.time()):
                log.error(
                    "no task taken for %.0f s while %s hold messages: the consumer is lost (celery#8091);"
                    " exiting so that the worker is restarted",
                    self.stall_s,
                    ",".join(self.queues()),
                )
                self.on_stall()
                return

    def stop(self) -> None:
        self._stop.set()


def exit_stalled_worker() -> None:
    """Cold-stop this celery worker (nothing runs: the watchdog only fires when idle), then make sure it exits."""
    os.kill(os.getpid(), signal.SIGQUIT)
    time.sleep(15)
    os._exit(EXIT_STALLED)


def watchdog_step() -> type:
    """A Celery consumer bootstep that runs a ConsumerWatchdog beside the consumer (added by workers.app)."""
    import redis
    from celery import bootsteps
    from celery.worker import state

    class Watchdog(bootsteps.StartStopStep):
        requires = {"celery.worker.consumer.tasks:Tasks"}

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self.dog: ConsumerWatchdog | None = None

        def start(self, c: Any) -> None:
            # Once per worker process, like the lease keeper: it must outlive the consumer's restarts.
            if self.dog is not None and self.dog.is_alive():
                return
            conf, settings = c.app.conf, c.app.cxr_settings
            options = dict(conf.broker_transport_options or {})
            client = redis.Redis.from_url(
                conf.broker_url,
                socket_timeout=options.get("socket_timeout"),
                socket_connect_timeout=options.get("socket_connect_timeout"),
            )
            queues = c.app.amqp.queues
            names = sorted(queues.consume_from or queues)  # -Q selects; without it every declared queue
            self.dog = ConsumerWatchdog(
                client,
                lambda: names,
                lambda: bool(state.active_requests or state.reserved_requests),
                stall_s=settings.watchdog_stall_s,
                status_file=status_dir(settings.data_dir) / f"{os.getpid()}.json",
                on_stall=exit_stalled_worker,
            )
            self.dog.start()

    return Watchdog
