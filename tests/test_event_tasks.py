"""Issue 13, events as labels: cache.task=events turns corpus.event_labels into window classes.

End to end on EDF+ files written by edfio: a Sleep-EDF-like tree (PSG + Hypnogram pairs, sleep
staging W/N1/N2/N3/REM) and an EEGMMI-like one (T0/T1/T2 in the recording itself, motor
imagery): index -> build-cache -> window labels checked against a hand computation -> train."""

from __future__ import annotations

import json
from pathlib import Path

import edfio
import numpy as np
import pytest

from brainpipe.cache import build_cache
from brainpipe.cachefile import CacheReader
from brainpipe.config import load_config
from brainpipe.datasets import CacheWindowDataset
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index
from brainpipe.training.train import train

STAGES = {
    "Sleep stage W": "W",
    "Sleep stage 1": "N1",
    "Sleep stage 2": "N2",
    "Sleep stage [34]": "N3",
    "Sleep stage R": "REM",
}
# Per night, 30 s epochs: W N1 N2 N3(4) REM ? W  (7 epochs, 210 s; "?" is unmapped)
HYPNOGRAM = ["W", "1", "2", "4", "R", "?", "W"]
FAST = [
    "train.model_kwargs={n_filters_time: 4, n_filters_spat: 4, pool_time_length: 10, pool_time_stride: 5}",
    "train.batch_size=16",
    "train.num_workers=0",
    "train.device=cpu",
    "train.epochs=1",
]


def signals(labels: list[str], seconds: float, sfreq: float, seed: int) -> list[edfio.EdfSignal]:
    rng = np.random.default_rng(seed)
    return [
        edfio.EdfSignal(
            rng.normal(0, 20, int(seconds * sfreq)),
            sampling_frequency=sfreq,
            label=lab,
            physical_dimension="uV",
            physical_range=(-500, 500),
        )
        for lab in labels
    ]


def sleep_tree(root: Path, nights: int = 4) -> None:
    root.mkdir(parents=True)
    for k in range(nights):
        psg, hyp = f"SC40{k}1E0-PSG.edf", f"SC40{k}1EC-Hypnogram.edf"
        edfio.Edf(signals(["EEG Fpz-Cz", "EEG Pz-Oz"], 210, 100, k)).write(root / psg)
        ann = [
            edfio.EdfAnnotation(30.0 * j, 30.0, f"Sleep stage {s}") for j, s in enumerate(HYPNOGRAM)
        ]
        edfio.Edf([], annotations=ann).write(root / hyp)


def sleep_config(*more: str):
    return load_config(
        None,
        [
            f"corpus.event_labels={json.dumps(STAGES)}",
            'corpus.subject_splits={"train": ["SC4001E0-PSG", "SC4011E0-PSG", "SC4021E0-PSG"], '
            '"eval": ["SC4031E0-PSG"]}',
            "preprocess.channels=[FPZ-CZ, PZ-OZ]",
            "preprocess.sfreq=50",
            "preprocess.h_freq=20",
            "preprocess.notch_freqs=[]",
            "window.seconds=30",
            "window.stride_seconds=30",
            "cache.task=events",
            *more,
        ],
    )


def test_sleep_staging_becomes_a_five_class_cache_and_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    root = tmp_path / "sleep-cassette"
    sleep_tree(root)
    cfg = sleep_config(*FAST)
    build_index(root, tmp_path / "i.npz", cfg, progress=False)
    res = build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    assert res.n_written == 4 and res.skipped == []
    with CacheReader(tmp_path / "c.h5") as r:
        assert r.task == "events"
        assert r.label_names == ("W", "N1", "N2", "N3", "REM")  # first appearance in the mapping
        # Seven 30 s windows a night, one per stage; the unmapped "?" epoch is unlabelled (-1).
        assert r.windows["label"].tolist() == [0, 1, 2, 3, 4, -1, 0] * 4
        assert r.summary()["labels"] == {"W": 8, "N1": 4, "N2": 4, "N3": 4, "REM": 4, "none": 4}
    ds = CacheWindowDataset(tmp_path / "c.h5", "train")
    assert ds.label.tolist() == [0, 1, 2, 3, 4, 0] * 3  # unlabelled windows left out
    # Other window lengths relabel from the events: 60 s windows at a 30 s stride, half overlap
    # -> the class of the first event (ties keep the earlier one).
    ds = CacheWindowDataset(tmp_path / "c.h5", "eval", window_s=60, stride_s=30)
    assert ds.label.tolist() == [0, 1, 2, 3, 4, 0]  # windows 0-60 ... 150-210; 120-180 is REM|?
    ds = CacheWindowDataset(tmp_path / "c.h5", "eval", window_s=60, stride_s=30, label_overlap=0.6)
    assert len(ds) == 0  # no single stage covers 60 % of a 60 s window
    summary = train(tmp_path / "c.h5", tmp_path / "run", cfg)
    assert summary["epochs"] == 1 and summary["label_names"] == ["W", "N1", "N2", "N3", "REM"]
    assert summary["eval"]["n_windows"] == 6


def mmi_tree(root: Path) -> list[tuple[float, float, str]]:
    """Three EEGMMI-like runs (PhysioNet channel names, T0/T1/T2 in the EDF+ itself)."""
    ann = [(0.0, 4.2, "T0"), (4.2, 4.1, "T1"), (8.3, 4.2, "T0"), (12.5, 4.1, "T2"), (16.6, 4.2, "T0"),
           (20.8, 4.1, "T1"), (24.9, 4.2, "T0"), (29.1, 4.1, "T2")]  # fmt: skip
    for s in ("S001", "S002", "S003"):
        path = root / s / f"{s}R04.edf"
        path.parent.mkdir(parents=True)
        labels = ["Fc5.", "C3..", "Cz..", "C4..", "Fc6."]
        edf = edfio.Edf(signals(labels, 34, 160, int(s[-1])),
                        annotations=[edfio.EdfAnnotation(*a) for a in ann])  # fmt: skip
        edf.write(path)
    return ann


