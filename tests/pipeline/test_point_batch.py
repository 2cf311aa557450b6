"""PointBatch's wire format: typed QueuedPoints in the process, the same JSON in the messages as before they were
typed, so messages already waiting in Redis still decode."""

from __future__ import annotations

import json

import numpy as np

from services.pipeline.batch_jobs import PointBatch, QueuedPoint, vector_to_text

VECTOR = np.array([0.25, -1.5, 3.0, 0.0], dtype=np.float32)


def _message(point: dict) -> dict:
    return {"collection": "c", "dim": 4, "model_id": "m", "points": [point]}


def test_a_batch_travels_as_base64_vectors_under_the_same_field_names() -> None:
    batch = PointBatch("c", 4, "m", [QueuedPoint("file:k", "id-1", VECTOR, {"label": "x"}, update=True)])
    sent = json.loads(json.dumps(batch.to_json()))
    b64 = "AACAPgAAwL8AAEBAAAAAAA=="  # little-endian float32 bytes of VECTOR
    point = {"key": "file:k", "id": "id-1", "payload": {"label": "x"}, "update": True, "vector_b64": b64}
    assert sent == _message(point)
    assert list(sent["points"][0]) == ["key", "id", "payload", "update", "vector_b64"]
    (back,) = PointBatch.from_json(sent).points
    assert (back.key, back.point_id, back.payload, back.update) == ("file:k", "id-1", {"label": "x"}, True)
    assert back.vector.dtype == np.float32 and np.array_equal(back.vector, VECTOR)


def test_messages_in_the_old_forms_still_decode() -> None:
    b64 = {"key": "a", "id": "1", "payload": {}, "update": False, "vector_b64": vector_to_text(VECTOR)}
    plain = {"key": "b", "id": "2", "vector": VECTOR.tolist(), "payload": {"label": "y"}}  # no `update`: False
    for message, key, update in ((b64, "a", False), (plain, "b", False)):
        (point,) = PointBatch.from_json(_message(message)).points
        assert (point.key, point.update) == (key, update)
        assert point.vector.dtype == np.float32 and np.array_equal(point.vector, VECTOR)
    assert PointBatch.from_json(_message(b64)).to_json() == _message(b64)
