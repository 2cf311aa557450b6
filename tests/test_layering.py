"""The layering rule, checked: services/ never imports a shell (cli, workers, typer, celery), and only services/api
imports the web stack. Read from the syntax tree of every module, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHELLS = frozenset({"cli", "workers", "typer", "click", "celery", "kombu"})  # never anywhere under services/
WEB = frozenset({"fastapi", "starlette", "uvicorn", "services.api"})  # only inside services/api


def imported_modules(path: Path, repo: Path) -> set[str]:
    """Every module `path` imports: import statements anywhere (relative ones resolved; `from a import b` counts as
    `a` and `a.b`), and `import_module("...")` / `__import__("...")` calls with a literal name."""
    package = list(path.relative_to(repo).parent.parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def _within(module: str, roots: frozenset[str]) -> bool:
    return any(module == root or module.startswith(root + ".") for root in roots)


def layering_violations(repo: Path) -> list[str]:
    """`file: module` for each import under `repo`/services that breaks the rule."""
    services = repo / "services"
    out = []
    for path in sorted(services.rglob("*.py")):
        in_api = path.relative_to(services).parts[0] == "api"
        for module in sorted(imported_modules(path, repo)):
            if _within(module, SHELLS) or (not in_api and _within(module, WEB)):
                out.append(f"{path.relative_to(repo).as_posix()}: {module}")
    return out


def import_cycle(repo: Path, package: str) -> list[str]:
    """One circle of imports (lazy ones included) among the modules of `package`, or [] when there is none."""
    folder = repo.joinpath(*package.split("."))
    modules = {f"{package}.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {
        name: {m for m in imported_modules(path, repo) if m in modules and m != name} for name, path in modules.items()
    }
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> list[str]:
        if name in trail:
            return [*trail[trail.index(name) :], name]
        if name in done:
            return []
        for dep in sorted(graph[name]):
            if found := visit(dep, [*trail, name]):
                return found
        done.add(name)
        return []

    for name in sorted(graph):
        if found := visit(name, []):
            return found
    return []


def test_services_import_no_shell_and_only_the_api_imports_the_web_stack():
    assert layering_violations(REPO) == []


def test_pacs_modules_import_no_circle():
    # pull.py picks the mode; dicomweb.py and orthanc_changes.py share pull_batch.py, never pull.py
    assert import_cycle(REPO, "services.pacs") == []


def test_the_check_sees_every_kind_of_import(tmp_path: Path):
    (tmp_path / "services" / "api").mkdir(parents=True)
    (tmp_path / "services" / "pacs").mkdir()
    (tmp_path / "services" / "api" / "app.py").write_text("import fastapi\nfrom starlette.responses import Response\n")
    (tmp_path / "services" / "pacs" / "bad.py").write_text(
        "from importlib import import_module\n"
        "import celery.app\n"
        "from ..api import app\n"
        "def lazy():\n"
        "    from cli.errors import stderr\n"
        "    import_module('workers.tasks')\n"
        "    __import__('typer')\n"
    )
    assert layering_violations(tmp_path) == [
        "services/pacs/bad.py: celery.app",
        "services/pacs/bad.py: cli.errors",
        "services/pacs/bad.py: cli.errors.stderr",
        "services/pacs/bad.py: services.api",
        "services/pacs/bad.py: services.api.app",
        "services/pacs/bad.py: typer",
        "services/pacs/bad.py: workers.tasks",
    ]
    (tmp_path / "services" / "pacs" / "good.py").write_text("def f():\n    from services.pacs import bad\n")
    (tmp_path / "services" / "pacs" / "bad.py").write_text("from services.pacs.good import f\n")
    assert import_cycle(tmp_path, "services.pacs") == ["services.pacs.bad", "services.pacs.good", "services.pacs.bad"]
