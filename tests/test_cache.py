import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import mne
import numpy as np
import pytest
from helpers import SMOKE, assert_same_cache, signal_of, small_layout

from brainpipe.cache import build_cache, process_recording, verify_cache
from brainpipe.cachefile import FORMAT_VERSION, CacheReader, CacheWriter, compute_windows
from brainpipe.cli import main
from brainpipe.config import load_config
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index
from brainpipe.indexfile import Index
from brainpipe.reporting import verify_text
from brainpipe.synthetic import make_corpus


def smoke(*overrides):
    return load_config(SMOKE, list(overrides))


@pytest.fixture(scope="module")
def tuab(tmp_path_factory):
    """A small synthetic TUAB corpus and its index, shared by the tests of this module."""
    d = tmp_path_factory.mktemp("tuab")
    make_corpus(d / "raw", "tuab", n_subjects=8, seed=3, duration_s=(20.0, 40.0))
    build_index(d / "raw", d / "index.npz", smoke(), progress=False)
    return d


def test_build_inspect_verify(tuab, tmp_path, capsys):
    cache = tmp_path / "cache.h5"
    res = build_cache(tuab / "index.npz", cache, smoke(), workers=1, progress=False)
    idx = Index.load(tuab / "index.npz")
    assert res.n_written == len(idx) and res.n_skipped == 0
    with CacheReader(cache) as r:
        s = r.summary()
        assert s["format_version"] == FORMAT_VERSION
        assert s["channels"][:3] == ["FP1", "FP2", "F7"] and len(s["channels"]) == 19
        assert s["sfreq"] == 100.0 and s["window_samples"] == 400 and s["stride_samples"] == 200
        assert s["dtype"] == "float16"
        assert set(s["labels"]) == {"normal", "abnormal"} and set(s["splits"]) == {"train", "eval"}
        # every window of a recording is the recording's label; windows grouped by subject
        rec = r.recordings
        np.testing.assert_array_equal(r.windows["label"], rec["label"][r.windows["recording"]])
        subj = rec["subject"][r.windows["recording"]]
        starts = r.subjects["first_window"]
        for name, first, n in zip(r.subjects["name"], starts, r.subjects["n_windows"], strict=True):
            assert set(subj[first : first + n]) == {name}
        # overlapping windows share storage: rows on disk == samples, not windows * window
        assert r.shape[0] == rec["length"].sum() < len(r.windows["start"]) * r.window_samples
        attrs = r.attrs
        assert json.loads(attrs["config"])["preprocess"]["sfreq"] == 100.0
        assert attrs["index_hash"] == idx.index_hash and attrs["config_hash"]
        assert attrs["brainpipe_version"] and attrs["created"]
    rep = verify_cache(cache, n_windows=6)
    assert rep.ok, verify_text(rep)
    assert rep.checked_windows == 6
    assert main(["inspect", str(cache), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    for key in (
        "n_recordings",
        "n_windows",
        "n_subjects",
        "channels",
        "sfreq",
        "window_samples",
        "labels",
        "splits",
        "bytes",
        "format_version",
        "skipped",
    ):
        assert key in js
    assert main(["verify", str(cache)]) == 0


def test_cached_signal_equals_preprocessing_of_the_raw_file(tuab, tmp_path):
    cache = tmp_path / "c.h5"
    build_cache(tuab / "index.npz", cache, smoke(), workers=1, progress=False)
    with CacheReader(cache) as r:
        i = 2
        path = Path(r.attrs["raw_root"]) / r.recordings["path"][i]
        x, mask = process_recording(path, load_config(SMOKE).preprocess)
        stored = r.read(int(r.recordings["offset"][i]), int(r.recordings["length"][i]))
        np.testing.assert_array_equal(stored, x.astype(np.float16))
        assert mask.all()
        # and the preprocessing is what mne's signal functions compute, within float16 storage
        # precision and the resampler difference (polyphase vs mne's FFT: ~4 % RMS on this noise)
        raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
        ref = raw.get_data(picks=["EEG FP1-REF", "EEG O2-REF"])
        ref = mne.filter.resample(ref, 2, raw.info["sfreq"] / 50, verbose="error")
        ref = mne.filter.filter_data(ref, 100.0, 0.5, 40.0, fir_design="firwin", verbose="error")
        ref = (ref - ref.mean(1, keepdims=True)) / ref.std(1, keepdims=True)
        ours = stored[:, [0, 18]].T.astype(np.float64)
        edge = 300  # filter edge effects differ between implementations; compare the interior
        err = np.abs(ours[:, edge:-edge] - ref[:, edge:-edge])
        assert np.sqrt((err**2).mean()) < 0.05, "cache differs from mne's resample+filter+zscore"


def test_two_workers_give_the_same_file(tuab, tmp_path):
    build_cache(tuab / "index.npz", tmp_path / "a.h5", smoke(), workers=1, progress=False)
    build_cache(tuab / "index.npz", tmp_path / "b.h5", smoke(), workers=2, progress=False)
    assert_same_cache(tmp_path / "a.h5", tmp_path / "b.h5")


def test_rerun_is_up_to_date_changed_config_is_refused_force_rebuilds(tuab, tmp_path):
    cache = tmp_path / "c.h5"
    build_cache(tuab / "index.npz", cache, smoke(), workers=1, progress=False)
    assert build_cache(tuab / "index.npz", cache, smoke(), workers=1, progress=False).up_to_date
    with pytest.raises(BrainpipeError, match="different config.*--force"):
        build_cache(
            tuab / "index.npz", cache, smoke("preprocess.sfreq=128"), workers=1, progress=False
        )
    res = build_cache(
        tuab / "index.npz",
        cache,
        smoke("preprocess.sfreq=128"),
        workers=1,
        force=True,
        progress=False,
    )
    assert not res.up_to_date
    with CacheReader(cache) as r:
        assert r.sfreq == 128.0


@pytest.mark.slow
def test_kill_9_mid_build_then_resume_equals_uninterrupted(tuab, tmp_path):
    ref = tmp_path / "ref.h5"
    build_cache(tuab / "index.npz", ref, smoke(), workers=1, progress=False)
    cache = tmp_path / "c.h5"
    journal = tmp_path / "c.h5.journal"
    cmd = [
        sys.executable,
        "-m",
        "brainpipe",
        "build-cache",
        "--index",
        str(tuab / "index.npz"),
        "--cache",
        str(cache),
        "--config",
        str(SMOKE),
        "--workers",
        "1",
    ]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    n_rec = len(Index.load(tuab / "index.npz"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        lines = journal.read_text().count("\n") if journal.exists() else 0
        if lines >= 2:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = journal.read_text().count("\n")
    assert 2 <= done < n_rec, "the kill must land mid-build"
    assert not cache.exists()  # a half-built cache never sits under the final name
    with pytest.raises(BrainpipeError, match="did not finish"):
        CacheReader(tmp_path / "c.h5.partial")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"resumed after {done} done" in r.stdout
    assert_same_cache(ref, cache)
    assert not (tmp_path / "c.h5.partial").exists() and not journal.exists()


def test_partial_from_another_config_is_refused(tuab, tmp_path, monkeypatch):
    import brainpipe.cache.build as cache_mod

    cache = tmp_path / "c.h5"

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod.os, "pwrite", disk_full)
    with pytest.raises(BrainpipeError, match="No space left on device.*re-run to resume"):
        build_cache(tuab / "index.npz", cache, smoke(), workers=1, progress=False)
    monkeypatch.undo()
    assert not cache.exists() and (tmp_path / "c.h5.partial").exists()
    with pytest.raises(BrainpipeError, match="unfinished build with a different config"):
        build_cache(
            tuab / "index.npz", cache, smoke("preprocess.h_freq=30"), workers=1, progress=False
        )
    build_cache(
        tuab / "index.npz", cache, smoke(), workers=1, progress=False
    )  # resumes and finishes
    assert verify_cache(cache, n_windows=3).ok


def test_bad_recordings_are_skipped_with_reasons(tmp_path):
    raw = tmp_path / "raw"
    s = make_corpus(raw, "tuab", n_subjects=6, seed=1, duration_s=(20.0, 30.0))
    build_index(raw, tmp_path / "i.npz", smoke(), progress=False)
    paths = sorted(str(p) for p in s.paths)
    idx = Index.load(tmp_path / "i.npz")
    longest = str(idx.path[int(np.argmax(idx.duration_s))])
    assert idx.duration_s.max() >= 26
    # changed after indexing: the file now holds fewer records than the index planned
    victim = raw / longest
    data = victim.read_bytes()
    hdr_bytes = int(data[184:192])
    n_rec = int(data[236:244])
    rec_bytes = (len(data) - hdr_bytes) // n_rec
    victim.write_bytes(
        data[:236] + f"{n_rec - 5:<8}".encode() + data[244 : len(data) - 5 * rec_bytes]
    )
    cfg = smoke("window.seconds=25", "window.stride_seconds=25")  # some recordings are too short
    res = build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=2, progress=False)
    reasons = dict(res.skipped)
    assert "changed since indexing" in reasons[longest]
    assert any("too short" in r for r in reasons.values())
    with CacheReader(tmp_path / "c.h5") as r:
        assert {e["path"] for e in r.skipped} == set(reasons)
        assert r.summary()["n_recordings"] == res.n_written == len(paths) - len(reasons)
    assert verify_cache(tmp_path / "c.h5").ok


def test_missing_channels_skip_or_zero_fill(tuab, tmp_path):
    cfg = smoke("preprocess.channels=[FP1, C3, XX9]")
    with pytest.raises(BrainpipeError, match="no recording can be cached.*missing"):
        build_cache(tuab / "index.npz", tmp_path / "a.h5", cfg, workers=1, progress=False)
    cfg = smoke("preprocess.channels=[FP1, C3, XX9]", "preprocess.on_missing=zero")
    build_cache(tuab / "index.npz", tmp_path / "b.h5", cfg, workers=1, progress=False)
    with CacheReader(tmp_path / "b.h5") as r:
        assert r.channels == ("FP1", "C3", "XX9")
        assert (r.recordings["mask"] == [True, True, False]).all()
        x = r.read(0, 1000).astype(np.float32)
        assert (x[:, 2] == 0).all() and x[:, 0].std() > 0.5


def test_label_sanity_fails_when_a_class_is_empty(tmp_path):
    raw = tmp_path / "raw"
    make_corpus(raw, "tuab", n_subjects=4, seed=2, duration_s=(20.0, 30.0))
    for p in raw.rglob("*.edf"):
        if "/abnormal/" in str(p):
            p.unlink()
    build_index(raw, tmp_path / "i.npz", smoke(), progress=False)
    with pytest.raises(
        BrainpipeError,
        match=r"needs normal and abnormal windows but abnormal came out empty.*train: normal=",
    ):
        build_cache(tmp_path / "i.npz", tmp_path / "c.h5", smoke(), workers=1, progress=False)
    assert not (tmp_path / "c.h5").exists()


def test_tusz_window_labels_from_events(tmp_path):
    raw = tmp_path / "raw"
    make_corpus(raw, "tusz", n_subjects=6, seed=4, duration_s=(60.0, 90.0))
    cfg = load_config(
        Path(SMOKE).parent / "tusz.yaml",
        [
            "cache.workers=1",
            "preprocess.sfreq=100",
            "preprocess.h_freq=40",
            "preprocess.notch_freqs=[]",
        ],
    )
    build_index(raw, tmp_path / "i.npz", cfg, progress=False)
    build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, progress=False)
    with CacheReader(tmp_path / "c.h5") as r:
        assert r.label_names == ("bckg", "seiz") and r.attrs["task"] == r.task == "seizure"
        assert len(r.channels) == 22 and r.channels[0] == "FP1-F7"
        w, ev, rec = r.windows, r.events, r.recordings
        assert (w["label"] == 1).sum() > 0 and (w["label"] == 0).sum() > 0
        # every seizure window overlaps an event of its recording by >= half a window
        win_s = r.window_samples / r.sfreq
        for k in np.flatnonzero(w["label"] == 1)[:50]:
            i = w["recording"][k]
            t_on = (w["start"][k] - rec["offset"][i]) / r.sfreq + rec["t0_s"][i]
            m = ev["recording"] == i
            ov = np.clip(
                np.minimum(t_on + win_s, ev["offset_s"][m]) - np.maximum(t_on, ev["onset_s"][m]),
                0,
                None,
            )
            assert ov.max() >= 0.5 * win_s - 1e-6
        # recomputing the table (as train does for another stride) reproduces it
        again = compute_windows(
            rec["offset"], rec["length"], r.window_samples, r.stride_samples, rec["label"],
            (ev["recording"], ev["onset_s"], ev["offset_s"]), r.sfreq, rec["t0_s"], 0.5, keep=rec["status"] == 1,
        )  # fmt: skip
        np.testing.assert_array_equal(again["label"], w["label"])
        np.testing.assert_array_equal(again["start"], w["start"])


@pytest.mark.parametrize("compression", ["lzf", "gzip"])
def test_compressed_cache_reads_the_same(tuab, tmp_path, compression):
    build_cache(tuab / "index.npz", tmp_path / "a.h5", smoke(), workers=1, progress=False)
    build_cache(
        tuab / "index.npz",
        tmp_path / "b.h5",
        smoke(f"cache.compression={compression}"),
        workers=1,
        progress=False,
    )
    with CacheReader(tmp_path / "a.h5") as a, CacheReader(tmp_path / "b.h5") as b:
        assert b._offset is None  # chunked: read through h5py
        starts = a.windows["start"][::7]
        np.testing.assert_array_equal(
            a.read_windows(starts, a.window_samples), b.read_windows(starts, b.window_samples)
        )
    assert (tmp_path / "b.h5").stat().st_size < (tmp_path / "a.h5").stat().st_size


def test_meg_picks_by_type(tmp_path):
    raw = tmp_path / "raw"
    make_corpus(raw, "meg", n_subjects=2, seed=0)
    cfg = load_config(
        None,
        ["corpus.layout=generic", r"corpus.filename_regex=sub-(?P<subject>\d+)", "corpus.extensions=[.fif]", "preprocess.montage=meg",
         "preprocess.meg_picks=mag", "preprocess.notch_freqs=[]", "preprocess.sfreq=100", "window.seconds=2", "window.stride_seconds=2"],
    )  # fmt: skip
    build_index(raw, tmp_path / "i.npz", cfg, progress=False)
    build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    with CacheReader(tmp_path / "c.h5") as r:
        assert len(r.channels) == 102
        assert r.summary()["n_subjects"] == 2
    assert verify_cache(tmp_path / "c.h5", n_windows=2).ok


def test_verify_detects_corruption(tuab, tmp_path):
    cache = tmp_path / "c.h5"
    build_cache(tuab / "index.npz", cache, smoke(), workers=1, progress=False)
    with h5py.File(cache, "r") as f:
        off = f["signals"].id.get_offset()
    with open(cache, "r+b") as fh:  # overwrite the first window's first rows with NaN
        fh.seek(off)
        fh.write(np.full(19 * 10, np.nan, np.float16).tobytes())
    rep = verify_cache(cache, n_windows=len(CacheReader(cache).windows["start"]))
    assert not rep.ok
    assert any("non-finite" in p for p in rep.problems)
    assert any("differs from the raw file" in p for p in rep.problems)


def test_writer_crash_leaves_a_partial_that_resumes_to_the_same_file(tmp_path):
    layout = small_layout()
    with CacheWriter(tmp_path / "ref.h5", layout) as w:
        w.write(0, signal_of(layout, 0))
        w.skip(1, "unreadable: bad header")
        w.write(2, signal_of(layout, 2))
        done = w.finish(window=10, stride=5, label_overlap=0.5)
    assert done.n_windows == 5 + 7 and done.counts == {"train": {"normal": 12}}
    path = tmp_path / "c.h5"
    with pytest.raises(RuntimeError), CacheWriter(path, layout) as w:
        w.write(0, signal_of(layout, 0))
        w.skip(1, "unreadable: bad header")
        raise RuntimeError("killed")
    assert not path.exists() and (tmp_path / "c.h5.partial").exists()
    with CacheWriter(path, layout) as w:
        assert w.done_rows == {0: "", 1: "unreadable: bad header"} and w.pending_rows() == [2]
        w.write(2, signal_of(layout, 2))
        w.finish(window=10, stride=5, label_overlap=0.5)
    assert_same_cache(tmp_path / "ref.h5", path)
    assert not (tmp_path / "c.h5.partial").exists() and not (tmp_path / "c.h5.journal").exists()
    with CacheReader(path) as r:
        assert r.task == "abnormal" and r.skipped == [
            {"path": "r1.edf", "reason": "unreadable: bad header"}
        ]
        np.testing.assert_array_equal(r.read(30 + 50, 40), signal_of(layout, 2).astype(np.float16))
    # a partial file of another plan is never resumed
    with pytest.raises(RuntimeError), CacheWriter(path, layout) as w:
        raise RuntimeError("killed")
    with pytest.raises(BrainpipeError, match="unfinished build with a different config"):
        CacheWriter(path, small_layout(lengths=(30, 50, 41))).__enter__()


def test_short_writes_are_continued(tmp_path, monkeypatch):
    # pwrite may write less than asked (Linux caps one call at ~2 GiB): the rest must follow.
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, b, off: real(fd, bytes(b[:7]), off))
    layout = small_layout()
    with CacheWriter(tmp_path / "c.h5", layout) as w:
        for row in w.pending_rows():
            w.write(row, signal_of(layout, row))
        w.finish(window=10, stride=5, label_overlap=0.5)
    monkeypatch.undo()
    with CacheReader(tmp_path / "c.h5") as r:
        for row, off in enumerate(r.recordings["offset"].tolist()):
            n = int(r.recordings["length"][row])
            np.testing.assert_array_equal(r.read(off, n), signal_of(layout, row).astype(np.float16))


