"""configs/recipes/: every recipe runs index -> build-cache -> train on its corpus's real layout
(TUAB, TUSZ, TUEV: the synthetic generators; Sleep-EDF: PSG + hypnogram EDF+ pairs written here
in PhysioNet's names; eegmmidb and eegmat: the real files of ../shared/realdata, linked into a
tree in their own layout), and its own model fits its windows. Training here is one epoch of a
tiny model: the point is that the recipe's corpus, preprocessing, windows and splits hold."""

from __future__ import annotations

from pathlib import Path

import edfio
import numpy as np
import pytest
from helpers import ONE_CPU_EPOCH

from brainpipe.cache import build_cache
from brainpipe.cachefile import CacheReader
from brainpipe.config import load_config
from brainpipe.index import build_index
from brainpipe.training.models import build_model, model_args
from brainpipe.training.train import train

pytestmark = pytest.mark.slow

RECIPES = Path(__file__).parents[1] / "configs" / "recipes"
REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata"
FAST = [
    *ONE_CPU_EPOCH,
    "train.model_kwargs={n_filters_time: 4, n_filters_spat: 4}",
    "train.batch_size=16",
    "cache.workers=1",
]


def real(name: str) -> Path:
    if not (REAL / name).is_dir():
        pytest.fail(f"{REAL / name}: missing (see ../shared/realdata/README.md)", pytrace=False)
    return REAL / name


def run(recipe: str, raw: Path, tmp: Path, *more: str) -> tuple[dict, dict]:
    """index -> build-cache -> train with the recipe (plus FAST, then `more`); the recipe's own
    model is built for the cache's windows. Returns the train summary and the window counts."""
    path = RECIPES / f"{recipe}.yaml"
    own = load_config(path)
    cfg = load_config(path, [*FAST, *more])
    build_index(raw, tmp / "i.npz", cfg, progress=False)
    res = build_cache(tmp / "i.npz", tmp / "c.h5", cfg, workers=1, progress=False)
    assert res.skipped == [], res.skipped
    with CacheReader(tmp / "c.h5") as r:
        shape = (len(r.channels), r.window_samples, len(r.label_names), r.sfreq)
        counts = r.summary()["labels"]
    args = model_args(own.train.model, dict(own.train.model_kwargs), *shape)
    build_model(args)  # raises with one line when the recipe's model does not fit its windows
    return train(tmp / "c.h5", tmp / "run", cfg), counts


def test_tuab(tmp_path, monkeypatch):
    from brainpipe.synthetic import make_corpus

    monkeypatch.setenv("TQDM_DISABLE", "1")
    make_corpus(tmp_path / "raw", "tuab", n_subjects=6, seed=0, duration_s=(130, 150))
    summary, _ = run("tuab", tmp_path / "raw", tmp_path)
    assert summary["label_names"] == ["normal", "abnormal"] and summary["eval"]["n_windows"] > 0


def test_tusz(tmp_path, monkeypatch):
    from brainpipe.synthetic import make_corpus

    monkeypatch.setenv("TQDM_DISABLE", "1")
    make_corpus(tmp_path / "raw", "tusz", n_subjects=6, seed=0, duration_s=(60, 90))
    summary, _ = run("tusz", tmp_path / "raw", tmp_path)
    assert summary["label_names"] == ["bckg", "seiz"] and summary["eval"]["n_windows"] > 0


def test_tuev(tmp_path, monkeypatch):
    from brainpipe.synthetic import make_corpus

    monkeypatch.setenv("TQDM_DISABLE", "1")
    make_corpus(tmp_path / "raw", "tuev", n_subjects=5, seed=0, duration_s=(20, 30))
    summary, counts = run("tuev", tmp_path / "raw", tmp_path)
    assert summary["label_names"] == ["spsw", "gped", "pled", "eyem", "artf", "bckg"]
    assert set(counts) == set(summary["label_names"])


