"""The tests' shared helpers: real EDF files, small real caches and cache layouts, the shipped configs.

Test modules import these (`from helpers import write_edf`) and never import each other, so a
module's helpers do not move or break when another test module changes. pytest finds this module
because tests/ has a conftest.py and no __init__.py (rootdir-relative "prepend" import mode puts
tests/ on sys.path); a subprocess a test starts gets tests/ on its PYTHONPATH from that test.

Everything here writes files with the libraries or the format code under test (EDF with edfio,
caches with `CacheWriter`), never with hand-packed bytes, so what a test reads back is real.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import edfio
import h5py
import numpy as np

from brainpipe.cachefile import STATUS_DONE, CacheReader, CacheWriter, Layout
from brainpipe.config import STANDARD_1020, Config, load_config
from brainpipe.corpus import TASK_LABELS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMOKE = CONFIGS / "smoke.yaml"

# A TUH recording's signals: eight 10-20 electrodes against the reference, ECG and photic.
TUH_EEG = ["FP1", "FP2", "F3", "F4", "C3", "C4", "O1", "O2"]
TUH_LABELS = [f"EEG {c}-REF" for c in TUH_EEG] + ["EKG1-REF", "PHOTIC-REF"]

Annotation = tuple[float, float | None, str]


def write_edf(
    path: Path,
    sfreq: float = 250.0,
    seconds: float = 20.0,
    *,
    labels: Sequence[str] | None = None,
    seed: int = 0,
    annotations: Iterable[Annotation] | None = None,
    scale: float = 30.0,
    unit: str = "uV",
) -> Path:
    """Write a real EDF of Gaussian noise (sd `scale`, physical range +-500) with edfio.

    labels: the signals, in file order; default `TUH_LABELS`.
    annotations: (onset_s, duration_s or None, text) rows. None writes plain EDF (no annotation
        signal); a sequence, even an empty one, writes EDF+C with an annotation signal.
    unit: each signal's physical dimension ("" leaves the field blank).
    """
    rng = np.random.default_rng(seed)
    n = int(sfreq * seconds)
    sigs = [
        edfio.EdfSignal(
            rng.normal(0, scale, n),
            sampling_frequency=sfreq,
            label=lab,
            physical_dimension=unit,
            physical_range=(-500, 500),
        )
        for lab in (TUH_LABELS if labels is None else labels)
    ]
    ann = None if annotations is None else [edfio.EdfAnnotation(*a) for a in annotations]
    path.parent.mkdir(parents=True, exist_ok=True)
    edfio.Edf(sigs, annotations=ann).write(path)
    return path


def sleep_edf_tree(root: Path) -> dict[str, list[Annotation]]:
    """Two Sleep-EDF nights: each a 120 s PSG (EDF+C, two channels) beside its hypnogram, an
    annotation-only EDF+. Returns each night's hypnogram rows, keyed by the night's prefix."""
    stages = {
        "SC4001": [(0.0, 30.0, "Sleep stage W"), (30.0, 60.0, "Sleep stage 1"),
                   (90.0, 30.0, "Sleep stage 2")],
        "SC4012": [(0.0, 60.0, "Sleep stage W"), (60.0, 60.0, "Sleep stage R")],
    }  # fmt: skip
    for rec, hyp in (("SC4001E0", "SC4001EC"), ("SC4012E0", "SC4012EC")):
        write_edf(
            root / f"{rec}-PSG.edf",
            100,
            120,
            labels=("EEG Fpz-Cz", "EEG Pz-Oz"),
            scale=20.0,
            annotations=[],
        )
        edfio.Edf([], annotations=[edfio.EdfAnnotation(*a) for a in stages[rec[:6]]]).write(
            root / f"{hyp}-Hypnogram.edf"
        )
    return stages


# --- small caches -------------------------------------------------------------------------------

SFREQ = 50.0  # the rate of every `make_cache` cache


# One epoch of ShallowFBCSPNet on the CPU, no loader workers, no validation carve: how the
# end-to-end tests of a corpus layout (recipes, TUEV, eegmmidb) train.
ONE_CPU_EPOCH = (
    "train.model=ShallowFBCSPNet",
    "train.epochs=1",
    "train.num_workers=0",
    "train.device=cpu",
    "train.amp=false",
    "train.val_fraction=0",
)


def small_config(*overrides: str) -> Config:
    """The defaults at 50 Hz with 2 s windows every 2 s: what `make_cache` caches are built for."""
    return load_config(
        None,
        [
            f"preprocess.sfreq={SFREQ}",
            "preprocess.h_freq=20",
            "window.seconds=2",
            "window.stride_seconds=2",
            *overrides,
        ],
    )


def make_cache(
    path: Path,
    subjects: list[tuple[str, str, int]] | None = None,
    *,
    recordings_per_subject: int = 2,
    seconds: float = 20.0,
    n_channels: int = 4,
    cfg: Config | None = None,
    label_names: tuple[str, ...] = ("normal", "abnormal"),
    events: dict[str, np.ndarray] | None = None,
    status: np.ndarray | None = None,
    seed: int = 0,
    signature: bool = False,
) -> Path:
    """A finished cache written with the cache format's own writer: `subjects` = (name, split,
    label) with `recordings_per_subject` each. Its signal is noise, plus a 6 Hz rhythm in class-1
    recordings so that a model can learn the labels.

    `signature`: each subject's recordings carry its own rhythm (3 Hz + 1.2 Hz per subject, its
    own channel weights), so the subject tasks can learn who is who."""
    cfg = cfg or small_config()
    if subjects is None:
        subjects = [(f"s{i:02d}", "train", i % 2) for i in range(10)] + [
            (f"e{i:02d}", "eval", i % 2) for i in range(4)
        ]
    rows = [(s, split, lab, k) for s, split, lab in subjects for k in range(recordings_per_subject)]
    n_rec = len(rows)
    rng = np.random.default_rng(seed)
    lengths = np.array(
        [int(seconds * SFREQ) + int(rng.integers(0, 3 * SFREQ)) for _ in rows], np.int64
    )
    recordings = {
        "path": np.array([f"{sp}/{s}_s001_t{k:03d}.edf" for s, sp, _, k in rows]),
        "subject": np.array([s for s, *_ in rows]),
        "session": np.array(["s001"] * n_rec),
        "split": np.array([sp for _, sp, _, _ in rows]),
        "label": np.array([lab for _, _, lab, _ in rows], np.int8),
        "sfreq_orig": np.full(n_rec, 250.0),
        "length": lengths,
        "t0_s": np.zeros(n_rec),
        "mask": np.ones((n_rec, n_channels), bool),
    }
    config = {k: v for k, v in cfg.to_dict().items() if k in ("preprocess", "window", "cache")}
    # The fixture's label names say which task it stands for; the writer records that task.
    task = next((t for t, names in TASK_LABELS.items() if names == tuple(label_names)), "")
    layout = Layout(
        channels=tuple(STANDARD_1020[:n_channels]),
        sfreq=SFREQ,
        dtype="float16",
        recordings=recordings,
        events=events or no_events(),
        label_names=label_names,
        attrs={"config": json.dumps(config), "config_hash": "test", "index_hash": "test"},
        task=task,
    )
    status = np.full(n_rec, STATUS_DONE, np.uint8) if status is None else status
    t = np.arange(int(lengths.sum())) / SFREQ
    pos = 0
    with CacheWriter(path, layout, overwrite=True) as writer:
        for row, ((_, _, lab, _), n) in enumerate(zip(rows, lengths.tolist(), strict=True)):
            x = rng.standard_normal((n, n_channels)).astype(np.float32)
            if lab == 1:
                x += 1.5 * np.sin(2 * np.pi * 6.0 * t[pos : pos + n])[:, None]
            if signature:
                k = [name for name, *_ in subjects].index(rows[row][0])
                weights = np.random.default_rng(1000 + k).uniform(0.5, 2.0, n_channels)
                phase = rng.uniform(0, 2 * np.pi)
                x += (
                    2.0
                    * np.sin(2 * np.pi * (3.0 + 1.2 * k) * t[pos : pos + n] + phase)[:, None]
                    * weights.astype(np.float32)
                )
            pos += n
            if status[row] == STATUS_DONE:
                writer.write(row, x)
            else:
                writer.skip(row, "unreadable: test")
        writer.finish(
            int(round(cfg.window.seconds * SFREQ)),
            int(round(cfg.window.stride_seconds * SFREQ)),
            cfg.window.label_overlap,
        )
    return path


def no_events() -> dict[str, np.ndarray]:
    """An empty event table, as a cache layout takes it."""
    return {
        "recording": np.zeros(0, np.int64),
        "onset_s": np.zeros(0),
        "offset_s": np.zeros(0),
        "label": np.zeros(0, str),
    }


def seizure_cache(path: Path, cfg: Config) -> Path:
    """A two-class seizure cache: 4 train and 2 eval subjects, one 2-9 s seizure per recording."""
    subjects = [(f"s{i}", "train", -1) for i in range(4)] + [("e0", "eval", -1), ("e1", "eval", -1)]
    n = 2 * len(subjects)
    events = {
        "recording": np.arange(n),
        "onset_s": np.full(n, 2.0),
        "offset_s": np.full(n, 9.0),
        "label": np.array(["seiz"] * n),
    }
    return make_cache(path, subjects, cfg=cfg, label_names=("bckg", "seiz"), events=events)


def small_layout(lengths=(30, 50, 40), n_channels=3) -> Layout:
    """A cache layout of `len(lengths)` recordings at 10 Hz, two per subject, labels alternating."""
    n = len(lengths)
    recordings = {
        "path": np.array([f"r{i}.edf" for i in range(n)]),
        "subject": np.array([f"s{i // 2}" for i in range(n)]),
        "session": np.array(["s001"] * n),
        "split": np.array(["train"] * n),
        "label": (np.arange(n) % 2).astype(np.int8),
        "sfreq_orig": np.full(n, 100.0),
        "length": np.array(lengths, np.int64),
        "t0_s": np.zeros(n),
        "mask": np.ones((n, n_channels), bool),
    }
    attrs = {"config_hash": "c", "index_hash": "i"}
    channels = ("FP1", "FP2", "CZ")[:n_channels]
    return Layout(
        channels,
        10.0,
        "float16",
        recordings,
        no_events(),
        ("normal", "abnormal"),
        attrs,
        "abnormal",
    )


def signal_of(layout: Layout, row: int) -> np.ndarray:
    """Recording `row`'s signal for a `small_layout` cache: distinct per sample, channel and row."""
    n, c = int(layout.recordings["length"][row]), len(layout.channels)
    return np.arange(n * c, dtype=np.float32).reshape(n, c) / 100 + row


