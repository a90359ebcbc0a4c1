"""Issue 16's index-side faults, each reproduced on real files: symlink loops, non-UTF-8 names,
events after an incremental re-index, corrupt or foreign index files, paths outside the raw
root, torn temporary files."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_edf

from brainpipe.cli import main
from brainpipe.config import load_config
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index
from brainpipe.indexfile import Index
from brainpipe.reporting import scan_line

TUAB = load_config(None, ["corpus.layout=tuab"])
TUSZ = load_config(None, ["corpus.layout=tusz"])
LABELS = [f"EEG {c}-REF" for c in ("FP1", "FP2", "C3", "C4", "O1", "O2")]


def tuab_tree(root: Path, n: int = 3) -> Path:
    for k in range(n):
        write_edf(
            root / f"edf/train/normal/01_tcp_ar/aaaaaaa{k}_s001_t000.edf", labels=LABELS, seed=k
        )
    return root


def csv_bi(events: list[tuple[float, float, str]]) -> str:
    rows = "".join(f"TERM,{on},{off},{lab},1.0\n" for on, off, lab in events)
    return "# version = csv_v1.0.0\nchannel,start_time,stop_time,label,confidence\n" + rows


def tusz_edf(root: Path, subject: str, events: list[tuple[float, float, str]]) -> Path:
    edf = write_edf(
        root / f"edf/dev/{subject}/s001_2003/01_tcp_ar/{subject}_s001_t000.edf", labels=LABELS
    )
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


# --- 16.13 / 16.20: corrupt, truncated or foreign index files --------------------------------


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.fixture
def indexed(tmp_path):
    raw = tuab_tree(tmp_path / "raw")
    out = tmp_path / "index.npz"
    build_index(raw, out, TUAB, progress=False)
    return raw, out


def test_truncated_index_gives_one_line_and_index_replaces_it(indexed, tmp_path, capsys):
    raw, out = indexed
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    for argv in (
        ["inspect", str(out)],
        ["build-cache", "--index", str(out), "--cache", str(tmp_path / "c.h5")],
    ):
        err = _one_line_error(capsys, argv)
        assert str(out) in err and "brainpipe index" in err and "Traceback" not in err, err
    with pytest.raises(BrainpipeError, match="corrupt or truncated"):
        Index.load(out)
    assert not (tmp_path / "c.h5").exists()
    res = build_index(raw, out, TUAB, progress=False)  # a broken output of ours is replaced
    assert res.written and res.n_read == 3 and len(Index.load(out)) == 3
    for cut in (0, 3):  # cut to nothing, or inside the zip magic
        out.write_bytes(data[:cut])
        assert build_index(raw, out, TUAB, progress=False).written
        assert len(Index.load(out)) == 3


def test_a_cache_or_other_file_passed_as_index_gives_one_line(indexed, tmp_path, capsys):
    import h5py

    raw, out = indexed
    fake_cache = tmp_path / "cache.h5"
    with h5py.File(fake_cache, "w") as f:
        f.attrs["index_hash"] = "x"
        f.create_dataset("signals", data=np.zeros((4, 2), np.float16))
    np.save(tmp_path / "arr.npy", np.array([object()], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "other.npz", x=np.array([object()], dtype=object))
    (tmp_path / "notes.txt").write_text("hello\n")
    for bad in ("cache.h5", "arr.npy", "other.npz", "notes.txt"):
        argv = ["build-cache", "--index", str(tmp_path / bad), "--cache", str(tmp_path / "c.h5")]
        err = _one_line_error(capsys, argv)
        assert str(tmp_path / bad) in err and "not a brainpipe index" in err, err
        assert "pickle" not in err, err
    assert "cache" in _one_line_error(
        capsys, ["build-cache", "--index", str(fake_cache), "--cache", str(tmp_path / "c.h5")]
    )
    # `brainpipe index` never overwrites a file that is not one of its indexes.
    with pytest.raises(BrainpipeError, match="not a brainpipe index"):
        build_index(raw, fake_cache, TUAB, progress=False)
    with h5py.File(fake_cache, "r") as f:
        assert f.attrs["index_hash"] == "x"


# --- 16.14: index paths outside the raw root ---------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["../outside.edf", "edf/../../outside.edf", "/etc/hostname", "edf/train/.."]
)
def test_index_rows_outside_the_raw_root_are_refused(indexed, tmp_path, capsys, bad):
    raw, out = indexed
    outside = tmp_path / "outside.edf"
    write_edf(outside, labels=LABELS)
    idx = Index.load(out)
    paths = idx.path.tolist()
    paths[1] = bad
    idx.arrays["path"] = np.array(paths)
    idx.save(out)
    with pytest.raises(BrainpipeError, match="outside the raw root"):
        Index.load(out)
    err = _one_line_error(
        capsys, ["build-cache", "--index", str(out), "--cache", str(tmp_path / "c.h5")]
    )
    assert str(out) in err and repr(bad) in err and "brainpipe index" in err, err
    assert not (tmp_path / "c.h5").exists()


# --- 16.7: torn temporary files of an index --------------------------------------------------


def test_torn_tmp_files_of_a_killed_index_run_are_removed(indexed, tmp_path):
    raw, out = indexed
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    torn = tmp_path / f".index.npz.tmp-{int(dead.stdout)}"
    torn.write_bytes(b"PK\x03\x04 half an index")
    live = tmp_path / f".index.npz.tmp-{os.getpid()}"  # a live process's write in progress
    live.write_bytes(b"PK")
    other = tmp_path / ".other.npz.tmp-1"
    other.write_bytes(b"")
    build_index(raw, out, TUAB, progress=False)
    assert not torn.exists() and live.exists() and other.exists()


# --- 16.9: symlink loops ------------------------------------------------------------------------


def test_symlink_loops_are_followed_once_and_reported(tmp_path):
    raw = tuab_tree(tmp_path / "raw")
    montage = raw / "edf/train/normal/01_tcp_ar"
    (montage / "loop").symlink_to(".")
    (raw / "edf/train/up").symlink_to("..")  # a second loop, through a parent
    (raw / "alias").symlink_to(raw / "edf", target_is_directory=True)  # same tree, twice
    res = build_index(raw, tmp_path / "index.npz", TUAB, progress=False)
    assert res.index.path.tolist() == [
        f"edf/train/normal/01_tcp_ar/aaaaaaa{k}_s001_t000.edf" for k in range(3)
    ]
    notes = {e["path"]: e["reason"] for e in res.index.errors}
    assert set(notes) == {"edf/train/normal/01_tcp_ar/loop", "edf/train/up", "alias"}, notes
    assert notes["edf/train/normal/01_tcp_ar/loop"].startswith("symlink loop:")
    assert notes["edf/train/up"].startswith("symlink loop:")
    assert notes["alias"].startswith("directory already indexed:") and "'edf'" in notes["alias"]
    line = scan_line(res)
    assert "2 symlink loop" in line and "1 directory already indexed" in line, line


# --- 16.10: file names that are not UTF-8 -------------------------------------------------------


def test_non_utf8_file_name_is_skipped_with_a_reason_and_build_cache_runs(tmp_path, capsys):
    raw = tuab_tree(tmp_path / "raw")
    montage = raw / "edf/train/normal/01_tcp_ar"
    good = (montage / "aaaaaaa0_s001_t000.edf").read_bytes()
    bad_dir = os.fsencode(montage) + b"/caf\xe9"
    os.mkdir(bad_dir)
    for name in (b"/bbbbbbb\xff_s001_t000.edf", b"/caf\xe9/ccccccc0_s001_t000.edf"):
        with open(os.fsencode(montage) + name, "wb") as f:
            f.write(good)
    out, cache = tmp_path / "index.npz", tmp_path / "cache.h5"
    assert (
        main(["index", "--raw", str(raw), "--index", str(out), "--set", "corpus.layout=tuab"]) == 0
    )
    assert "skipped 2 (2 non-UTF-8 file name)" in capsys.readouterr().out
    idx = Index.load(out)
    assert len(idx) == 3
    errors = {e["path"]: e["reason"] for e in idx.errors}
    assert set(errors) == {
        "edf/train/normal/01_tcp_ar/bbbbbbb\\xff_s001_t000.edf",
        "edf/train/normal/01_tcp_ar/caf\\xe9",
    }, errors
    assert all(r.startswith("non-UTF-8 file name:") and "rename" in r for r in errors.values())
    argv = ["build-cache", "--index", str(out), "--cache", str(cache)]
    argv += ["--set", "preprocess.channels=[FP1,FP2,C3,C4,O1,O2]", "--set", "cache.workers=1"]
    assert main(argv) == 0, capsys.readouterr().err
    assert cache.exists() and not list(tmp_path.glob("*.partial"))