def test_cache_records_its_task_and_caches_without_it_still_read(tuab, tmp_path):
    cache = tmp_path / "c.h5"
    build_cache(tuab / "index.npz", cache, smoke(), workers=1, progress=False)
    with h5py.File(cache, "r") as f:
        assert f.attrs["task"] == "abnormal"
    with CacheReader(cache) as r:
        windows = r.windows["label"].copy()
    # a cache written before the attribute existed: the task comes from its label names
    with h5py.File(cache, "r+") as f:
        del f.attrs["task"]
    with CacheReader(cache) as r:
        assert r.task == "abnormal"
        np.testing.assert_array_equal(r.windows["label"], windows)
    assert verify_cache(cache, n_windows=2).ok
    none = build_cache(
        tuab / "index.npz", tmp_path / "n.h5", smoke("cache.task=none"), workers=1, progress=False
    )
    with h5py.File(none.cache_path, "r") as f:
        assert f.attrs["task"] == ""


# --- refused at plan time, before any signal is read (issue 16) ------------------------------


def _tusz_without_seizures(tmp_path):
    raw = tmp_path / "raw"
    make_corpus(raw, "tusz", n_subjects=3, seed=4, duration_s=(60.0, 90.0))
    for p in list(raw.rglob("*.csv_bi")) + list(raw.rglob("*.csv")):
        lines = p.read_text().splitlines()
        head = [ln for ln in lines if ln.startswith("#") or ln.startswith("channel,")]
        rows = [ln.split(",") for ln in lines if ln not in head and ln.strip()]
        p.write_text("\n".join(head + [",".join([*r[:3], "bckg", *r[4:]]) for r in rows]) + "\n")
    cfg = load_config(Path(SMOKE).parent / "tusz.yaml", ["cache.workers=1"])
    build_index(raw, tmp_path / "i.npz", cfg, progress=False)
    return cfg


