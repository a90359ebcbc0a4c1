"""The shape of the package, read from its source: stages talk through files, never imports.

`docs/design.md` states the rules; these tests keep them true as modules move.
"""

from __future__ import annotations

import ast
from pathlib import Path

import brainpipe

PKG = Path(brainpipe.__file__).parent
# One module per stage; each reads and writes files through the format modules only.
STAGES = {"index", "cache", "train", "predict", "embed"}
# Modules that must stay importable without torch (index and build-cache never pay for it).
TORCH_FREE = {"index", "cache", "indexfile", "cachefile", "edf", "corpus", "config", "preprocess"}


def _imports(path: Path) -> set[str]:
    """brainpipe modules imported anywhere in a file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "brainpipe" and len(parts) > 1:
                found.add(parts[1])
            elif parts[0] == "torch":
                found.add("torch")
    return found


def _modules() -> dict[str, set[str]]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        name = rel.parts[0] if len(rel.parts) > 1 else rel.name
        out.setdefault(name, set()).update(_imports(path) - {name})
    return out


def test_the_import_graph_is_read_from_the_source():
    graph = _modules()
    # A guard against a vacuous pass: the stages exist and import their formats.
    assert {"index", "cache", "train"} <= graph.keys()
    assert "indexfile" in graph["cache"] or "indexfile" in graph.get("datasets", set())


def test_no_stage_imports_another_stage():
    graph = _modules()
    bad = [(m, s) for m, deps in graph.items() if m in STAGES for s in deps & STAGES]
    assert not bad, f"stage modules import other stages (they must talk through files): {bad}"


def test_nothing_but_the_cli_imports_the_cli():
    graph = _modules()
    bad = [m for m, deps in graph.items() if "cli" in deps and m != "__main__"]
    assert not bad, f"library modules import the CLI: {bad}"


def test_the_index_and_cache_stages_never_import_torch():
    graph = _modules()

    def reach(m: str, seen: set[str]) -> set[str]:
        for d in graph.get(m, set()) - seen:
            seen.add(d)
            reach(d, seen)
        return seen

    for m in TORCH_FREE & graph.keys():
        assert "torch" not in reach(m, set()), f"{m} reaches torch through its imports"


def test_functions_stay_readable_and_long_modules_say_why():
    # design.md: no function over ~80 lines; a module over ~500 lines says why in its docstring.
    long_functions, silent_modules = [], []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and node.end_lineno - node.lineno + 1 > 90:
                long_functions.append(f"{path.name}:{node.name}")
        doc = ast.get_docstring(tree) or ""
        if text.count("\n") > 500 and "lines" not in doc:
            silent_modules.append(path.name)
    assert not long_functions, f"functions over 90 lines: {long_functions}"
    assert not silent_modules, f"modules over 500 lines without a reason: {silent_modules}"