def expected_labels(ann, seconds: float, window: float, stride: float, overlap: float) -> list:
    """The overlap rule written out per window: the class covering the most of it, if that is
    at least `overlap` of it; else -1."""
    classes = {"T1": 0, "T2": 1}
    out = []
    start = 0.0
    while start + window <= seconds + 1e-9:
        best, label = 0.0, -1
        for on, dur, text in ann:
            cover = max(0.0, min(start + window, on + dur) - max(start, on))
            if text in classes and cover >= overlap * window - 1e-9 and cover > best:
                best, label = cover, classes[text]
        out.append(label)
        start += stride
    return out


def test_motor_imagery_t1_t2_windows_match_the_overlap_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    root = tmp_path / "eegmmidb"
    ann = mmi_tree(root)
    cfg = load_config(
        None,
        [
            'corpus.event_labels={"T1": "left", "T2": "right"}',
            r"corpus.filename_regex=(?P<subject>S\d+)",
            'corpus.subject_splits={"train": [S001, S002], "eval": [S003]}',
            "preprocess.channels=[C3, CZ, C4]",
            "preprocess.sfreq=80",
            "preprocess.h_freq=30",
            "preprocess.notch_freqs=[]",
            "window.seconds=2",
            "window.stride_seconds=1",
            "cache.task=events",
            *FAST,
        ],
    )
    build_index(root, tmp_path / "i.npz", cfg, progress=False)
    build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    want = expected_labels(ann, 34, 2, 1, 0.5)
    # Spot checks by hand: 4-6 s lies in T1 (4.2-8.3) for 1.8 s -> left; 12-14 s in T2
    # (12.5-16.6) for 1.5 s -> right; 0-2 s is T0 only -> unlabelled; 32-34 s past T2's end
    # (33.2) by 1.2 s -> right; 3-5 s has 0.8 s of T1 only -> unlabelled.
    assert (want[4], want[12], want[0], want[32], want[3]) == (0, 1, -1, 1, -1)
    with CacheReader(tmp_path / "c.h5") as r:
        assert r.label_names == ("left", "right") and r.task == "events"
        assert len(r.windows["label"]) == 3 * 33
        for k in range(3):
            assert r.windows["label"][33 * k : 33 * (k + 1)].tolist() == want
    summary = train(tmp_path / "c.h5", tmp_path / "run", cfg)
    assert summary["epochs"] == 1 and summary["label_names"] == ["left", "right"]


def test_events_task_checks_its_classes_before_reading_signals(tmp_path, monkeypatch):
    root = tmp_path / "sleep-cassette"
    sleep_tree(root, nights=2)
    # A class no description maps onto: found at plan time, before any worker starts.
    cfg = sleep_config('corpus.event_labels={"Sleep stage W": W, "Sleep stage 5": N5}')
    build_index(root, tmp_path / "i.npz", cfg, progress=False)
    import brainpipe.cache.build as stage

    monkeypatch.setattr(stage, "run_jobs", lambda *a, **k: pytest.fail("read signals"))
    with pytest.raises(BrainpipeError, match=r"no event of class N5 .*W=4, N5=0"):
        build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    # An index labelled by another mapping is refused rather than half-matched.
    other = sleep_config()
    with pytest.raises(BrainpipeError, match="re-run `brainpipe index` with this config"):
        build_cache(tmp_path / "i.npz", tmp_path / "c.h5", other, workers=1, progress=False)
    assert not list(tmp_path.glob("c.h5*"))
    with pytest.raises(BrainpipeError, match="cache.task'=events needs corpus.event_labels"):
        load_config(None, ["cache.task=events"])


def test_seizure_cache_ignores_edf_plus_annotations(tmp_path):
    """EDF+ text annotations in a TUSZ recording never become seizures."""
    root = tmp_path / "tusz"
    path = root / "edf/train/aaaaaaaa/s001_2003/01_tcp_ar/aaaaaaaa_s001_t000.edf"
    path.parent.mkdir(parents=True)
    eeg = ["EEG FP1-REF", "EEG FP2-REF", "EEG C3-REF", "EEG C4-REF"]
    edfio.Edf(signals(eeg, 40, 100, 0), annotations=[edfio.EdfAnnotation(0.0, 40.0, "seiz")]).write(
        path
    )
    path.with_suffix(".csv_bi").write_text(
        "channel,start_time,stop_time,label,confidence\nTERM,20.0,30.0,seiz,1.0\n"
    )
    cfg = load_config(
        None,
        ["corpus.layout=tusz", "preprocess.channels=[FP1, FP2, C3, C4]", "preprocess.sfreq=50",
         "preprocess.h_freq=20", "preprocess.notch_freqs=[]", "window.seconds=10",
         "window.stride_seconds=10", "cache.task=seizure"],
    )  # fmt: skip
    build_index(root, tmp_path / "i.npz", cfg, progress=False)
    build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    with CacheReader(tmp_path / "c.h5") as r:
        # The annotation covering all 40 s would make every window a seizure; only 20-30 s is.
        assert r.windows["label"].tolist() == [0, 0, 1, 0]
        assert r.events["onset_s"].tolist() == [20.0] and r.events["label"].tolist() == ["seiz"]