def test_seizure_task_without_any_seizure_is_refused_at_plan_time(tmp_path):
    cfg = _tusz_without_seizures(tmp_path)
    assert not Index.load(tmp_path / "i.npz").errors
    with pytest.raises(
        BrainpipeError,
        match=r"cache.task=seizure needs bckg and seiz windows but seiz came out empty in the plan.*before reading any signal",
    ):
        build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    assert not (tmp_path / "c.h5.partial").exists()  # no recording was preprocessed


def test_abnormal_task_with_one_class_missing_is_refused_at_plan_time(tmp_path):
    raw = tmp_path / "raw"
    make_corpus(raw, "tuab", n_subjects=4, seed=2, duration_s=(20.0, 30.0))
    for p in raw.rglob("*.edf"):
        if "/normal/" in str(p):
            p.unlink()
    build_index(raw, tmp_path / "i.npz", smoke(), progress=False)
    with pytest.raises(BrainpipeError, match=r"normal came out empty in the plan.*abnormal="):
        build_cache(tmp_path / "i.npz", tmp_path / "c.h5", smoke(), workers=1, progress=False)
    assert not (tmp_path / "c.h5.partial").exists()


def test_index_of_another_layout_is_refused_at_plan_time(tmp_path):
    raw = tmp_path / "raw"
    make_corpus(raw, "tusz", n_subjects=2, seed=1, duration_s=(60.0, 70.0))
    tusz = load_config(Path(SMOKE).parent / "tusz.yaml")
    build_index(raw, tmp_path / "i.npz", tusz, progress=False)
    with pytest.raises(
        BrainpipeError,
        match=r"i.npz: the index was built with corpus.layout=tusz.*corpus.layout=tuab",
    ):
        build_cache(tmp_path / "i.npz", tmp_path / "c.h5", smoke(), workers=1, progress=False)
    assert not (tmp_path / "c.h5.partial").exists()


