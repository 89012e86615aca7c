"""Layers import downward only: the graph of rlvr's imports (lazy ones inside functions included)
has no cycles, and every module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rlvr"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """rlvr modules `path` imports anywhere in its body (a package's own submodules excluded)."""
    me = module_name(path)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in known and name != me:
                out.add(name)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_rlvr_imports_have_no_cycles():
    mods = modules()
    graph = {name: imports_of(path, set(mods)) for name, path in mods.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " → ".join(cycle)


@pytest.mark.parametrize("name", ["rlvr.sft.trainer", "rlvr.grpo.trainer", "rlvr.train.session", "rlvr.pipeline",
                                  "rlvr.evaluation", "rlvr.data.gsm8k", "rlvr.data.columns", "rlvr.export",
                                  "rlvr.models.precision", "rlvr.cli"])
def test_module_imports_alone(name):
    subprocess.run([sys.executable, "-c", f"import {name}"], check=True, cwd=ROOT, timeout=120)


def test_sft_does_not_import_grpo():
    code = "import sys, rlvr.sft.trainer; print(sorted(m for m in sys.modules if m.startswith('rlvr.grpo')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120, capture_output=True,
                         text=True).stdout.strip()
    assert out == "[]"
