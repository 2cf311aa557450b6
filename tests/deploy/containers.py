"""The compose file's infrastructure as throwaway containers (testcontainers), where a Docker engine exists.

Each container runs the exact image, command, environment and healthcheck command of its docker-compose.yml
service, and is ready when that healthcheck reports healthy, so these tests also prove the healthchecks work on
the real images. Without an engine every user skips at once, with the reason.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest

from tests.deploy.compose import docker_healthcheck, environment, interpolate, load_compose

STARTUP_TIMEOUT_S = 180  # includes pulling the image on a cold machine


@cache
def docker_engine_problem() -> str | None:
    """None when a Docker engine answers a ping, else why not. Without one, `ping()` fails within milliseconds."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # DockerException without an engine; anything else is just as fatal here
        return f"{type(exc).__name__}: {exc}"
    return None


def require_docker_engine() -> None:
    """Skip the calling test (or fixture) when no Docker engine is reachable."""
    problem = docker_engine_problem()
    if problem is not None:
        pytest.skip(
            "no Docker engine, so the compose images cannot run under testcontainers here "
            f"(docker.from_env().ping(): {problem[:200]})"
        )


@contextmanager
def compose_service(name: str, env: dict[str, str], ports: list[int]) -> Iterator[Any]:
    """Start compose service `name` as a testcontainers DockerContainer, wait until its own healthcheck passes.

    `env` supplies the variables the compose file interpolates; `ports` are container ports to map to free
    host ports. The healthcheck command is the compose one, polled every second instead of every `interval`.
    """
    require_docker_engine()
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

    service = load_compose()["services"][name]
    container = DockerContainer(service["image"])
    for key, value in environment(service).items():
        container.with_env(key, interpolate(value, env))
    if service.get("command"):
        container.with_command(service["command"])
    container.with_exposed_ports(*ports)
    healthcheck = docker_healthcheck(service, env) | {"interval": 10**9, "start_period": 0}
    container.with_kwargs(healthcheck=healthcheck)
    container.waiting_for(HealthcheckWaitStrategy().with_startup_timeout(STARTUP_TIMEOUT_S))
    with container:
        yield container


@dataclass(frozen=True)
class QdrantServer:
    """A running Qdrant server container: its URL from this host, and the API key it requires."""

    url: str
    api_key: str


@contextmanager
def qdrant_server() -> Iterator[QdrantServer]:
    """The compose `qdrant` service (pinned image, API key on) on a free host port."""
    key = secrets.token_urlsafe(24)
    with compose_service("qdrant", {"CXR_QDRANT_API_KEY": key}, [6333]) as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(6333)
        yield QdrantServer(f"http://{host}:{port}", key)


def redis_url(container: Any) -> str:
    """The URL of a running Redis container's mapped port (it can change when the container restarts)."""
    container.get_wrapped_container().reload()
    return f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"


@contextmanager
def redis_server() -> Iterator[Any]:
    """The compose `redis` service (its persistence flags and healthcheck) on a free host port."""
    with compose_service("redis", {}, [6379]) as container:
        yield container