def test_no_required_channel_names_the_closest_ones_found(tuab, tmp_path):
    cfg = smoke("preprocess.channels=[FP1X, CZZ]")
    with pytest.raises(BrainpipeError) as e:
        build_cache(tuab / "index.npz", tmp_path / "a.h5", cfg, workers=1, progress=False)
    msg = str(e.value)
    assert "none of the required channels is present: FP1X, CZZ" in msg
    assert "closest found: FP1X~EEG FP1-REF, CZZ~EEG CZ-REF" in msg


def test_upsampling_is_a_warning_in_the_build_summary(tuab, tmp_path):
    from brainpipe.reporting import build_summary_text

    res = build_cache(
        tuab / "index.npz",
        tmp_path / "c.h5",
        smoke("preprocess.sfreq=300"),
        workers=1,
        progress=False,
    )
    idx = Index.load(tuab / "index.npz")
    n_low = int((idx.sfreq < 300).sum())
    assert n_low > 0
    assert (
        f"warning: preprocess.sfreq=300 Hz is above the own rate of {n_low} recordings (lowest 250 Hz)"
        in build_summary_text(res)
    )
    res = build_cache(tuab / "index.npz", tmp_path / "d.h5", smoke(), workers=1, progress=False)
    assert "warning:" not in build_summary_text(res)


