"""The house rules, read from the source: layering, no import circles, files that fit.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a circle
that only a lazy import keeps from failing is still a circle for the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("embeddings", "recsys", "pipelines", "serving")
#: what each package may import (besides itself and third-party code)
MAY_IMPORT = {
    "embeddings": set(),
    "recsys": {"embeddings"},
    "pipelines": {"embeddings", "recsys"},
    "serving": {"embeddings", "recsys"},
}
#: the one CLI starts the service: its command modules may import ``serving``
CLI_MAY_IMPORT = {"serving"}
#: inside ``pipelines``: what each stage (a sub-package or a top-level module) may
#: import besides itself; a stage above another never sits below it
STAGES_MAY_IMPORT = {
    "data": set(),
    "plots": set(),
    "phases": set(),  # the phase clock: any stage marks its parts
    "engine": {"data"},
    "choice": {"data"},
    "training": {"data", "engine", "choice", "plots", "phases"},
    "glmix": {"data", "engine", "phases"},
    "evaluation": {"data", "engine", "choice", "plots", "phases"},
    "classify": {"data", "plots"},
    "spark": {"data", "engine", "glmix", "evaluation"},
    "pipeline": {"data", "engine", "choice", "training", "glmix", "evaluation", "phases"},
    "commands": {
        "data",
        "phases",
        "engine",
        "choice",
        "training",
        "glmix",
        "evaluation",
        "classify",
        "spark",
        "pipeline",
    },
    "cli": {"commands"},
}
#: likewise inside ``recsys``: its sub-packages and who may import them
RECSYS_SUBPACKAGES_IMPORTED_BY = {
    "glmix": {"online", "artifact", "scoring", "embedders"},
    "online": set(),
    "synthetic": set(),
}
MAX_LINES = 480
#: modules directly inside one package folder
MAX_MODULES_PER_FOLDER = 20


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from a import b`` counts as ``a.b`` when
    that is a module)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_the_import_graph_is_read() -> None:
    g = _graph()
    # known edges: the reader sees them, or the checks below check nothing
    assert "recsys.glmix.model" in g["pipelines.glmix.fit_glmix"]
    assert "pipelines.engine" in g["pipelines.spark.engine"]
    assert "serving.stores.contract" in g["serving.stores.sqlite"]
    assert "pipelines.commands.train" in g["pipelines.cli"]


def test_lower_layers_never_import_upper_ones() -> None:
    bad = []
    for mod, deps in _graph().items():
        pkg = mod.split(".")[0]
        allowed = MAY_IMPORT[pkg] | {pkg}
        if mod == "pipelines.cli" or mod.startswith("pipelines.commands"):
            allowed |= CLI_MAY_IMPORT
        bad += [f"{mod} -> {d}" for d in deps if d.split(".")[0] not in allowed]
    assert not bad, "imports against the layering: " + ", ".join(sorted(bad))


def test_no_import_circles() -> None:
    g = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycles.append([*stack[stack.index(d) :], d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_files_fit_on_a_few_screens(pkg: str) -> None:
    big = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / pkg).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"files over {MAX_LINES} lines: {big}"


def test_artifact_file_names_are_spelled_in_one_module() -> None:
    names = ("embeddings.parquet", "index.faiss", "index.json", "embedder.pt", "histories.parquet")
    spelled = {
        str(p.relative_to(ROOT))
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if any(f'"{n}"' in p.read_text() for n in names)
    }
    assert spelled == {"recsys/artifact.py"}


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its signature and docstring left out (a command's
    options are its signature)."""
    body = fn.body
    first = body[0]
    if (
        len(body) > 1
        and isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        first = body[1]
    return (fn.end_lineno or fn.lineno) - first.lineno + 1


def test_functions_fit_on_a_screen() -> None:
    long = {
        f"{path.relative_to(ROOT)}:{node.name}": n
        for path in _modules().values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (n := _body_lines(node)) > 80
    }
    assert not long, f"function bodies over 80 lines: {long}"


def _stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "(package)"


def test_every_pipelines_stage_is_declared() -> None:
    stages = {_stage(m) for m in _graph() if m.startswith("pipelines.")}
    assert stages == set(STAGES_MAY_IMPORT), "declare each stage in STAGES_MAY_IMPORT"


def test_pipelines_stages_import_only_those_below() -> None:
    bad = [
        f"{m} -> {d}"
        for m, deps in _graph().items()
        if m.startswith("pipelines.")
        for d in deps
        if d.startswith("pipelines.")
        and _stage(d) != _stage(m)
        and _stage(d) not in STAGES_MAY_IMPORT[_stage(m)]
    ]
    assert not bad, "pipelines stages against their order: " + ", ".join(sorted(bad))


def test_only_the_engine_factory_reaches_spark() -> None:
    """One Spark convention: a job calls its ``Engine``'s steps; only the Spark package
    and the command line (which makes the engine) import ``pipelines.spark``."""
    bad = [
        f"{m} -> {d}"
        for m, deps in _graph().items()
        if _stage(m) not in ("spark", "commands")
        for d in deps
        if d.startswith("pipelines.spark")
    ]
    assert not bad, "Spark imported outside the engine: " + ", ".join(sorted(bad))


def test_recsys_subpackages_are_imported_only_from_above() -> None:
    allowed = RECSYS_SUBPACKAGES_IMPORTED_BY
    bad = [
        f"{m} -> {d}"
        for m, deps in _graph().items()
        if m.startswith("recsys.")
        for d in deps
        if d.startswith("recsys.")
        and _stage(d) in allowed
        and _stage(m) != _stage(d)
        and _stage(m) not in allowed[_stage(d)]
    ]
    assert not bad, "recsys sub-packages imported from below: " + ", ".join(sorted(bad))


def test_no_folder_is_crowded() -> None:
    crowded = {
        str(folder.relative_to(ROOT)): n
        for pkg in (*PACKAGES, "tests", "benchmarks")
        for folder in [ROOT / pkg, *(ROOT / pkg).rglob("*")]
        if folder.is_dir()
        and (n := len([p for p in folder.glob("*.py") if p.name != "__init__.py"]))
        > MAX_MODULES_PER_FOLDER
    }
    assert not crowded, f"folders with more than {MAX_MODULES_PER_FOLDER} modules: {crowded}"


def test_benchmarks_do_not_import_tests() -> None:
    bad = []
    for path in (ROOT / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            bad += [f"{path.name} -> {n}" for n in names if n.split(".")[0] == "tests"]
    assert not bad, "benchmarks importing test helpers: " + ", ".join(bad)
