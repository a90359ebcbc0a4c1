"""The cache format's contract, tested on files the writer under test writes.

Through the public API of `brainpipe.cachefile` only (no build stage, no index): what the writer
puts in is what the reader gives back, whichever way the rows arrive; a file the writer did not
finish is refused by the reader and resumed by the next writer from its journal; one path has
one writer at a time; a file of another format version or with a declared size the file cannot
hold is refused with one line. tests/test_cache.py covers the same file made by `build-cache`,
tests/test_cache_faults.py the kills during a build and during finalize.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from brainpipe.cachefile import (
    FORMAT_VERSION,
    STATUS_DONE,
    STATUS_SKIPPED,
    CacheReader,
    CacheWriter,
    Layout,
)
from brainpipe.errors import BrainpipeError

SRC = str(Path(__file__).parents[1] / "src")
SFREQ = 10.0
LENGTHS = (30, 50, 40, 25)
CHANNELS = ("FP1", "FP2", "CZ")


def seizure_layout(lengths=LENGTHS) -> Layout:
    """Four recordings of two subjects, seizure events on two of them."""
    n = len(lengths)
    recordings = {
        "path": np.array([f"sub{i // 2}/r{i}.edf" for i in range(n)]),
        "subject": np.array([f"sub{i // 2}" for i in range(n)]),
        "session": np.array(["s001"] * n),
        "split": np.array(["train", "train", "eval", "eval"][:n]),
        "label": np.zeros(n, np.int8),
        "sfreq_orig": np.array([250.0, 256.0, 250.0, 512.0][:n]),
        "length": np.array(lengths, np.int64),
        "t0_s": np.array([0.0, 1.0, 0.0, 2.5][:n]),
        "mask": np.array([[True, True, True], [True, False, True]] * (n // 2 + 1))[:n],
    }
    events = {
        "recording": np.array([0, 2], np.int64),
        "onset_s": np.array([0.0, 1.0]),
        "offset_s": np.array([1.5, 3.0]),
        "label": np.array(["seiz", "seiz"]),
    }
    attrs = {"config_hash": "cfg", "index_hash": "idx", "raw_root": "/raw"}
    return Layout(
        CHANNELS, SFREQ, "float16", recordings, events, ("bckg", "seiz"), attrs, "seizure"
    )


def rows_of(layout: Layout, row: int) -> np.ndarray:
    """A recording's signal, distinct per row and exact in float16."""
    n, c = int(layout.recordings["length"][row]), len(layout.channels)
    return (np.arange(n * c, dtype=np.float32).reshape(n, c) % 512) / 8 + row


def write_all(path: Path, layout: Layout) -> None:
    """Row 0 as an array, row 1 skipped, row 2 as bytes, row 3 through its RowTarget (the way a
    build-cache worker writes it) and then journalled."""
    with CacheWriter(path, layout) as w:
        assert w.pending_rows() == [0, 1, 2, 3] and w.resumed == 0
        w.write(0, rows_of(layout, 0))
        w.skip(1, "unreadable: bad header")
        w.write(2, rows_of(layout, 2).astype(np.float16).tobytes())
        with w.target(3).open() as sink:
            x = rows_of(layout, 3)
            sink[0:10] = x[:10]
            sink[10:25] = x[10:]
        w.written(3)
        done = w.finish(window=10, stride=5, label_overlap=0.5)
    assert done.path == path and done.bytes == path.stat().st_size
    # windows per recording: (30-10)//5+1 = 5, 0 (skipped), (40-10)//5+1 = 7, (25-10)//5+1 = 4
    assert done.n_windows == 16


