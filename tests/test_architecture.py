"""The package's shape, checked: imports point down the layers of ``docs/architecture.md``,
no two parts import each other, ``parallel`` stands on ``errors`` alone, and no source file
grows past what one sitting can read.

A part is a top-level module or package of ``rlhf_core`` (``trainers``, ``ops``, ...). Every
``import`` counts, also those inside functions (a lazy import is still a dependency); the
names the package root re-exports (``__version__``) count as the part they come from.
"""

from __future__ import annotations

import ast
import collections
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "rlhf_core"

#: lowest first; a part may import parts of lower layers only
LAYERS: list[set[str]] = [
    {"_core"},
    {"errors"},
    {"__init__", "_io", "_arrays", "_options"},
    {"tasks", "config", "monitor", "run_dir", "model_card", "parallel", "ops"},
    {"buffer"},
    {"advantages", "losses", "models", "checkpoint"},
    {"generation", "data", "distributed"},
    {"rewards"},
    {"rollout"},
    {"evaluation", "testing"},
    {"trainers"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
#: names imported from the package root and the part that defines them
ROOT_NAMES = {"__version__": "_core"}
#: files allowed past MAX_LINES, with the reason
LONG_OK = {
    "ops.py": "one typed, documented wrapper per Rust kernel",
    "buffer/rollout_buffer.py": "one class: the typed, documented face of the Rust buffer",
}
MAX_LINES = 600
MAX_RUST_LINES = 650


def _module(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str | None:
    bits = module.split(".")
    if bits[0] != "rlhf_core":
        return None
    if len(bits) == 1:
        return "__init__"
    return ROOT_NAMES.get(bits[1], bits[1])


def import_edges() -> dict[tuple[str, str], str]:
    """(importer part, imported part) -> the first place it happens (``file:line``)."""
    edges: dict[tuple[str, str], str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module(path)
        src = _part(me)
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" for a in node.names] if mod == "rlhf_core" else [mod]
            else:
                continue
            for target in targets:
                dst = _part(target)
                if dst is not None and dst != src and target != "rlhf_core":
                    edges.setdefault((src, dst), f"{path.relative_to(ROOT)}:{node.lineno}")
    return edges


def _layer_of() -> dict[str, int]:
    return {part: i for i, layer in enumerate(LAYERS) for part in layer}


def test_every_part_has_a_layer() -> None:
    parts = {_part(_module(p)) for p in PACKAGE.rglob("*.py")} | {"_core"}
    parts |= {p.stem for p in PACKAGE.glob("*.pyi")}
    missing = sorted(p for p in parts if p not in _layer_of())
    assert not missing, (
        f"parts with no layer in LAYERS (add them, see docs/architecture.md): {missing}"
    )


def test_imports_point_down() -> None:
    layer = _layer_of()
    bad = [
        f"{src} (layer {layer[src]}) imports {dst} (layer {layer[dst]}) at {where}"
        for (src, dst), where in sorted(import_edges().items())
        if src in layer and dst in layer and layer[dst] >= layer[src]
    ]
    assert not bad, "imports that do not point down:\n" + "\n".join(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (its nodes in order, the first repeated at the end), or []."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return []
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, path + [node])
            if found:
                return found
        done.add(node)
        return []

    for node in sorted(graph):
        found = visit(node, [])
        if found:
            return found
    return []


def test_find_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]


def test_no_import_cycle_between_parts() -> None:
    graph: dict[str, set[str]] = collections.defaultdict(set)
    for src, dst in import_edges():
        graph[src].add(dst)
    cycle = find_cycle(graph)
    assert not cycle, "an import cycle between parts: " + " -> ".join(cycle)


def test_parallel_stands_on_errors_alone() -> None:
    """``parallel`` (process groups, collectives, the metric rule) is what every layer above
    uses to talk across ranks; it imports nothing of the package but ``errors`` and ``_core``."""
    deps = {dst for (src, dst) in import_edges() if src == "parallel"}
    assert deps <= {"errors", "_core"}, deps


def test_the_check_sees_a_bad_import(tmp_path: pathlib.Path) -> None:
    """The checker itself: a module of a low layer importing a high one is reported."""
    pkg = tmp_path / "python" / "rlhf_core"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "__init__.py").write_text("def f():\n    from rlhf_core.trainers import loop\n")
    globals_ = globals()
    old_package, old_root = globals_["PACKAGE"], globals_["ROOT"]
    globals_["PACKAGE"], globals_["ROOT"] = pkg, tmp_path
    try:
        assert import_edges() == {("ops", "trainers"): "python/rlhf_core/ops/__init__.py:2"}
        with pytest.raises(AssertionError, match="ops .* imports trainers"):
            test_imports_point_down()
    finally:
        globals_["PACKAGE"], globals_["ROOT"] = old_package, old_root


def test_files_fit_one_sitting() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and rel not in LONG_OK:
            long.append(f"{rel}: {n} lines")
    for path in sorted((ROOT / "rust").glob("*/src/**/*.rs")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_RUST_LINES:
            long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, (
        f"files past {MAX_LINES} (Rust {MAX_RUST_LINES}) lines; split them by concern: {long}"
    )
    stale = [rel for rel in LONG_OK if not (PACKAGE / rel).is_file()]
    assert not stale, f"LONG_OK names files that are gone: {stale}"


def _rust_uses(src: pathlib.Path) -> dict[str, set[str]]:
    """module -> the sibling modules it ``use``s (``crate::a::...``), for one crate's src/."""
    uses: dict[str, set[str]] = collections.defaultdict(set)
    for path in src.rglob("*.rs"):
        rel = path.relative_to(src).with_suffix("").parts
        me = rel[0]
        if me in ("lib", "main"):
            continue
        code = "\n".join(
            line for line in path.read_text(encoding="utf-8").splitlines()
            if not line.lstrip().startswith("//")
        )  # fmt: skip
        for other in re.findall(r"crate::(\w+)", code):
            if other != me:
                uses[me].add(other)
    return uses


@pytest.mark.parametrize("crate", ["core"])
def test_rust_modules_do_not_use_each_other(crate: str) -> None:
    uses = _rust_uses(ROOT / "rust" / crate / "src")
    both = sorted(
        {tuple(sorted((a, b))) for a, bs in uses.items() for b in bs if a in uses.get(b, set())}
    )
    assert not both, f"Rust modules of the {crate} crate that use each other: {both}"
