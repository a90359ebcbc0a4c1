"""The shape of the package, read from its source: stages talk through files, never imports.

`docs/design.md` states the rules; these tests keep them true as modules move. Modules are
named by their dotted path inside the package (`index.remote`, `training.train`), so a
subpackage is checked file by file, not as one blob.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import brainpipe

PKG = Path(brainpipe.__file__).parent
# A stage is a command that reads files and writes files; its module (or its package: every
# file under it) never imports another stage.
STAGES = {
    "index": "index",
    "cache": "cache",
    "training.train": "train",
    "training.predict": "predict",
    "training.embed": "embed",
    "score": "score",
}
# torch lives under training/; these folders and modules (and all they import) never reach it,
# so index and build-cache never pay for it.
TORCH_FREE = ("index", "cache", "indexfile", "cachefile", "edf", "corpus", "config", "preprocess")
# Above this a module says in its docstring why it holds one concern, with the word "because".
LONG_MODULE = 600
LONG_FUNCTION = 80
# "About 930 lines", "a 1,049-line file": counts that were wrong a week after they were written.
LINE_COUNT = re.compile(r"\b\d[\d,]*[ -]lines?\b")


def _name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module a dotted import names (`brainpipe.cachefile.CacheReader` ->
    `cachefile`)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(brainpipe imports per module, torch imports per module as {"top", "lazy"})."""
    files = {_name(p): p for p in sorted(PKG.rglob("*.py"))}
    known = set(files)
    edges: dict[str, set[str]] = {}
    torch_use: dict[str, set[str]] = {}
    for me, path in files.items():
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                head = name.split(".")[0]
                if head == "torch":
                    torch_use.setdefault(me, set()).add("top" if id(node) in top_level else "lazy")
                elif head == "brainpipe":
                    target = _resolve(name.split(".", 1)[1] if "." in name else "", known)
                    if target and target != me:
                        edges.setdefault(me, set()).add(target)
    for me in files:
        edges.setdefault(me, set())
    return edges, torch_use


def _stage_of(module: str) -> str | None:
    for prefix, stage in STAGES.items():
        if module == prefix or module.startswith(prefix + "."):
            return stage
    return None


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for d in graph.get(todo.pop(), set()) - seen:
            seen.add(d)
            todo.append(d)
    return seen


def test_the_import_graph_is_read_from_the_source():
    graph, torch_use = _graph()
    # A guard against a vacuous pass: every stage exists and imports the formats it needs.
    for prefix in STAGES:
        assert any(m == prefix or m.startswith(prefix + ".") for m in graph), prefix
    assert "indexfile" in _reach(graph, "cache")
    assert "cachefile" in _reach(graph, "training.train")
    assert "training.train" in torch_use


def test_no_stage_imports_another_stage():
    graph, _ = _graph()
    bad = [
        (m, d)
        for m, deps in graph.items()
        for d in deps
        if _stage_of(m) and _stage_of(d) and _stage_of(m) != _stage_of(d)
    ]
    assert not bad, f"stages import other stages (they must talk through files): {bad}"


def test_no_module_imports_round_a_circle():
    # A circle (index <-> index_remote handing each other private helpers) means two modules
    # hold one concern: the shared pieces belong in a third module both import.
    graph, _ = _graph()
    circles = sorted(
        {tuple(sorted((m, d))) for m, deps in graph.items() for d in deps if m in _reach(graph, d)}
    )
    assert not circles, f"modules that import each other, directly or round a loop: {circles}"


def test_nothing_but_the_cli_imports_the_cli():
    graph, _ = _graph()
    bad = [m for m, deps in graph.items() if "cli" in deps and m != "__main__"]
    assert not bad, f"library modules import the CLI: {bad}"


def test_torch_lives_under_training_and_never_on_the_index_or_build_path():
    graph, torch_use = _graph()
    outside = [m for m, how in torch_use.items() if "top" in how and not m.startswith("training")]
    assert not outside, f"modules outside training/ import torch at import time: {outside}"
    for root in TORCH_FREE:
        for m in [x for x in graph if x == root or x.startswith(root + ".")]:
            reached = {m} | _reach(graph, m)
            assert not reached & set(torch_use), (
                f"{m} reaches torch through {reached & set(torch_use)}"
            )
            assert not any(x.startswith("training") for x in reached), f"{m} imports training/"


def test_functions_stay_readable_and_long_modules_say_why():
    # design.md: no function over ~80 lines; a long module states its reason in its docstring
    # ("… because …"), not a line count that is wrong a week later.
    long_functions, silent_modules, counted = [], [], []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and node.end_lineno - node.lineno + 1 > LONG_FUNCTION:
                long_functions.append(f"{path.name}:{node.name}")
        doc = ast.get_docstring(tree) or ""
        if text.count("\n") > LONG_MODULE and "because" not in doc:
            silent_modules.append(str(path.relative_to(PKG)))
        if LINE_COUNT.search(doc):
            counted.append(str(path.relative_to(PKG)))
    assert not long_functions, f"functions over {LONG_FUNCTION} lines: {long_functions}"
    assert not silent_modules, (
        f"modules over {LONG_MODULE} lines without a reason: {silent_modules}"
    )
    assert not counted, f"docstrings quoting line counts (they go stale): {counted}"
