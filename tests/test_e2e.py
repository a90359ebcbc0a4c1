"""The README's main job, end to end through the CLI: synth -> index -> build-cache -> train."""

import json
from pathlib import Path

import pytest

from brainpipe.cli import main

SMOKE = str(Path(__file__).parents[1] / "configs" / "smoke.yaml")


@pytest.mark.slow
def test_main_job_learns_the_synthetic_corpus(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    raw, index, cache, run = (
        tmp_path / "raw",
        tmp_path / "index.npz",
        tmp_path / "cache.h5",
        tmp_path / "run",
    )
    assert (
        main(["synth", "--layout", "tuab", "--out", str(raw), "--n-subjects", "40", "--seed", "0"])
        == 0
    )
    assert main(["index", "--raw", str(raw), "--index", str(index), "--config", SMOKE]) == 0
    assert (
        main(["build-cache", "--index", str(index), "--cache", str(cache), "--config", SMOKE]) == 0
    )
    assert main(["train", "--cache", str(cache), "--run-dir", str(run), "--config", SMOKE]) == 0
    out = capsys.readouterr().out
    assert "eval: " in out and "balanced_accuracy=" in out
    summary = json.loads((run / "summary.json").read_text())
    ev = summary["eval"]
    # The synthetic abnormal recordings carry a spectral difference a shallow net must find.
    assert ev["balanced_accuracy"] >= 0.95, ev
    assert ev["recording_balanced_accuracy"] >= 0.95, ev
    assert (
        summary["epochs"] == 4
        and summary["samples_per_s"] > 0
        and 0 <= summary["data_wait_fraction"] < 1
    )
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert any(p.name.startswith("events.out.tfevents") for p in run.rglob("*"))
    assert (run / "last.pt").exists() and (run / "best.pt").exists()