def test_what_the_writer_puts_in_the_reader_gives_back(tmp_path):
    layout = seizure_layout()
    path = tmp_path / "c.h5"
    write_all(path, layout)
    with CacheReader(path) as r:
        assert r.attrs["format_version"] == FORMAT_VERSION
        assert (r.channels, r.sfreq, r.task, r.label_names) == (
            CHANNELS,
            SFREQ,
            "seizure",
            ("bckg", "seiz"),
        )
        assert (r.window_samples, r.stride_samples, str(r.dtype)) == (10, 5, "float16")
        assert r.attrs["config_hash"] == "cfg" and r.attrs["raw_root"] == "/raw"
        rec = r.recordings
        for k in ("path", "subject", "session", "split"):
            assert rec[k].tolist() == layout.recordings[k].tolist(), k
        for k in ("sfreq_orig", "length", "t0_s", "mask"):
            np.testing.assert_array_equal(rec[k], layout.recordings[k], err_msg=k)
        assert rec["offset"].tolist() == [0, 30, 80, 120]
        assert rec["status"].tolist() == [STATUS_DONE, STATUS_SKIPPED, STATUS_DONE, STATUS_DONE]
        assert r.skipped == [{"path": "sub0/r1.edf", "reason": "unreadable: bad header"}]
        assert r.shape == (sum(LENGTHS), len(CHANNELS))
        for row in (0, 2, 3):
            got = r.read(int(rec["offset"][row]), int(rec["length"][row]))
            np.testing.assert_array_equal(got, rows_of(layout, row).astype(np.float16))
        # the skipped row's reserved rows are there, and no window points at them
        assert not np.isin(r.windows["recording"], [1]).any()
        assert rec["n_windows"].tolist() == [5, 0, 7, 4]
        assert rec["first_window"].tolist() == [0, 5, 5, 12]
        starts = r.windows["start"]
        assert starts[:5].tolist() == [0, 5, 10, 15, 20] and starts[5:7].tolist() == [80, 85]
        batch = r.read_windows(starts[[0, 6, 15]], 10)
        for k, s in enumerate(starts[[0, 6, 15]].tolist()):
            np.testing.assert_array_equal(batch[k], r.read(s, 10))
        # seizure labels: a window is 1 when at least half of it (0.5 s) overlaps an event. Row
        # 0's event [0, 1.5) s covers windows 0-1, 0.5-1.5 and half of 1-2 s; row 2's [1, 3) s
        # half of 0.5-1.5, all of 1-2, 1.5-2.5, 2-3 and half of 2.5-3.5 s
        assert r.windows["label"][:5].tolist() == [1, 1, 1, 0, 0]
        assert r.windows["label"][5:12].tolist() == [0, 1, 1, 1, 1, 1, 0]
        assert r.events["label"].tolist() == ["seiz", "seiz"]
        np.testing.assert_array_equal(r.events["onset_s"], layout.events["onset_s"])
        assert r.subjects["name"].tolist() == ["sub0", "sub1"]
        assert r.subjects["n_windows"].tolist() == [5, 11]
        assert r.subjects["first_recording"].tolist() == [0, 2]
        s = r.summary()
        assert s["n_recordings"] == 3 and s["n_windows"] == 16 and s["n_subjects"] == 2
        assert s["windows_by_split_label"] == {
            "train": {"bckg": 2, "seiz": 3},
            "eval": {"bckg": 6, "seiz": 5},
        }


def test_rows_the_writer_does_not_reserve_are_refused(tmp_path):
    layout = seizure_layout()
    with CacheWriter(tmp_path / "c.h5", layout) as w:
        with pytest.raises(ValueError, match="layout reserves"):
            w.write(0, rows_of(layout, 0)[:-1])
        short = pytest.raises(ValueError, match="25 rows written, the layout reserves 30")
        with short, w.target(0).open() as sink:
            sink[0:25] = rows_of(layout, 0)[:25]
        with pytest.raises(ValueError, match="out of order"), w.target(0).open() as sink:
            sink[5:10] = rows_of(layout, 0)[5:10]
        with pytest.raises(ValueError, match="neither written nor skipped"):
            w.finish(window=10, stride=5, label_overlap=0.5)
        # nothing of the refused writes was journalled: every row is still pending
        assert w.pending_rows() == [0, 1, 2, 3]


