"""The tree keeps its shape: no import cycles, a client that stands alone, every wing in the wheel."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"berthd": ROOT / "daemon" / "berthd", "berth": ROOT / "protocol" / "berth"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import: at module level, inside functions (a lazy import that closes a cycle is a cycle all
    the same) and those only type checkers see (the layering holds for them too)."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_graph() -> dict[str, set[str]]:
    """Each module and the project modules its import runs (a module's parents' `__init__` included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                assert node.level == 0, f"{name}: relative import"
                base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                edges.update(m for m in _parents(target) if m in modules and m != name)
        graph[name] = edges - set(_parents(name))  # a package's own __init__ runs first anyway
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_server_or_the_clients() -> None:
    graph = import_graph()
    assert len(graph) > 60
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_clients_import_nothing_of_the_server() -> None:
    graph = import_graph()
    leaks = {m: sorted(e for e in edges if e.startswith("berthd")) for m, edges in graph.items()}
    assert {m: e for m, e in leaks.items() if m.startswith("berth.") or m == "berth" if e} == {}


def _heavy_modules_loaded(imports: str, heavy: set[str]) -> list[str]:
    """The top-level names of `heavy` that a fresh interpreter has loaded after `import IMPORTS`."""
    script = f"import sys, {imports}\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy!r}))\n"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return list(ast.literal_eval(loaded.stdout.strip()))


def test_the_client_library_loads_nothing_heavier_than_msgspec() -> None:
    """`berth`, its blocking client, its uploads and its CLI: no trio, no server, no SDKs."""
    imports = "berth, berth.client, berth.upload, berth.cli, berth.framing, berth.messages"
    heavy = {"trio", "berthd", "docker", "psutil", "git", "pynvml", "requests"}
    assert _heavy_modules_loaded(imports, heavy) == []
    assert _heavy_modules_loaded("berth.trio_client", heavy) == ["trio"]  # the check sees what loads


def test_the_server_starts_without_importing_the_heavy_sdks() -> None:
    """docker, GitPython, NVML and the metrics library load on first use, not when berthd starts (idle
    memory, start-up)."""
    heavy = {"docker", "git", "pynvml", "requests", "prometheus_client"}
    assert _heavy_modules_loaded("berthd.main, berthd.commands", heavy) == []