# --- reading caches back --------------------------------------------------------------------------


def signals_and_tables(path: Path) -> dict:
    """Every dataset of a cache file and its attributes but the creation time."""
    with h5py.File(path, "r") as f:
        out = {"signals": f["signals"][()]}
        for g in ("recordings", "windows", "subjects", "events", "skipped"):
            for k in f[g]:
                out[f"{g}/{k}"] = f[g][k][()]
        out["attrs"] = {k: f.attrs[k] for k in f.attrs if k != "created"}
    return out


def assert_same_cache(a: Path, b: Path) -> None:
    """Two cache files hold the same signals, tables and attributes (creation time aside)."""
    A, B = signals_and_tables(a), signals_and_tables(b)
    assert A.keys() == B.keys()
    for k in A:
        if k == "attrs":
            assert A[k].keys() == B[k].keys()
            for key in A[k]:
                assert str(A[k][key]) == str(B[k][key]), key
        else:
            np.testing.assert_array_equal(A[k], B[k], err_msg=k)


def cache_windows(path: Path) -> dict:
    """A cache's windows keyed by (recording path, start within the recording)."""
    with CacheReader(path) as r:
        rec, w = r.recordings, r.windows
        x = r.read_windows(w["start"], r.window_samples)
        keys = zip(
            rec["path"][w["recording"]].tolist(),
            (w["start"] - rec["offset"][w["recording"]]).tolist(),
            strict=True,
        )
        return dict(zip(keys, x, strict=True))
