"""Issue 11, labels in: how `index` reports a TUSZ tree's annotation problems, and what a
seizure cache does with a recording whose annotations are missing or unparsable.

Every file here is real: EDFs written by edfio, annotation files as TUH writes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_edf

from brainpipe.cache import build_cache
from brainpipe.cachefile import CacheReader
from brainpipe.cli import main
from brainpipe.config import load_config
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index
from brainpipe.indexfile import Index
from brainpipe.reporting import index_table, scan_line

EEG = ["FP1", "FP2", "F3", "F4", "C3", "C4", "O1", "O2"]
HEAD = "# version = csv_v1.0.0\n# duration = {d:.2f} secs\n#\nchannel,start_time,stop_time,label,confidence\n"


def tusz_edf(root: Path, subject: str, seconds: float = 60, sfreq: float = 100) -> Path:
    path = root / f"edf/train/{subject}/s001_2003/01_tcp_ar/{subject}_s001_t000.edf"
    labels = [f"EEG {c}-REF" for c in EEG]
    return write_edf(path, sfreq, seconds, labels=labels, seed=len(subject), scale=20.0)


def tree(root: Path) -> dict[str, Path]:
    """Five TUSZ recordings of 60 s: clean, unknown label, past the end, missing, unparsable."""
    edfs = {name: tusz_edf(root, name) for name in ("aaaaaaaa", "aaaaaaab", "aaaaaaac",
                                                   "aaaaaaad", "aaaaaaae")}  # fmt: skip
    edfs["aaaaaaaa"].with_suffix(".csv_bi").write_text(
        HEAD.format(d=60)
        + "TERM,0.0,20.0,bckg,1.0\nTERM,20.0,40.0,cpsz,1.0\nTERM,40.0,60.0,bckg,1.0\n"
    )
    edfs["aaaaaaab"].with_suffix(".csv_bi").write_text(
        HEAD.format(d=60) + "TERM,10.0,30.0,xysz,1.0\n"
    )
    # Seizure rows only, the last running past the 60 s EDF (a longer `# duration` header).
    edfs["aaaaaaac"].with_suffix(".csv_bi").write_text(
        HEAD.format(d=90)
        + "TERM,5.0,15.0,seiz,1.0\nTERM,50.0,75.0,seiz,1.0\nTERM,70.0,80.0,seiz,1.0"
    )
    # aaaaaaad: no annotation file at all.
    edfs["aaaaaaae"].with_suffix(".csv_bi").write_text(
        HEAD.format(d=60) + "TERM,10.0,oops,seiz,1.0\n"
    )
    return edfs


CFG = ["corpus.layout=tusz", "preprocess.channels=[FP1, FP2, C3, C4]", "preprocess.sfreq=50",
       "preprocess.h_freq=20", "preprocess.notch_freqs=[]", "window.seconds=10",
       "window.stride_seconds=10"]  # fmt: skip


def test_index_reports_unknown_labels_clipped_missing_and_unparsable(tmp_path):
    root = tmp_path / "tusz"
    tree(root)
    res = build_index(root, tmp_path / "i.npz", load_config(None, CFG), progress=False)
    idx = Index.load(tmp_path / "i.npz")
    # Every EDF stays in the index: the missing and unparsable ones unlabelled, not background.
    assert [s for s in idx.subject] == ["aaaaaaaa", "aaaaaaab", "aaaaaaac", "aaaaaaad", "aaaaaaae"]
    assert idx.label.tolist() == ["seiz", "seiz", "seiz", "", ""]
    assert idx.errors == []
    events = {str(idx.subject[i]): [(e.onset_s, e.offset_s, e.label) for e in idx.events(i)]
              for i in range(len(idx))}  # fmt: skip
    assert events["aaaaaaaa"] == [(20.0, 40.0, "cpsz")]
    assert events["aaaaaaab"] == [(10.0, 30.0, "xysz")]  # unknown: a seizure by default
    # Clipped to the EDF's 60 s (not the file's 90 s header); the event after it is dropped.
    assert events["aaaaaaac"] == [(5.0, 15.0, "seiz"), (50.0, 60.0, "seiz")]
    assert events["aaaaaaad"] == [] and events["aaaaaaae"] == []
    why = {w["path"].split("/")[2]: w["reason"] for w in idx.warnings}
    assert why["aaaaaaab"].startswith("unknown annotation label: 'xysz' counted as seizure")
    assert why["aaaaaaac"].startswith("events clipped: 2 past the recording's end (60 s)")
    assert why["aaaaaaad"].startswith("annotations missing: no .csv_bi or .csv beside")
    assert why["aaaaaaae"].startswith("annotations unparsable: edf/train/aaaaaaae/")
    assert "row 5" in why["aaaaaaae"] and "oops" in why["aaaaaaae"]
    assert "aaaaaaaa" not in why
    line = (
        "annotations: 1 missing, 1 unparsable (recordings indexed unlabelled); 2 events clipped "
        "at the end of 1 recording; unknown labels 'xysz' counted as seizure (list the seizure "
        "labels in corpus.seizure_labels) in 1 recording"
    )
    assert line in scan_line(res).splitlines()
    table = index_table(idx.summary())
    assert line in table.splitlines() and "warnings: 4" in table


def test_seizure_labels_make_the_rule_explicit(tmp_path):
    root = tmp_path / "tusz"
    tree(root)
    cfg = load_config(None, [*CFG, "corpus.seizure_labels=[seiz, cpsz]"])
    idx = build_index(root, tmp_path / "i.npz", cfg, progress=False).index
    i = idx.subject.tolist().index("aaaaaaab")
    assert idx.events(i) == [] and idx.label[i] == "bckg"  # xysz is not listed: background
    reasons = [w["reason"] for w in idx.warnings if "aaaaaaab" in w["path"]]
    assert reasons == [
        "unknown annotation label: 'xysz' counted as background (not in corpus.seizure_labels)"
    ]
    named = load_config(None, [*CFG, "corpus.seizure_labels=[seiz, cpsz, xysz]"])
    idx = build_index(root, tmp_path / "j.npz", named, progress=False).index
    assert [w for w in idx.warnings if "aaaaaaab" in w["path"]] == []
    assert [(e.onset_s, e.label) for e in idx.events(i)] == [(10.0, "xysz")]
    # A config without the key hashes as before it existed.
    assert "seizure_labels" not in load_config(None, CFG).to_dict()["corpus"]
    with pytest.raises(BrainpipeError, match="corpus.seizure_labels.*'3'"):
        load_config(None, [*CFG, "corpus.seizure_labels=['3']"])


def test_problems_survive_an_incremental_rerun_and_a_fix_clears_them(tmp_path):
    root = tmp_path / "tusz"
    edfs = tree(root)
    out = tmp_path / "i.npz"
    cfg = load_config(None, CFG)
    build_index(root, out, cfg, progress=False)
    again = build_index(root, out, cfg, progress=False)
    assert again.n_read == 0 and len(again.index.warnings) == 4
    edfs["aaaaaaad"].with_suffix(".csv_bi").write_text(
        HEAD.format(d=60) + "TERM,0.0,60.0,bckg,1.0\n"
    )
    res = build_index(root, out, cfg, progress=False)
    assert res.n_read == 1
    idx = Index.load(out)
    assert idx.label.tolist()[3] == "bckg"
    assert not [w for w in idx.warnings if "aaaaaaad" in w["path"]]


def test_seizure_cache_skips_unlabelled_recordings_with_the_reason(tmp_path, capsys):
    root = tmp_path / "tusz"
    tree(root)
    cfg = load_config(None, [*CFG, "cache.task=seizure"])
    build_index(root, tmp_path / "i.npz", cfg, progress=False)
    res = build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    skipped = dict(res.skipped)
    assert set(skipped) == {
        "edf/train/aaaaaaad/s001_2003/01_tcp_ar/aaaaaaad_s001_t000.edf",
        "edf/train/aaaaaaae/s001_2003/01_tcp_ar/aaaaaaae_s001_t000.edf",
    }
    assert all(
        r.startswith(("annotations missing", "annotations unparsable")) for r in skipped.values()
    )
    with CacheReader(tmp_path / "c.h5") as r:
        assert r.task == "seizure" and len(r.recordings["path"]) == 3
        # 6 windows of 10 s each: cpsz 20-40 s; xysz 10-30 s; seiz 5-15 (half of two windows,
        # label_overlap 0.5 takes both) and 50-60 (clipped).
        assert r.windows["label"].tolist() == [0, 0, 1, 1, 0, 0,  0, 1, 1, 0, 0, 0,
                                               1, 1, 0, 0, 0, 1]  # fmt: skip
    # Without a task the unlabelled recordings are cached (label -1), as any other layout's.
    plain = load_config(None, CFG)
    res = build_cache(tmp_path / "i.npz", tmp_path / "d.h5", plain, workers=1, progress=False)
    assert res.n_written == 5
    assert main(["inspect", str(tmp_path / "i.npz")]) == 0
    assert "annotations: 1 missing, 1 unparsable" in capsys.readouterr().out