def test_a_failed_build_says_what_happens_to_the_partial_file_and_force_cleans_it(
    tuab, tmp_path, monkeypatch
):
    import brainpipe.cache.build as cache_mod

    cache = tmp_path / "c.h5"
    monkeypatch.setattr(
        cache_mod, "_worker", lambda job: (job[0], None, "unreadable: test", 0), raising=True
    )
    with pytest.raises(
        BrainpipeError,
        match=r"every recording failed.*nothing was written: the partial cache .*c.h5.partial was removed",
    ):
        build_cache(tuab / "index.npz", cache, smoke(), workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod.os, "pwrite", disk_full)
    with pytest.raises(BrainpipeError, match=r"c.h5.partial: cannot write .*re-run to resume"):
        build_cache(tuab / "index.npz", cache, smoke(), workers=1, progress=False)
    assert (tmp_path / "c.h5.partial").exists()
    monkeypatch.undo()
    res = build_cache(tuab / "index.npz", cache, smoke(), workers=1, force=True, progress=False)
    assert res.resumed == 0 and res.n_skipped == 0  # started over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]


# --- verify and crafted files ---------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_verify_flags_a_cache_of_constant_windows(tuab, tmp_path, value):
    # what preprocess.clip=0 / clip=-1 wrote: every sample the same value
    cache = tmp_path / "c.h5"
    build_cache(tuab / "index.npz", cache, smoke(), workers=1, progress=False)
    with h5py.File(cache, "r+") as f:
        f["signals"][...] = value
    rep = verify_cache(cache, n_windows=3)
    assert not rep.ok
    assert any(f"constant: every sample of /signals is {value:g}" in p for p in rep.problems), (
        rep.problems
    )


