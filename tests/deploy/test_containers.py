"""The compose file's Redis as a real container (testcontainers): it answers PING through its own healthcheck,
runs with the persistence flags the queue relies on, carries a Celery-style JSON message on a named queue, and
keeps a queued message across a restart. Skips with the reason where no Docker engine exists.

The Qdrant container runs the whole store contract suite instead: the `container` case of `store_case` in
tests/index/conftest.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.containers import docker_engine_problem, redis_server, redis_url


@pytest.fixture(scope="module")
def redis_container() -> Iterator[Any]:
    with redis_server() as container:
        yield container


def test_redis_answers_ping_with_the_compose_persistence_settings(redis_container: Any) -> None:
    import redis

    client = redis.Redis.from_url(redis_url(redis_container), socket_timeout=5)
    assert client.ping() is True
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    state = redis_container.get_wrapped_container().attrs["State"]["Health"]
    assert state["Status"] == "healthy" and state["Log"][-1]["ExitCode"] == 0


def test_a_queued_json_message_survives_a_redis_restart(redis_container: Any) -> None:
    import redis
    from kombu import Connection

    queue = f"embed-smoke-{uuid.uuid4().hex[:8]}"
    body = {"paths": ["/spool/1.2.3.dcm"], "collection": "cxr"}
    with Connection(redis_url(redis_container), connect_timeout=5) as conn:
        conn.SimpleQueue(queue, serializer="json").put(body)
    # A graceful restart flushes the append-only file; the message must still be there afterwards.
    redis_container.get_wrapped_container().restart(timeout=30)
    from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

    HealthcheckWaitStrategy().with_startup_timeout(60).wait_until_ready(redis_container)
    with Connection(redis_url(redis_container), connect_timeout=5) as conn:
        simple = conn.SimpleQueue(queue, serializer="json")
        message = simple.get(timeout=10)
        assert message.payload == body and message.content_type == "application/json"
        assert json.loads(message.body) == body, "JSON on the wire, never pickle"
        message.ack()
    assert redis.Redis.from_url(redis_url(redis_container), socket_timeout=5).llen(queue) == 0


def test_the_engine_check_is_fast_so_skipping_costs_nothing() -> None:
    import time

    docker_engine_problem.cache_clear()
    start = time.monotonic()
    first = docker_engine_problem()
    assert time.monotonic() - start < 5
    assert docker_engine_problem() is first, "checked once per session"
