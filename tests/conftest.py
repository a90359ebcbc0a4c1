"""Fixtures shared by the test modules; plain helper functions live in helpers.py.

Its presence (with no tests/__init__.py) also puts tests/ on sys.path, which is how every test
module, tests/cluster/ and tests/containers/ included, imports `helpers`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from brainpipe.synthetic import make_corpus


@pytest.fixture(scope="module")
def synthetic_corpus(tmp_path_factory) -> Callable[..., Path]:
    """`synthetic_corpus(layout, **spec)` -> the root of a synthetic corpus (`make_corpus`),
    written once per module for each (layout, spec) and shared by the module's tests: read it,
    do not change it."""
    made: dict[tuple, Path] = {}

    def corpus(layout: str, **spec) -> Path:
        key = (layout, tuple(sorted(spec.items())))
        if key not in made:
            root = tmp_path_factory.mktemp(f"synthetic-{layout}") / "raw"
            made[key] = make_corpus(root, layout, **spec).root
        return made[key]

    return corpus
