"""deploy/Dockerfile, checked as text (no Docker engine here): CPU torch pinned like the project, a CUDA base by
build argument, every COPY source present, a non-root user owning the state directories."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.deploy.compose import REPO, environment, load_compose

DOCKERFILE = REPO / "deploy" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return _instructions()


def _args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)


def test_base_image_is_a_build_argument_defaulting_to_python(instructions: list[tuple[str, str]]) -> None:
    assert instructions[0] == ("ARG", instructions[0][1]) and instructions[0][1].startswith("BASE_IMAGE=python:3.11")
    assert [rest for word, rest in instructions if word == "FROM"] == ["${BASE_IMAGE}"]
    # A CUDA base image has no Python; the image installs the distribution's when python3 is missing.
    assert "command -v python3" in DOCKERFILE.read_text()


def test_torch_is_the_projects_pin_from_the_cpu_index(instructions: list[tuple[str, str]]) -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("torch")]
    args = _args(instructions)
    assert pin == f"torch=={args['TORCH_VERSION']}"
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in runs
    assert runs.index("torch==${TORCH_VERSION}") < runs.index("pip install -c"), "torch before the project"


def test_the_image_installs_the_tested_versions(instructions: list[tuple[str, str]]) -> None:
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip install -c requirements.lock ." in runs  # the lock constrains every runtime dependency
    lock = (REPO / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", lock, re.M))
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:  # every runtime dependency has a pin in the lock the image reads
        name = re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0].lower().replace("_", "-")
        assert name in {k.lower().replace("_", "-") for k in pins}, f"{name} is not pinned in requirements.lock"


def test_every_copy_source_exists(instructions: list[tuple[str, str]]) -> None:
    copies = [rest.split() for word, rest in instructions if word == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for source in sources:
            assert not source.startswith("--"), "no COPY --from or --chown needed"
            assert (REPO / source).exists(), f"COPY {source}: missing from the build context"
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    copied = {s.rstrip("/") for *sources, _ in copies for s in sources}
    for pattern in packages["include"]:
        assert pattern.rstrip("*") in copied, f"package {pattern} is not copied into the image"


def test_runs_as_a_non_root_user_that_owns_the_state_directories(instructions: list[tuple[str, str]]) -> None:
    users = [rest for word, rest in instructions if word == "USER"]
    assert users == ["cxr"], "exactly one USER, and not root"
    last_user = max(i for i, (word, _) in enumerate(instructions) if word == "USER")
    assert all(word != "RUN" for word, _ in instructions[last_user:]), "nothing runs as root after USER"
    setup = next(rest for word, rest in instructions if word == "RUN" and "useradd" in rest)
    assert "--uid" in setup and "root" not in setup
    # Named volumes copy the owner of the image directory they mount over: the compose mount points must exist
    # in the image, owned by cxr, or the receiver cannot write its spool.
    compose = load_compose()["services"]
    env = environment(compose["dicom"])
    mkdir = re.search(r"mkdir -p ([^&]+)", setup)
    chown = re.search(r"chown (?:-R )?cxr:cxr ([^&]+)", setup)
    assert mkdir and chown
    for path in (env["CXR_DATA_DIR"], env["CXR_SPOOL_DIR"]):
        assert path in mkdir[1].split() and path in chown[1].split(), path


def test_entrypoint_is_the_cxr_command_and_ports_match_compose(instructions: list[tuple[str, str]]) -> None:
    assert ("ENTRYPOINT", '["cxr"]') in instructions
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "cxr" in scripts
    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    compose = load_compose()["services"]
    for name in ("api", "dicom"):
        port = int(compose[name]["command"][compose[name]["command"].index("--port") + 1])
        assert port in exposed, f"{name} port {port} is not EXPOSEd"


def test_the_build_context_sends_only_what_the_image_copies(instructions: list[tuple[str, str]]) -> None:
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "deny everything, then allow what COPY needs"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = {s.rstrip("/") for word, rest in instructions if word == "COPY" for s in rest.split()[:-1]}
    assert copied == allowed
    assert not {".env", ".venv", "runs", "models", ".git"} & allowed


def test_the_probes_the_image_runs_have_their_libraries_installed() -> None:
    # deploy/healthcheck.py imports pynetdicom (dicom probe) and redis (worker probe, via celery[redis]) at run
    # time inside the image, which installs the runtime dependencies only.
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ;]", d, maxsplit=1)[0] for d in deps}
    assert "pynetdicom" in names and "celery[redis]" in names
