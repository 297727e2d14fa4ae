"""The import contract (docs/architecture.md): rooms, arrows one way, no cycles.

Read from the source with `ast`, so lazy imports inside functions count as arrows too: a cycle
hidden in a function body is still a cycle.

- `kubetrain.api` (the contract) imports nothing else of `kubetrain` and nothing of the trainer;
- `kubetrain.controller` and `kubetrain.tools` import only `kubetrain.api` (and themselves);
- the trainer imports only `kubetrain.api` of `kubetrain`;
- only `kubetrain.cli` may import the trainer;
- no import cycle between modules, anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"kubetrain": REPO / "operator" / "kubetrain", "kubetrain_trainer": REPO / "trainer_image" / "kubetrain_trainer"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = [top, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(name: str) -> str | None:
    """The longest known module that `name` names (a.b.C -> a.b)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    package = module if _is_package(module) else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in ROOTS:
                resolved = _resolve(name)
                if resolved and resolved != module:
                    targets.add(resolved)
    return targets


GRAPH = {m: _imports(m) for m in MODULES}


def _room(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "kubetrain_trainer":
        return "trainer"
    return parts[1] if len(parts) > 1 and parts[1] in {"api", "controller", "tools", "cli"} else "top"


ALLOWED = {
    "api": {"api", "top"},
    "controller": {"controller", "api", "top"},
    "tools": {"tools", "api", "top"},
    "trainer": {"trainer", "api", "top"},
    "cli": {"cli", "api", "controller", "tools", "trainer", "top"},
    "top": {"top", "cli"},
}


def test_every_room_is_recognised() -> None:
    assert {_room(m) for m in MODULES} == set(ALLOWED), "a new top-level room needs a line in ALLOWED"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_arrows_point_only_where_the_architecture_allows(module: str) -> None:
    room = _room(module)
    wrong = sorted(t for t in GRAPH[module] if _room(t) not in ALLOWED[room])
    assert not wrong, f"{module} ({room}) must not import {wrong} (see docs/architecture.md)"


def test_the_trainer_imports_only_the_contract() -> None:
    for module, targets in GRAPH.items():
        if _room(module) == "trainer":
            outside = sorted(t for t in targets if t.startswith("kubetrain.") and _room(t) != "api")
            assert not outside, f"{module} imports {outside}: the trainer's only door is kubetrain.api"


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_cycle_detector_sees_a_cycle() -> None:
    """The detector itself can fail: add a back arrow and it must report the loop."""
    GRAPH["kubetrain.api.constants"].add("kubetrain.api.validate")
    try:
        assert any("kubetrain.api.constants" in c for c in _cycles())
    finally:
        GRAPH["kubetrain.api.constants"].discard("kubetrain.api.validate")


def test_exit_codes_are_defined_once() -> None:
    """64/65/75 live in kubetrain.api.constants; nobody assigns them to a name of their own."""
    offenders = []
    for module, path in MODULES.items():
        if module == "kubetrain.api.constants":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value in (64, 65, 75):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                if any(n.startswith("EXIT_") for n in names):
                    offenders.append(f"{module}: {names}")
    assert not offenders, offenders
