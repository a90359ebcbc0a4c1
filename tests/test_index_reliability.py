"""Issue 16's index-side faults, each reproduced on real files: symlink loops, non-UTF-8 names,
events after an incremental re-index, corrupt or foreign index files, paths outside the raw
root, torn temporary files."""

import os
from pathlib import Path

import edfio
import numpy as np

from brainpipe.config import load_config
from brainpipe.index import build_index
from brainpipe.indexfile import Index

TUAB = load_config(None, ["corpus.layout=tuab"])
TUSZ = load_config(None, ["corpus.layout=tusz"])
EEG = ["FP1", "FP2", "C3", "C4", "O1", "O2"]


def write_edf(path: Path, sfreq: float = 250, seconds: float = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    sigs = [
        edfio.EdfSignal(
            rng.normal(0, 30, int(sfreq * seconds)),
            sampling_frequency=sfreq,
            label=f"EEG {c}-REF",
            physical_dimension="uV",
            physical_range=(-500, 500),
        )
        for c in EEG
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    edfio.Edf(sigs).write(path)
    return path


def tuab_tree(root: Path, n: int = 3) -> Path:
    for k in range(n):
        write_edf(root / f"edf/train/normal/01_tcp_ar/aaaaaaa{k}_s001_t000.edf", seed=k)
    return root


def csv_bi(events: list[tuple[float, float, str]]) -> str:
    rows = "".join(f"TERM,{on},{off},{lab},1.0\n" for on, off, lab in events)
    return "# version = csv_v1.0.0\nchannel,start_time,stop_time,label,confidence\n" + rows


def tusz_edf(root: Path, subject: str, events: list[tuple[float, float, str]]) -> Path:
    edf = write_edf(root / f"edf/dev/{subject}/s001_2003/01_tcp_ar/{subject}_s001_t000.edf")
    edf.with_suffix(".csv_bi").write_text(csv_bi(events))
    return edf


# --- 16.12: Index.events(i) after an incremental re-index -----------------------------------


def test_events_belong_to_their_recording_after_a_partial_reindex(tmp_path):
    root = tmp_path / "tusz"
    own = {  # each recording's seizure starts at its own time, so a mix-up shows
        "aaaaaaab": [(2.0, 4.0, "fnsz")],
        "aaaaaaad": [(6.0, 7.0, "gnsz"), (8.0, 9.0, "fnsz")],
        "aaaaaaaf": [(11.0, 12.0, "cpsz")],
    }
    edfs = {s: tusz_edf(root, s, ev) for s, ev in own.items()}
    out = tmp_path / "index.npz"
    build_index(root, out, TUSZ, progress=False)
    # Re-index touching some files: one recording earlier in path order is new, one changes its
    # events, the others are reused from the previous index.
    own["aaaaaaaa"] = [(1.0, 1.5, "absz")]
    tusz_edf(root, "aaaaaaaa", own["aaaaaaaa"])
    own["aaaaaaaf"] = [(13.0, 14.0, "fnsz"), (15.0, 16.0, "fnsz")]
    edfs["aaaaaaaf"].with_suffix(".csv_bi").write_text(csv_bi(own["aaaaaaaf"]))
    os.utime(edfs["aaaaaaaf"].with_suffix(".csv_bi"), ns=(1, 2_000_000_000))
    res = build_index(root, out, TUSZ, progress=False)
    assert (res.n_read, res.n_reused) == (2, 2)
    for idx in (res.index, Index.load(out)):
        for i in range(len(idx)):
            got = [(e.onset_s, e.offset_s, e.label) for e in idx.events(i)]
            assert got == own[str(idx.subject[i])], idx.path[i]
    fresh = build_index(root, tmp_path / "fresh.npz", TUSZ, progress=False).index
    for i in range(len(fresh)):
        assert fresh.events(i) == Index.load(out).events(i)
