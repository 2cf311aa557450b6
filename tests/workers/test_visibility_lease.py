"""A task that outlives the broker's visibility timeout runs once, on kombu 5.6 and 5.7 alike.

kombu's Redis transport re-queues any message left unacknowledged longer than `visibility_timeout`, even one a live
worker is running; kombu 5.7 made that restore run as often as `unacked_restore_interval` says (5.6 ran it about
every 100 s). workers.lease renews what a live worker holds. The first test shows the transport's rule and the
renewal on a real Redis with kombu's own code; the second runs every worker layout the README documents, with the
files queued before any worker starts and a visibility timeout shorter than the first task (which loads the model).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import redis
from kombu import Connection, Queue

from services.pipeline.ledger import Ledger, file_key
from services.pipeline.sources import build_items
from services.pipeline.submission import submit
from tests.workers.conftest import WorkerProcess, queue_env, real_images, settings_of, wait_ledger
from workers.dispatch import make_publish
from workers.lease import LeaseRenewer, renew_interval_s, unacked_index_key

VISIBILITY_S = 1.0


def _restore_due(url: str) -> None:
    """What any worker's periodic sweep does: re-queue deliveries unacknowledged past the visibility timeout."""
    with Connection(url, transport_options={"visibility_timeout": VISIBILITY_S}) as conn:
        conn.default_channel.qos.restore_visible(num=100, interval=1)


@pytest.mark.parametrize("renewed", [False, True], ids=["abandoned", "renewed"])
def test_kombu_restores_a_held_message_past_the_visibility_timeout_unless_its_lease_is_renewed(
    redis_db_url: str, renewed: bool
) -> None:
    client = redis.Redis.from_url(redis_db_url)
    queue = Queue("lease-probe")
    options = {"visibility_timeout": VISIBILITY_S}
    with Connection(redis_db_url, transport_options=options) as holder:
        channel = holder.channel()
        holder.Producer(channel).publish({"n": 1}, routing_key=queue.name, declare=[queue])
        message = queue(channel).get(no_ack=False)  # held, unacknowledged: a running task
        assert message is not None and client.llen("lease-probe") == 0
        tags = [message.delivery_tag]
        renewer = LeaseRenewer(client, unacked_index_key(options), lambda: tags, renew_interval_s(VISIBILITY_S))
        if renewed:
            renewer.start()
        time.sleep(3 * VISIBILITY_S)  # the task outlives the visibility timeout three times over
        _restore_due(redis_db_url)
        renewer.stop()
        assert client.llen("lease-probe") == (0 if renewed else 1)
        if renewed:
            assert renewer.renewed >= 4
            message.ack()
            assert client.zcard(unacked_index_key(options)) == 0  # acknowledged: renewal never brings it back


LAYOUTS = {
    "worker": [[]],  # cxr worker: embed x1, the index writer, the sweep
    "worker-c2": [["--concurrency", "2"]],
    "split": [["--queues", "embed", "-c", "2"], ["--queues", "index", "--no-sweep"]],  # compose's two roles
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_task_longer_than_the_visibility_timeout_runs_once_in_every_worker_layout(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str, workers: list, layout: str
) -> None:
    env = queue_env(
        tmp_path / "data",
        redis_db_url,
        tiny_checkpoint,
        visibility_timeout_s=VISIBILITY_S,
        unacked_restore_interval_s=0.25,  # kombu 5.7 sweeps four times a second
        requeue_after_s=600,  # the ledger's own re-send stays out of the way: only Redis could deliver twice
    )
    settings = settings_of(env)
    paths = real_images(cxr_public, 24)
    items, _ = build_items(paths)
    assert submit(settings, items, publish=make_publish(settings)).sent == 24  # queued while no worker runs
    for i, args in enumerate(LAYOUTS[layout]):
        workers.append(WorkerProcess(env, tmp_path / f"worker{i}.log", "--loglevel", "INFO", *args))
    counts = wait_ledger(settings, lambda c: c["indexed"] == 24, timeout=180, what="all 24 files indexed")
    assert counts["failed"] == 0
    time.sleep(4 * VISIBILITY_S)  # a restored duplicate would be picked up and claimed by now
    rows = Ledger(settings.ledger_path).items([file_key(p, settings.salt) for p in paths])
    assert sorted(r.attempts for r in rows) == [1] * 24, "a message was delivered and started twice"
    logs = "\n".join(w.log.read_text(errors="replace") for w in workers)
    took = [float(s) for s in re.findall(r"Task cxr\.embed\[[^\]]+\] succeeded in ([0-9.]+)s", logs)]
    assert len(took) == 3, logs[-3000:]  # 24 files in tasks of 8, each run once
    assert max(took) > VISIBILITY_S, f"no task outlived the visibility timeout ({took}); nothing was tested"