def _crafted(tuab, tmp_path, edit):
    build_cache(tuab / "index.npz", tmp_path / "ok.h5", smoke(), workers=1, progress=False)
    bad = tmp_path / "bad.h5"
    bad.write_bytes((tmp_path / "ok.h5").read_bytes())
    with h5py.File(bad, "r+") as f:
        edit(f)
    return bad


def _replace(f, name, shape, dtype):
    del f[name]
    f.create_dataset(name, shape=shape, dtype=dtype)  # contiguous, never allocated


CRAFTED = {
    "window table of 10^12 rows": (lambda f: _replace(f, "windows/start", (10**12,), np.int64), "windows/start declares"),
    "10^13 signal rows": (lambda f: _replace(f, "signals", (10**13, 19), np.float16), "signals declares"),
    "window_samples 10^14": (lambda f: f.attrs.__setitem__("window_samples", 10**14), "window_samples=100000000000000"),
    "windows past the end": (
        lambda f: f["windows/start"].__setitem__(-1, f["signals"].shape[0] - 10),
        "windows extend past the end of /signals",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_cache_sizes_are_refused_at_open_with_one_line(tuab, tmp_path, capsys, case):
    edit, why = CRAFTED[case]
    bad = _crafted(tuab, tmp_path, edit)
    t0 = time.time()
    with pytest.raises(BrainpipeError, match=rf"bad.h5: corrupt cache \(.*{why}.*rebuild"):
        CacheReader(bad)
    with pytest.raises(BrainpipeError, match="corrupt cache"):
        verify_cache(bad)
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "corrupt cache" in err
    assert time.time() - t0 < 10


def test_a_config_without_a_corpus_layout_builds_the_index_by_its_own(tuab, tmp_path):
    cfg = smoke("corpus.layout=generic")
    res = build_cache(tuab / "index.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    assert res.n_written == len(Index.load(tuab / "index.npz"))
