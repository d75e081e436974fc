"""The layout shows the architecture (docs/architecture.md): tools/ holds only commands, each runtime is one
module behind the same interface, no module imports another in a cycle, and the README's layout table and
the architecture page name what is in the tree."""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import catalog
import pytest
import runtimes

ROOT = Path(__file__).resolve().parent.parent
# Where modules are imported from: pyproject.toml's pytest pythonpath, and tests/ itself (conftest, support).
IMPORT_ROOTS = [ROOT, ROOT / "build", ROOT / "tools", ROOT / "model_repository" / "common", ROOT / "tests"]
COMMANDS = sorted(p for p in (ROOT / "tools").glob("*.py"))
# Folders of installed or generated code, never the project's modules.
NOT_OURS = {".venv", ".venv-checkov", ".venv-clients", ".cache", "out", "__pycache__"}
# The folders whose modules the README and docs/architecture.md list one by one.
LISTED_FOLDERS = ["build", "build/runtimes", "tools", "tools/policy", "tools/harness", "tests/support", "simulator"]


def _module_name(root: Path, path: Path) -> str | None:
    """The dotted name `path` is imported by from `root`, or None where a folder between is no package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    for depth in range(1, len(parts)):
        if not (root.joinpath(*parts[:depth]) / "__init__.py").is_file():
            return None
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for root in IMPORT_ROOTS:
        for path in root.rglob("*.py"):
            if NOT_OURS & set(path.relative_to(ROOT).parts):
                continue
            name = _module_name(root, path)
            if name and name not in modules:
                modules[name] = path
    return modules


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules `path` imports anywhere in its body (a lazy import inside a function counts)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def add(dotted: str) -> None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            found.add(dotted)

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_module_imports_another_in_a_cycle() -> None:
    modules = project_modules()
    graph = {name: imports_of(path, name, modules) for name, path in modules.items()}
    assert graph["planner"] >= {"estimate", "memory", "plan", "runtimes"}  # the walk sees real edges
    assert "runtimes" in graph["runtimes.engine"]
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("command", [p.name for p in COMMANDS])
def test_tools_holds_only_commands_with_examples(command: str) -> None:
    source = (ROOT / "tools" / command).read_text()
    assert re.search(r"^def main\(argv: list\[str\] \| None = None\) -> int:", source, re.M), \
        f"tools/{command} is not a command (main(argv) -> int); a library goes in tools/policy or tools/harness"
    assert 'if __name__ == "__main__":' in source
    shown = subprocess.run([sys.executable, str(ROOT / "tools" / command), "--help"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "xamples:" in shown.stdout and f"python tools/{command}" in shown.stdout, shown.stdout


@pytest.mark.parametrize("name", runtimes.names())
def test_each_runtime_is_one_module_behind_the_interface(name: str) -> None:
    runtime = runtimes.get(name)
    assert isinstance(runtime, runtimes.Runtime) and runtime.name == name
    assert (ROOT / "model_repository" / "tensorrt_llm" / name / "config.pbtxt").is_file()
    assert (runtime.queue_metric is None) == bool(runtime.queue_metric_missing)


def test_the_catalog_runs_only_runtimes_that_exist() -> None:
    named = {r for gpu in catalog.gpus().values() for r in gpu.runtimes}
    assert named == set(runtimes.names())
    with pytest.raises(ValueError, match="unknown runtime 'tpu'; known: cpu, engine, llmapi"):
        runtimes.get("tpu")


def _section(markdown: str, heading: str) -> str:
    start = markdown.index(heading)
    following = markdown.find("\n## ", start + len(heading))
    return markdown[start: following if following != -1 else len(markdown)]


@pytest.mark.parametrize("page, heading", [("README.md", "## Layout"), ("docs/architecture.md", "## The folders")])
def test_the_layout_tables_match_the_tree(page: str, heading: str) -> None:
    table = _section((ROOT / page).read_text(), heading)
    rows = re.findall(r"^\| `([\w./-]+)/`", table, re.M)
    for folder in re.findall(r"`([\w./-]+)/`", table):
        generated = subprocess.run(["git", "check-ignore", "-q", f"{folder}/"], cwd=ROOT).returncode == 0
        # a folder is named from the root, or within its row's folder (standin_engine/ in tools/harness/)
        assert generated or any((ROOT / row / folder).is_dir() for row in ["", *rows]), \
            f"{page} names {folder}/, not in the tree"
    for folder in LISTED_FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.name != "__init__.py":
                assert f"`{path.name}`" in table, f"{page}'s layout does not name {folder}/{path.name}"
    tracked = {Path(p).name for p in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True,
                                                     text=True, check=True).stdout.split()}
    for named in re.findall(r"`([\w-]+\.(?:py|toml|yaml|txt))`", table):
        assert named in tracked, f"{page}'s layout names {named}, which is not in the tree"


# Paths the docs name that are not ours to have: upstream files cited by their own path, and what
# build/runtimes/engine.py writes for a build Job.
NOT_IN_THE_TREE = re.compile(r"docs/(source|introduction|user-guide)/|gitops/jobs/runs/")
DOC_PATH = re.compile(
    r"(?<![\w./-])((?:build|tools|tests|gitops|overlays|model_repository|gateway|docs)/[\w./*-]*[\w/*])"
)


def test_the_docs_name_only_paths_that_exist() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    known = set(tracked) | {str(parent) for path in tracked for parent in Path(path).parents}
    pages = [ROOT / "README.md", ROOT / "overlays" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = [
        f"{page.relative_to(ROOT)}: {path}"
        for page in pages
        for path in (m.group(1).rstrip("/") for m in DOC_PATH.finditer(page.read_text()))
        if path not in known and not NOT_IN_THE_TREE.match(path) and not any(fnmatch.fnmatch(k, path) for k in known)
    ]
    assert missing == []