def sleep_cassette(root: Path) -> None:
    """PhysioNet's sleep-cassette names: SC4ssNE0-PSG.edf + SC4ssNEC-Hypnogram.edf, 30-s stages."""
    stages = ["W", "1", "2", "3", "4", "R", "?", "2", "W"]
    for k, night in enumerate(["SC4001E0", "SC4002E0", "SC4011E0", "SC4161E0"]):
        rng = np.random.default_rng(k)
        sig = [
            edfio.EdfSignal(
                rng.normal(0, 20, 270 * 100), 100, label=lab, physical_range=(-500, 500)
            )
            for lab in ("EEG Fpz-Cz", "EEG Pz-Oz")
        ]
        root.mkdir(parents=True, exist_ok=True)
        edfio.Edf(sig).write(root / f"{night}-PSG.edf")
        ann = [
            edfio.EdfAnnotation(30.0 * j, 30.0, f"Sleep stage {s}") for j, s in enumerate(stages)
        ]
        edfio.Edf([], annotations=ann).write(root / f"{night[:6]}{'EC'}-Hypnogram.edf")


def test_sleep_edf(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    sleep_cassette(tmp_path / "sleep-cassette")
    # One channel (Fpz-Cz): the recipe's own DeepSleepNet, not FAST's ShallowFBCSPNet (which
    # needs several channels).
    summary, counts = run(
        "sleep_edf", tmp_path / "sleep-cassette", tmp_path, "train.model=DeepSleepNet",
        "train.model_kwargs={}",
    )  # fmt: skip
    assert summary["label_names"] == ["W", "N1", "N2", "N3", "REM"]
    # 9 epochs a night: W N1 N2 N3 N3 REM ? N2 W -> 4 nights
    assert counts == {"W": 8, "N1": 4, "N2": 8, "N3": 8, "REM": 4, "none": 4}
    assert summary["eval"]["n_windows"] == 8  # SC416: the eval subject


def test_eegmmidb(tmp_path, monkeypatch):
    """S001's imagery runs (6, 10, 14) under PhysioNet's names; runs 10 and 14 also stand in
    for a validation subject (S071) and an eval subject (S090) of the recipe's split."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    src = real("eegmmidb") / "S001"
    raw = tmp_path / "eegmmidb"
    (raw / "S001").mkdir(parents=True)
    (raw / "S090").mkdir()
    (raw / "S071").mkdir()
    (raw / "S071" / "S071R10.edf").symlink_to(src / "S001R10.edf")
    for run_ in ("S001R06.edf", "S001R10.edf", "S001R14.edf", "S001R03.edf"):
        (raw / "S001" / run_).symlink_to(src / run_)
    (raw / "S090" / "S090R14.edf").symlink_to(src / "S001R14.edf")
    summary, counts = run("eegmmidb", raw, tmp_path)
    assert summary["label_names"] == ["hands", "feet"]
    # One window per T1/T2 cue, 15 a run. R03 (left/right fist) does not match the recipe's
    # regex: cached under its own name with no split, never trained on or scored.
    assert counts["hands"] + counts["feet"] == 90 and "none" not in counts
    with CacheReader(tmp_path / "c.h5") as r:
        split = r.recordings["split"].astype(str)[r.windows["recording"]].tolist()
        got = {s: split.count(s) for s in set(split)}
        assert got == {"train": 45, "val": 15, "eval": 15, "": 15}
    assert summary["eval"]["n_windows"] == 15


def test_eegmat(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    src = real("eegmat")
    raw = tmp_path / "eegmat"
    raw.mkdir()
    for s in ("Subject00", "Subject01", "Subject28", "Subject32"):
        for k in (1, 2):
            (raw / f"{s}_{k}.edf").symlink_to(src / f"{s}_{k}.edf")
    summary, counts = run("eegmat", raw, tmp_path)
    assert summary["label_names"] == ["1", "2"]
    with CacheReader(tmp_path / "c.h5") as r:
        rec = r.recordings
        split = dict(zip(rec["subject"].astype(str), rec["split"].astype(str), strict=True))
        assert split == {"Subject00": "train", "Subject01": "train", "Subject28": "val",
                         "Subject32": "eval"}  # fmt: skip
        assert r.window_samples == 1000 and len(r.channels) == 20 and r.channels[-1] == "A2-A1"
        # microvolts, unscaled: EEG of tens of uV, not unit variance
        x = r.read_windows(r.windows["start"][:8], r.window_samples).astype(np.float32)
        assert 5 < float(np.std(x)) < 500
