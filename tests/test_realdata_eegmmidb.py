"""PhysioNet EEG Motor Movement/Imagery (Schalk et al. 2004), subject S001 as published
(`../shared/realdata/eegmmidb/S001`, EDF+ with T0/T1/T2 annotations; see its README): every
annotated run indexes with its events, and the imagery runs train as an events cache (hands vs
feet, runs 6 and 10 -> run 14; a within-subject sanity check, as mne's CSP example on runs 6,
10, 14). Fails with one line, never skips, when the folder is missing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import ONE_CPU_EPOCH

from brainpipe.cache import build_cache
from brainpipe.cachefile import CacheReader
from brainpipe.config import load_config
from brainpipe.index import build_index
from brainpipe.indexfile import Index
from brainpipe.training.train import train

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "eegmmidb" / "S001"
MOTOR = ["FC3", "FCZ", "FC4", "C5", "C3", "C1", "CZ", "C2", "C4", "C6", "CP3", "CPZ", "CP4"]


@pytest.fixture(scope="module")
def raw() -> Path:
    if not (REAL / "S001R14.edf").is_file():
        pytest.fail(
            f"{REAL}: missing (the PhysioNet eegmmidb files of ../shared/realdata/README.md)",
            pytrace=False,
        )
    return REAL


def config(manifest: Path, *more: str):
    return load_config(
        None,
        [
            f"corpus.manifest={manifest}",
            'corpus.event_labels={"T1": hands, "T2": feet}',
            "corpus.extensions=[.edf]",
            f"preprocess.channels=[{', '.join(MOTOR)}]",
            "preprocess.sfreq=160",
            "preprocess.l_freq=7",
            "preprocess.h_freq=30",
            "preprocess.notch_freqs=[]",
            "window.seconds=2",
            "window.stride_seconds=0.5",
            "cache.task=events",
            *more,
        ],
    )


def test_motor_imagery_runs_index_with_their_events_and_train(raw, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    manifest = tmp_path / "runs.csv"  # the split by run: a manifest, nothing eegmmidb-specific
    manifest.write_text(
        "path,subject,split\nS001R06.edf,S001,train\nS001R10.edf,S001,train\nS001R14.edf,S001,eval\n"
    )
    cfg = config(
        manifest,
        *ONE_CPU_EPOCH,
        "train.batch_size=32",
        "train.allow_subject_overlap=true",
    )
    build_index(raw, tmp_path / "i.npz", cfg, progress=False)
    ix = Index.load(tmp_path / "i.npz")
    paths = [str(p) for p in ix.arrays["path"]]
    assert paths == [f"S001R{k:02d}.edf" for k in range(1, 15)]
    for k in range(3, 15):  # R03-R14: 30 cues each, T0 (rest) alternating with T1/T2
        ev = ix.event_table(paths.index(f"S001R{k:02d}.edf"))
        n = Counter(ev["description"].tolist())
        assert n["T0"] == 15 and n["T1"] + n["T2"] == 15 and len(ev["description"]) == 30, k
        assert np.all(np.diff(ev["onset_s"]) > 0) and 4.0 <= float(ev["duration_s"][1]) <= 4.3
        labels = dict(zip(ev["description"].tolist(), ev["label"].tolist(), strict=True))
        assert labels == {"T0": "", "T1": "hands", "T2": "feet"}
    for k in (1, 2):  # baseline runs: one T0 over the whole run
        assert ix.event_table(k - 1)["description"].tolist() == ["T0"]

    res = build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    assert res.skipped == []
    with CacheReader(tmp_path / "c.h5") as r:
        assert r.task == "events" and r.label_names == ("hands", "feet")
        split = r.recordings["split"].astype(str)[r.windows["recording"]]
        got = Counter(zip(split.tolist(), r.windows["label"].tolist(), strict=True))
        # 2-s windows every 0.5 s; a window is labelled when >= 1 s of it lies in one cue, i.e.
        # it starts within [onset - 1, offset - 1] of a 4.1-4.2-s cue: 8 or 9 windows a cue,
        # 15 T1/T2 cues a run, 7 or 8 of each class.
        for s, runs in (("train", 2), ("eval", 1)):
            assert 120 * runs <= got[(s, 0)] + got[(s, 1)] <= 135 * runs, (s, got)
            assert min(got[(s, 0)], got[(s, 1)]) >= 56 * runs, (s, got)
    summary = train(tmp_path / "c.h5", tmp_path / "run", cfg)
    assert summary["label_names"] == ["hands", "feet"] and summary["eval"]["n_windows"] == 125
