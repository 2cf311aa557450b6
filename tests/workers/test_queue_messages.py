"""`cxr index --queue` says what happened to the files it recorded, when another dispatcher got there first.

The receiver, the API and every worker's sweep dispatch from the same ledger (one at a time, under its dispatch
lock). Here another dispatcher holds the lock while `cxr index --queue` records, then sends the new items itself:
the command must report them as sent by another dispatcher, not "sent 0 ... (is Redis up?)".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from services.pipeline.ledger import Ledger
from services.pipeline.submission import _dispatch_lock
from tests.services import wait_for
from tests.workers.conftest import CXR, REPO, queue_env, real_images, settings_of
from workers.dispatch import make_publish


def _index_queue_while_another_dispatcher_sends(tmp_path: Path, env: dict, folder: Path, *args: str) -> str:
    settings = settings_of(env)
    ledger = Ledger(settings.ledger_path)
    with _dispatch_lock(ledger):  # the other dispatcher (a receiver, a sweep) is busy
        proc = subprocess.Popen(
            [*CXR, "index", str(folder), "--queue", *args], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        wait_for(lambda: ledger.counts()["received"] == 4, timeout=60, what="the files recorded")
        publish = make_publish(settings)
        for item in ledger.due(requeue_after_s=settings.requeue_after_s):  # what dispatch_due does, lock held
            publish(item.collection, [item.key])
            ledger.mark_queued([item.key], collection=item.collection)
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_items_sent_by_another_dispatcher_are_reported_as_such(
    tmp_path: Path, cxr_public: Path, tiny_checkpoint: Path, redis_db_url: str
) -> None:
    env = queue_env(tmp_path / "data", redis_db_url, tiny_checkpoint)
    folder = tmp_path / "in"
    folder.mkdir()
    for p in real_images(cxr_public, 8)[:4]:
        shutil.copy(p, folder / p.name)
    text = _index_queue_while_another_dispatcher_sends(tmp_path, env, folder)
    assert "recorded 4" in text and "sent to the queue now 0" in text, text
    assert "already sent by another dispatcher 4" in text, text
    assert "Redis" not in text, text

    again = tmp_path / "in2"
    again.mkdir()
    for p in real_images(cxr_public, 8)[4:]:
        shutil.copy(p, again / p.name)
    report = json.loads(_index_queue_while_another_dispatcher_sends(tmp_path, env, again, "--json"))
    assert report["recorded"] == 4 and report["sent_now"] == 0, report
    assert report["sent_by_another_dispatcher"] == 4 and report["waiting_for_broker"] == 0, report
