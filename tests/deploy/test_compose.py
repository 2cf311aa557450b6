"""docker-compose.yml, validated without a Docker engine: images, ports, volumes, healthchecks, dependencies, the
commands each cxr service runs, and that every CXR_ variable it uses is a real setting."""

from __future__ import annotations

import re
from typing import Any

import pytest

from services.config import Settings
from tests.deploy.compose import (
    REPO,
    MissingVariable,
    docker_healthcheck,
    duration_s,
    environment,
    interpolate,
    load_compose,
    named_volume_mounts,
    variables,
)

CXR_SERVICES = {"worker-embed", "worker-index", "api", "dicom"}
INFRA_SERVICES = {"qdrant", "redis", "prometheus"}
WORKERS = {"worker-embed", "worker-index"}
SETTINGS_VARS = {f"CXR_{name.upper()}" for name in Settings.model_fields}
PROBES = {"http", "tcp", "dicom", "worker"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _published(service: dict[str, Any], env: dict[str, str] | None = None) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) for each short-syntax `ports` entry, variables interpolated from
    `env` (none set: their defaults)."""
    out = []
    for entry in service.get("ports") or []:
        parts = interpolate(str(entry), env or {}).split(":")
        address = parts[0] if len(parts) == 3 else "0.0.0.0"
        out.append((address, int(parts[-2]), int(parts[-1].split("/")[0])))
    return out


def _option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_the_expected_services_and_nothing_else(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == CXR_SERVICES | INFRA_SERVICES


def test_infra_images_are_pinned_and_cxr_is_built_from_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    for name in INFRA_SERVICES:
        image = services[name]["image"]
        repo, _, tag = image.partition(":")
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(-[a-z0-9.]+)?", tag), f"{name}: {image} is not pinned to a release"
        assert "build" not in services[name]
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:v")
    for name in CXR_SERVICES:
        build = services[name]["build"]
        assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        assert services[name]["image"] == services["api"]["image"], "one cxr image for every role"


def test_published_ports_are_loopback_unless_the_env_file_binds_the_receiver(
    services: dict[str, dict[str, Any]],
) -> None:
    published = {name: _published(svc) for name, svc in services.items()}
    assert published["redis"] == [], "the broker is reached only on the compose network"
    assert published["worker-embed"] == published["worker-index"] == []
    assert published["qdrant"] == [("127.0.0.1", 6333, 6333)]
    assert published["api"] == [("127.0.0.1", 8000, 8000)]
    assert published["prometheus"] == [("127.0.0.1", 9090, 9090)]
    # The receiver is reachable from the hospital network only once .env names the address to publish it on.
    assert published["dicom"] == [("127.0.0.1", 11112, 11112)]
    assert _published(services["dicom"], {"CXR_DICOM_BIND": "10.1.2.3"}) == [("10.1.2.3", 11112, 11112)]
    for name in ("api", "dicom"):
        command = services[name]["command"]
        assert int(_option(command, "--port")) == published[name][0][2], f"{name} listens where it is published"


def test_every_stateful_service_keeps_its_state_in_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose["volumes"])
    mounts = {name: named_volume_mounts(svc) for name, svc in services.items()}
    used = {volume for per_service in mounts.values() for volume in per_service.values()}
    assert used == declared, "every declared volume is used, and every used volume is declared"
    assert mounts["qdrant"]["/qdrant/storage"] == "qdrant-storage"
    assert mounts["redis"]["/data"] == "redis-data"
    data_volumes = set()
    for name in CXR_SERVICES:
        env = environment(services[name])
        data_volumes.add(mounts[name][env["CXR_DATA_DIR"]])
    # The ledger and the patient-hash salt live in CXR_DATA_DIR: every cxr process must see the same one.
    assert data_volumes == {"cxr-data"}


def test_the_spool_volume_is_shared_by_the_receiver_and_the_workers(services: dict[str, dict[str, Any]]) -> None:
    spool_volumes = set()
    for name in ("dicom", *WORKERS, "api"):
        svc = services[name]
        spool = environment(svc)["CXR_SPOOL_DIR"]
        assert spool in named_volume_mounts(svc), f"{name} does not mount the spool at CXR_SPOOL_DIR={spool}"
        spool_volumes.add(named_volume_mounts(svc)[spool])
        read_only = any(v.split(":")[1] == spool and v.endswith(":ro") for v in svc["volumes"])
        assert read_only == (name == "api"), f"{name}: the receiver and workers write the spool, the API reads it"
    assert spool_volumes == {"cxr-spool"}


def test_every_service_has_a_bounded_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        hc = svc["healthcheck"]
        test = hc["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        assert duration_s(hc["timeout"]) < duration_s(hc["interval"]), name
        assert hc["retries"] >= 2 and duration_s(hc["start_period"]) > 0, name


def test_cxr_healthchecks_call_the_probe_shipped_in_the_image(services: dict[str, dict[str, Any]]) -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "COPY deploy/healthcheck.py /app/deploy/healthcheck.py" in dockerfile
    for name in CXR_SERVICES:
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "/app/deploy/healthcheck.py"], name
        probe = next(arg for arg in test[3:] if not arg.startswith("-") and not arg.replace(".", "").isdigit())
        assert probe in PROBES, f"{name}: unknown probe {probe}"
    for name in WORKERS:
        test = services[name]["healthcheck"]["test"]
        assert "worker" in test and _option(test, "--queue") == _option(services[name]["command"], "--queues"), name
    assert "http://127.0.0.1:8000/readyz" in services["api"]["healthcheck"]["test"]
    dicom = services["dicom"]["healthcheck"]["test"]
    assert dicom[dicom.index("dicom") + 2] == _option(services["dicom"]["command"], "--port")
    assert _option(dicom, "--aet") == _option(services["dicom"]["command"], "--aet")


def test_the_qdrant_healthcheck_asks_readyz_with_shell_builtins_only(services: dict[str, dict[str, Any]]) -> None:
    hc = docker_healthcheck(services["qdrant"], {"CXR_QDRANT_API_KEY": "k"})
    assert hc["test"][:3] == ["CMD", "bash", "-c"]
    script = hc["test"][3]
    # $$ in the file reaches the container as $: the key is the container's variable, not interpolated by compose.
    assert '"$QDRANT__SERVICE__API_KEY"' in script and "/dev/tcp/127.0.0.1/6333" in script
    assert "GET /readyz" in script
    for tool in ("curl", "wget", "nc "):
        assert tool not in script
    assert hc["interval"] == 10 * 10**9 and hc["retries"] == 6


def test_dependencies_wait_for_health_where_it_matters(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for target, spec in (svc.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target]
    for name in WORKERS:
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == deps["qdrant"]["condition"] == "service_healthy", name
    assert services["api"]["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_started", "search works without Redis"
    # Receiving must keep working while Redis or Qdrant is down: the receiver waits for neither.
    assert not services["dicom"].get("depends_on")
    assert not services["qdrant"].get("depends_on") and not services["redis"].get("depends_on")


def test_redis_persists_and_never_evicts_queued_tasks(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    assert command[0] == "redis-server"
    assert _option(command, "--appendonly") == "yes"
    assert _option(command, "--maxmemory-policy") == "noeviction"
    assert "--save" not in command or _option(command, "--save") != ""


def test_roles_one_index_writer_and_scalable_embedders(services: dict[str, dict[str, Any]]) -> None:
    def queues(svc: dict[str, Any]) -> set[str]:
        return set((_option(svc["command"], "--queues") or "").split(","))

    writers = [n for n, s in services.items() if s.get("command", [None])[0] == "worker" and "index" in queues(s)]
    assert writers == ["worker-index"]
    index = services["worker-index"]
    assert _option(index["command"], "--concurrency") == "1"
    assert index.get("deploy", {}).get("replicas", 1) == 1 and "scale" not in index
    assert queues(services["worker-embed"]) == {"embed"}
    assert services["api"]["command"][:3] == ["serve", "--host", "0.0.0.0"]
    assert services["dicom"]["command"][0] == "dicom-listen"


def test_compose_commands_are_real_cxr_commands_with_those_options(services: dict[str, dict[str, Any]]) -> None:
    import typer.main

    from cli.main import app

    group = typer.main.get_command(app)
    for name in CXR_SERVICES:
        command = services[name]["command"]
        sub = group.commands.get(command[0])  # type: ignore[attr-defined]
        assert sub is not None, f"{name}: `cxr {command[0]}` does not exist"
        known = {opt for param in sub.params for opt in (*param.opts, *param.secondary_opts)}
        for arg in command[1:]:
            if arg.startswith("--"):
                assert arg in known, f"{name}: `cxr {command[0]}` has no option {arg}"


def test_every_cxr_variable_is_a_setting(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    used = {var for var, _ in variables(compose) if var.startswith("CXR_")}
    for svc in services.values():
        used |= {key for key in environment(svc) if key.startswith("CXR_")}
    assert used, "the compose file configures cxr through CXR_ variables"
    assert used <= SETTINGS_VARS, f"not in services.config.Settings: {sorted(used - SETTINGS_VARS)}"


def test_secrets_are_required_not_defaulted(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    ops = {}
    for var, op in variables(compose):
        ops.setdefault(var, set()).add(op)
    # The API binds 0.0.0.0 and the receiver may be published on the hospital network: both need their guard set.
    for var in ("CXR_API_TOKEN", "CXR_QDRANT_API_KEY", "CXR_DICOM_ALLOW_AETS"):
        assert ops[var] == {":?"}, f"{var} must be required (${{{var}:?...}}), never defaulted"
    assert "CXR_DICOM_ALLOW_AETS" in environment(services["dicom"])
    api_env = environment(services["api"])
    with pytest.raises(MissingVariable, match="CXR_API_TOKEN"):
        interpolate(api_env["CXR_API_TOKEN"], {"CXR_API_TOKEN": ""})
    assert interpolate(api_env["CXR_API_TOKEN"], {"CXR_API_TOKEN": "t0ken"}) == "t0ken"
    # Every cxr service gets the Qdrant key, and Qdrant requires the same one.
    qdrant_key = environment(services["qdrant"])["QDRANT__SERVICE__API_KEY"]
    for name in CXR_SERVICES:
        assert environment(services[name])["CXR_QDRANT_API_KEY"] == qdrant_key, name


def test_cxr_services_read_the_env_file_and_pin_their_paths(services: dict[str, dict[str, Any]]) -> None:
    for name in CXR_SERVICES:
        svc = services[name]
        assert svc["env_file"] == [{"path": ".env", "required": False}], name
        env = environment(svc)
        # environment wins over env_file, so a stray path in .env cannot move the state out of its volume.
        assert env["CXR_DATA_DIR"] == "/data" and env["CXR_SPOOL_DIR"] == "/spool", name
        assert env["CXR_QDRANT_URL"] == "http://qdrant:6333" and env["CXR_REDIS_URL"].startswith("redis://redis:")
        assert "CXR_QDRANT_PATH" not in env, "a path and a URL together are refused"
        assert svc["init"] is True and svc["restart"] == "unless-stopped", name


def test_prometheus_is_optional_and_scrapes_every_cxr_metrics_port(services: dict[str, dict[str, Any]]) -> None:
    import yaml

    assert services["prometheus"]["profiles"] == ["metrics"], "`docker compose up` starts without it"
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for cfg in job["static_configs"] for t in cfg["targets"]}
    expected = {f"{name}:{_option(services[name]['command'], '--metrics-port')}" for name in CXR_SERVICES}
    assert targets == expected
    for name in CXR_SERVICES:  # reachable by the scraper inside the network, never published
        assert environment(services[name])["CXR_METRICS_BIND"] == "0.0.0.0"
        assert all(port[2] != 9100 for port in _published(services[name]))
