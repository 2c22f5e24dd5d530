"""The package layout shows the flow (model -> prompts -> activations -> methods -> results -> figures, with runs
around them), and no module imports one that imports it back at import time.

The import check is static: it reads every module's top-level imports (those inside functions or under
``TYPE_CHECKING`` are lazy by design and skipped) and asks for a graph without cycles, so a cycle fails here with
its path rather than as an ImportError that depends on which module a user happened to import first. Each folder
is also imported on its own in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "interp"
FOLDERS = ("model", "prompts", "activations", "methods", "results", "runs", "figures", "organisms")
TOP_LEVEL_MODULES = {"__init__", "cli", "errors", "vocabulary"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    out = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            out.extend(n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
        elif isinstance(node, ast.Try):
            out.extend(n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    return out


def imports_of(name: str) -> set[str]:
    """The interp modules ``name`` imports at import time."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    edges = set()
    for node in _top_level_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges.update(a.name for a in node.names if a.name in MODULES)
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            if sub in MODULES:
                edges.add(sub)
            elif source in MODULES:
                edges.add(source)
    edges.discard(name)
    return edges


def test_top_level_holds_only_the_entry_points():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL_MODULES, f"modules outside the flow's folders: {sorted(top - TOP_LEVEL_MODULES)}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(FOLDERS), folders ^ set(FOLDERS)


def test_no_import_cycles():
    graph = {name: imports_of(name) for name in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_graph_sees_real_imports():
    """The static reader finds the imports it must (so the cycle test is not vacuous)."""
    assert "interp.activations.hooks" in imports_of("interp.activations.capture")
    assert "interp.methods.registry" in imports_of("interp.methods.tracing")
    assert "interp.methods.metrics" in imports_of("interp.methods.tracing")


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_imports_on_its_own(folder):
    done = subprocess.run([sys.executable, "-c", f"import interp.{folder}"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