# A writer in another process: writes rows 0 and 1 (row 1 through its RowTarget), journals
# them, says so, then waits to be killed before it finishes.
HOLDER = """
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_cachefile import seizure_layout, rows_of
from brainpipe.cachefile import CacheWriter

layout = seizure_layout()
with CacheWriter(sys.argv[1], layout) as w:
    w.write(0, rows_of(layout, 0))
    with w.target(1).open() as sink:
        sink[0:50] = rows_of(layout, 1)
    w.written(1)
    print("written", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A writer process that holds `c.h5`'s partial file with two rows journalled."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "c.h5"), str(Path(__file__).parent)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "written\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_second_writer_on_the_same_path_is_refused_naming_the_holder(tmp_path, holder):
    layout = seizure_layout()
    for overwrite in (False, True):  # --force must not break the lock either
        refused = pytest.raises(BrainpipeError, match=rf"being built by process {holder.pid}\b")
        with refused, CacheWriter(tmp_path / "c.h5", layout, overwrite=overwrite):
            pytest.fail("a second writer got in")
    # the refused writer touched nothing: the holder's partial file and journal are intact
    assert (tmp_path / "c.h5.journal").read_text() == "0\t\n1\t\n"


def test_a_killed_writer_leaves_a_partial_the_reader_refuses_and_a_new_writer_resumes(
    tmp_path, holder
):
    layout = seizure_layout()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    path, partial = tmp_path / "c.h5", tmp_path / "c.h5.partial"
    assert not path.exists() and partial.exists()
    with pytest.raises(BrainpipeError, match=r"c\.h5\.partial: cache build did not finish"):
        CacheReader(partial)
    with pytest.raises(BrainpipeError, match=r"c\.h5: cache not found"):
        CacheReader(path)
    with CacheWriter(path, layout) as w:
        # the journal's rows are done, their signal is not written again
        assert w.done_rows == {0: "", 1: ""} and w.resumed == 2 and w.pending_rows() == [2, 3]
        for row in w.pending_rows():
            w.write(row, rows_of(layout, row))
        w.finish(window=10, stride=5, label_overlap=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]
    with CacheReader(path) as r:
        assert r.recordings["status"].tolist() == [STATUS_DONE] * 4 and r.skipped == []
        for row, off in enumerate(r.recordings["offset"].tolist()):
            n = int(r.recordings["length"][row])
            np.testing.assert_array_equal(r.read(off, n), rows_of(layout, row).astype(np.float16))


def test_a_file_of_another_format_version_is_refused_naming_both(tmp_path):
    path = tmp_path / "c.h5"
    write_all(path, seizure_layout())
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    want = rf"c\.h5: cache format version {FORMAT_VERSION + 1}, this brainpipe reads version {FORMAT_VERSION};"
    with pytest.raises(BrainpipeError, match=want):
        CacheReader(path)
    with h5py.File(path, "r+") as f:
        del f.attrs["format_version"]  # a file of no brainpipe version at all
    with pytest.raises(BrainpipeError, match="cache format version -1, this brainpipe reads"):
        CacheReader(path)


@pytest.mark.parametrize(
    "table, chunked",
    [("events/onset_s", False), ("subjects/n_windows", True)],
)
def test_a_declared_size_the_file_cannot_hold_is_refused(tmp_path, table, chunked):
    path = tmp_path / "c.h5"
    write_all(path, seizure_layout())
    with h5py.File(path, "r+") as f:
        del f[table]
        # never written: the declared shape is all there is, far past what the file holds
        kwargs = {"chunks": (1024,), "compression": "gzip"} if chunked else {}
        f.create_dataset(table, shape=(10**11,), dtype=np.int64, **kwargs)
    size = path.stat().st_size
    with pytest.raises(BrainpipeError) as e:
        CacheReader(path)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert f"/{table} declares (100000000000,) (800,000,000,000 bytes)" in msg
    assert (
        f"the file has {size:,}" in msg and "rebuild it with `brainpipe build-cache --force`" in msg
    )
