"""`make test-containers` only: these tests build images and start a Docker engine (minutes, root).

They are deselected from every pytest run that does not ask for them with `-m containers`, so the
unit suite (`make test`) never collects them as skips. The marker is registered here, beside the
only tests that use it. Each step's time and the image sizes are printed at the end of the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    # Filled by the tests: step -> seconds (in order), image -> bytes, notes.
    config.containers_report = {"times": {}, "sizes": {}, "notes": []}
    config.addinivalue_line(
        "markers",
        "containers: needs root and a Docker engine the test starts (make test-containers)",
    )


def pytest_collection_modifyitems(config, items):
    if "containers" in (config.getoption("markexpr") or ""):
        return
    ours = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if ours:
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if item not in ours]


def pytest_terminal_summary(terminalreporter, config):
    report = config.containers_report
    if not any(report.values()):
        return
    write = terminalreporter.write_line
    terminalreporter.section("containers: times and sizes")
    for step, seconds in report["times"].items():
        write(f"  {step:<64} {seconds:7.1f} s")
    for image, size in report["sizes"].items():
        write(f"  image {image:<58} {size / 1e6:7.0f} MB")
    for note in report["notes"]:
        write(f"  note: {note}")


@pytest.fixture(scope="session")
def report(request) -> dict:
    return request.config.containers_report
