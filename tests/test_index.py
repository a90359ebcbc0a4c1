import json
import multiprocessing as mp
import os
import pickle
import shutil
from pathlib import Path

import mne
import numpy as np
import pytest
from helpers import TUH_EEG, write_edf

from brainpipe.cli import main
from brainpipe.config import load_config
from brainpipe.datasets import EdfWindowDataset
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index, scan
from brainpipe.indexfile import Index
from brainpipe.reporting import scan_line

EYES_CLOSED = [(1.0, None, "eyes closed")]  # one EDF+ annotation


@pytest.fixture
def tuab(tmp_path):
    root = tmp_path / "tuab"
    specs = [
        ("train", "normal", "aaaaaaaa", 1, 250),
        ("train", "normal", "aaaaaaab", 1, 256),
        ("train", "abnormal", "aaaaaaac", 2, 250),
        ("eval", "abnormal", "aaaaaaad", 1, 512),
        ("eval", "normal", "aaaaaaae", 1, 400),
    ]
    for k, (split, label, subj, sess, rate) in enumerate(specs):
        write_edf(
            root / f"edf/{split}/{label}/01_tcp_ar/{subj}_s{sess:03d}_t000.edf",
            rate,
            20 + k,
            seed=k,
            annotations=EYES_CLOSED if k == 1 else None,
        )
    return root


CFG = load_config(None, ["corpus.layout=tuab"])


def test_tuab_index_matches_mne(tuab, tmp_path):
    res = build_index(tuab, tmp_path / "index.npz", CFG, progress=False)
    idx = Index.load(tmp_path / "index.npz")
    assert len(idx) == 5 and res.n_read == 5 and not idx.errors
    for i in range(len(idx)):
        raw = mne.io.read_raw_edf(idx.abspath(i), preload=False, verbose="error")
        assert list(idx.channels(i)) == raw.ch_names
        assert idx.sfreq[i] == raw.info["sfreq"]
        assert idx.n_samples[i] == raw.n_times
        assert idx.duration_s[i] == pytest.approx(raw.n_times / raw.info["sfreq"])
        assert idx.start[i] == raw.info["meas_date"].replace(tzinfo=None).isoformat()
    i = list(idx.path).index("edf/train/abnormal/01_tcp_ar/aaaaaaac_s002_t000.edf")
    assert (idx.split[i], idx.label[i], idx.subject[i], idx.session[i], idx.token[i], idx.montage[i]) == (
        "train", "abnormal", "aaaaaaac", "s002", "t000", "01_tcp_ar",
    )  # fmt: skip


def test_incremental_rerun_reads_only_changes(tuab, tmp_path):
    out = tmp_path / "index.npz"
    build_index(tuab, out, CFG, progress=False)
    again = build_index(tuab, out, CFG, progress=False)
    assert (again.n_read, again.n_reused) == (0, 5)

    changed = next(tuab.rglob("aaaaaaab*.edf"))
    write_edf(changed, 256, 60, seed=9)
    os.utime(changed, ns=(1, 1_000_000_000))  # a different mtime even on coarse clocks
    next(tuab.rglob("aaaaaaae*.edf")).unlink()
    write_edf(tuab / "edf/eval/normal/01_tcp_ar/aaaaaaaf_s001_t000.edf", 250, 10)
    res = build_index(tuab, out, CFG, progress=False)
    assert (res.n_read, res.n_reused, res.n_removed) == (2, 3, 1)
    idx = Index.load(out)
    i = [str(p) for p in idx.path].index(str(changed.relative_to(tuab)))
    assert idx.duration_s[i] == 60
    assert not any("aaaaaaae" in p for p in idx.path.tolist())

    assert build_index(tuab, out, CFG, force=True, progress=False).n_read == 5


def test_threads_only_where_opens_wait(tmp_path, monkeypatch):
    """A slow mount (every open sleeps, releasing the GIL as real I/O does) is read by many
    threads; `index.workers=1` keeps one; both give the same index."""
    import threading
    import time

    import brainpipe.edf as edf_mod

    root = tmp_path / "raw"
    first = write_edf(root / "edf/train/normal/01_tcp_ar/aaaaaaaa_s001_t000.edf", 250, 4)
    for k in range(1, 60):
        dst = root / f"edf/train/normal/01_tcp_ar/aaaaa{k:03d}_s001_t000.edf"
        shutil.copyfile(first, dst)
    real_open = os.open

    def slow_open(path, *a, **k):
        if str(path).endswith(".edf"):
            time.sleep(0.003)
        return real_open(path, *a, **k)

    monkeypatch.setattr(edf_mod.os, "open", slow_open)
    results = {}
    for workers in (1, 8):
        threads = set()
        cfg = load_config(None, ["corpus.layout=tuab", f"index.workers={workers}"])
        res = scan(
            root, cfg, progress=False, on_read=lambda _, t=threads: t.add(threading.get_ident())
        )
        assert res.n_read == 60 and len(res.index) == 60
        results[workers] = (res.index, threads)
    assert len(results[1][1]) == 1
    assert len(results[8][1]) > 1, "opens waited 3 ms each but the scan stayed on one thread"
    assert results[1][0].index_hash == results[8][0].index_hash


def test_env_var_forces_reindex(tuab, tmp_path, monkeypatch):
    out = tmp_path / "index.npz"
    build_index(tuab, out, CFG, progress=False)
    monkeypatch.setenv("BRAINPIPE_FORCE_REINDEX", "1")
    assert build_index(tuab, out, CFG, progress=False).n_read == 5


def test_bad_files_are_listed_and_the_scan_goes_on(tuab, tmp_path):
    bad = tuab / "edf/train/normal/01_tcp_ar"
    (bad / "zzzzzzz1_s001_t000.edf").write_bytes(b"")
    (bad / "zzzzzzz2_s001_t000.edf").write_text("this is not an EDF file at all\n" * 20)
    good = next(tuab.rglob("aaaaaaaa*.edf")).read_bytes()
    (bad / "zzzzzzz3_s001_t000.edf").write_bytes(good[: len(good) // 2])  # truncated mid-record
    hdr = bytearray(good)
    hdr[236:244] = b"999     "  # n_records disagrees with the file size
    (bad / "zzzzzzz4_s001_t000.edf").write_bytes(bytes(hdr))
    res = build_index(tuab, tmp_path / "i.npz", CFG, progress=False)
    idx = res.index
    assert len(idx) == 5
    reasons = {Path(e["path"]).name: e["reason"] for e in idx.errors}
    assert set(reasons) == {f"zzzzzzz{k}_s001_t000.edf" for k in range(1, 5)}
    assert all("\n" not in r and r for r in reasons.values())
    assert reasons["zzzzzzz1_s001_t000.edf"] == "empty file: 0 bytes, not an EDF/BDF recording"
    assert "1 empty file" in scan_line(res)
    assert "skipped 4" in scan_line(res)


def test_unreadable_directory_is_reported(tuab, tmp_path, monkeypatch):
    # Running as root ignores permission bits, so make the scan itself meet a PermissionError.
    real = os.scandir
    blocked = tuab / "edf" / "eval"

    def scandir(p):
        if Path(p) == blocked:
            raise PermissionError(13, "Permission denied", str(p))
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)
    idx = build_index(tuab, tmp_path / "i.npz", CFG, progress=False).index
    assert len(idx) == 3
    assert {"path": "edf/eval", "reason": "unreadable directory: Permission denied"} in idx.errors


def test_empty_tree_and_missing_root_fail(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BrainpipeError, match="no usable recordings"):
        build_index(tmp_path / "empty", tmp_path / "i.npz", CFG, progress=False)
    with pytest.raises(BrainpipeError, match="raw directory not found"):
        build_index(tmp_path / "nope", tmp_path / "i.npz", CFG, progress=False)
    assert not (tmp_path / "i.npz").exists()


def test_index_written_atomically_and_read_only_output_fails(tuab, tmp_path):
    out = tmp_path / "out" / "index.npz"
    build_index(tuab, out, CFG, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["index.npz"]  # no temp file left
    (tmp_path / "a_file").write_text("")
    with pytest.raises(BrainpipeError, match="cannot create output directory"):
        build_index(tuab, tmp_path / "a_file" / "index.npz", CFG, progress=False)


def test_read_only_output_fails_with_one_line(tuab, tmp_path):
    """Through the CLI. Permission bits do not stop root, and CI machines often run tests as
    root: there the output directory is made a read-only bind mount in a private mount
    namespace, which is also what a `:ro` docker volume looks like from inside."""
    import subprocess
    import sys

    ro = tmp_path / "ro"
    ro.mkdir()
    cmd = [sys.executable, "-m", "brainpipe", "index", "--raw", str(tuab)]
    cmd += ["--index", str(ro / "index.npz"), "--set", "corpus.layout=tuab"]
    if os.getuid() != 0:
        ro.chmod(0o500)
    else:
        if not shutil.which("unshare"):
            pytest.skip("running as root without unshare(1): cannot make a read-only directory")
        script = f'mount --bind -o ro "{ro}" "{ro}" && exec "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    finally:
        ro.chmod(0o700)
    if os.getuid() == 0 and "mount" in proc.stderr and "brainpipe" not in proc.stderr:
        pytest.skip(f"root without mount privileges here: {proc.stderr.strip()}")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0] and str(ro) in lines[0], lines
    assert list(ro.iterdir()) == []


def test_full_disk_leaves_no_partial_file(tuab, tmp_path, monkeypatch):
    import numpy

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(numpy, "savez", full)
    out = tmp_path / "index.npz"
    with pytest.raises(BrainpipeError, match="No space left"):
        build_index(tuab, out, CFG, progress=False)
    assert list(tmp_path.iterdir()) == [tuab]


def test_tusz_events_and_fif_and_generic(tmp_path):
    root = tmp_path / "tusz"
    edf = write_edf(
        root / "edf/dev/aaaaaajy/s003_2003/03_tcp_ar_a/aaaaaajy_s003_t001.edf",
        256,
        30,
        labels=[f"EEG {c}-REF" for c in TUH_EEG],
    )
    edf.with_suffix(".csv_bi").write_text(
        "# version = csv_v1.0.0\n# duration = 30.00 secs\n#\nchannel,start_time,stop_time,label,confidence\n"
        "TERM,0.0,10.0,bckg,1.0\nTERM,10.0,20.5,seiz,1.0\nTERM,20.5,30.0,bckg,1.0\n"
    )
    write_edf(
        root / "edf/dev/aaaaaajz/s001_2004/02_tcp_le/aaaaaajz_s001_t000.edf",
        250,
        30,
        labels=[f"EEG {c}-LE" for c in TUH_EEG],
    )
    (root / "edf/dev/aaaaaajz/s001_2004/02_tcp_le/aaaaaajz_s001_t000.csv_bi").write_text(
        "channel,start_time,stop_time,label,confidence\nTERM,0.0,30.0,bckg,1.0\n"
    )
    idx = build_index(
        root, tmp_path / "i.npz", load_config(None, ["corpus.layout=tusz"]), progress=False
    ).index
    assert len(idx) == 2
    i = list(idx.subject).index("aaaaaajy")
    ev = idx.events(i)
    assert [(e.onset_s, e.offset_s, e.label) for e in ev] == [(10.0, 20.5, "seiz")]
    assert (idx.label[i], idx.montage[i], idx.split[i]) == ("seiz", "03_tcp_ar_a", "dev")
    assert idx.label[1 - i] == "bckg" and idx.events(1 - i) == []

    meg = tmp_path / "meg"
    info = mne.create_info([f"MEG {k:04d}" for k in range(6)], 200.0, ["mag", "grad", "grad"] * 2)
    (meg / "sub-01").mkdir(parents=True)
    mne.io.RawArray(np.zeros((6, 400)), info, verbose="error").save(
        meg / "sub-01" / "sub-01_rest_meg.fif", verbose="error"
    )
    write_edf(meg / "sub-02" / "sub-02_rest.edf", 250, 4)
    (meg / "sub-03").mkdir()
    (meg / "sub-03" / "sub-03_rest_meg.fif").write_bytes(b"")
    cfg = load_config(
        None, ["corpus.layout=generic", r"corpus.filename_regex=sub-(?P<subject>\d+)"]
    )
    idx = build_index(meg, tmp_path / "m.npz", cfg, progress=False).index
    assert list(idx.subject) == ["01", "02"]
    assert idx.channel_types(0) == ("mag", "grad", "grad") * 2
    assert (idx.n_samples[0], idx.sfreq[0], idx.format[0]) == (400, 200.0, "FIF")
    fif = meg / "sub-01" / "sub-01_rest_meg.fif"
    assert (idx.size[0], idx.mtime_ns[0]) == (fif.stat().st_size, fif.stat().st_mtime_ns)
    assert idx.errors == [{"path": "sub-03/sub-03_rest_meg.fif", "reason": "empty file: 0 bytes"}]


def test_cli_index_and_inspect(tuab, tmp_path, capsys):
    out = tmp_path / "index.npz"
    assert (
        main(["index", "--raw", str(tuab), "--index", str(out), "--set", "corpus.layout=tuab"]) == 0
    )
    assert "indexed 5 recordings" in capsys.readouterr().out
    assert main(["inspect", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_recordings"] == 5 and data["hours"] == pytest.approx(
        (20 + 21 + 22 + 23 + 24) / 3600
    )
    rec = data["recordings"][0]
    assert {
        "path",
        "subject",
        "session",
        "split",
        "label",
        "sfreq",
        "n_samples",
        "duration_s",
        "channels",
        "montage",
    } <= set(rec)
    assert data["errors"] == []
    assert main(["inspect", str(out)]) == 0
    table = capsys.readouterr().out
    assert "train" in table and "abnormal" in table and "sample rates" in table


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["index", "--raw", str(tmp_path / "nope"), "--index", str(tmp_path / "i.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "raw directory not found" in err
    assert (
        main(
            [
                "index",
                "--raw",
                str(tmp_path),
                "--index",
                str(tmp_path / "i.npz"),
                "--set",
                "corpus.layot=tuab",
            ]
        )
        == 1
    )
    assert "corpus.layot" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["index", "--raw", str(tmp_path)])  # --index missing
    assert e.value.code == 2
    (tmp_path / "junk.bin").write_text("hello")
    assert main(["inspect", str(tmp_path / "junk.bin")]) == 1


def test_python_dash_m_entry_point(tuab, tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "brainpipe", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("brainpipe ")
    # The console script of the interpreter running the tests (not whichever is first on PATH).
    import sysconfig

    scripts = {Path(sysconfig.get_path("scripts")), Path(sys.executable).parent}
    exes = [d / "brainpipe" for d in scripts if (d / "brainpipe").is_file()]
    assert exes, f"no `brainpipe` console script in {sorted(map(str, scripts))}"
    r = subprocess.run(
        [str(exes[0]), "index", "--raw", str(tuab), "--index", str(tmp_path / "i.npz")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert Index.load(tmp_path / "i.npz").path.size == 5


# -- lazy dataset ---------------------------------------------------------------------------------


@pytest.fixture
def index_250(tmp_path):
    root = tmp_path / "raw"
    for k in range(3):
        write_edf(
            root / f"edf/train/normal/01_tcp_ar/aaaaaaa{k}_s001_t000.edf",
            250,
            11 + k,
            seed=k,
            annotations=EYES_CLOSED if k == 0 else None,
        )
    write_edf(root / "edf/eval/abnormal/01_tcp_ar/bbbbbbbb_s001_t000.edf", 256, 12, seed=5)
    build_index(root, tmp_path / "i.npz", CFG, progress=False)
    return tmp_path / "i.npz"


def test_lazy_dataset_windows_match_mne(index_250):
    ds = EdfWindowDataset(index_250, window_s=2.0, stride_s=1.5, channels=["O2", "FP1", "C3"])
    idx = Index.load(index_250)
    assert ds.sfreq == 250 and ds.window == 500
    assert [p for p, _ in ds.excluded] == ["edf/eval/abnormal/01_tcp_ar/bbbbbbbb_s001_t000.edf"]
    # 11 s, 12 s, 13 s at 250 Hz: floor((n - 500) / 375) + 1 windows each
    assert len(ds) == sum((int(s * 250) - 500) // 375 + 1 for s in (11, 12, 13))
    for i in [0, 1, 17, len(ds) - 1]:
        r, start = ds.locate(i)
        x, y = ds[i]
        raw = mne.io.read_raw_edf(
            idx.abspath(int(ds.recordings[r])), preload=False, verbose="error"
        )
        ref = raw.get_data(
            picks=["EEG O2-REF", "EEG FP1-REF", "EEG C3-REF"], start=start, stop=start + 500
        )
        np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-12)
        assert x.dtype == np.float32 and y == ds.label_names.index("normal")


def test_lazy_dataset_init_has_no_per_window_objects(index_250):
    ds = EdfWindowDataset(index_250, window_s=0.1, stride_s=1 / 250)
    assert len(ds) > 8000
    assert len(ds.cum) == 3  # state is per recording, whatever the number of windows


def _read(args):
    ds, i = args
    return ds[i][0]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_lazy_dataset_pickles_for_every_start_method(index_250, method):
    ds = EdfWindowDataset(index_250, window_s=1.0)
    _ = ds[0]  # warm the header cache: it must not travel to workers
    assert pickle.loads(pickle.dumps(ds))._headers == {}
    with mp.get_context(method).Pool(1) as pool:
        got = pool.map(_read, [(ds, 0), (ds, len(ds) - 1)])
    np.testing.assert_array_equal(got[0], ds[0][0])
    np.testing.assert_array_equal(got[1], ds[len(ds) - 1][0])


def test_scans_in_one_process_are_independent(tuab, tmp_path):
    # Each scan owns its header memo: a file rewritten between two scans in one process is read
    # afresh, with a bad field failing on its own reason.
    first = scan(tuab, CFG, progress=False).index
    assert scan(tuab, CFG, progress=False).index.index_hash == first.index_hash
    victim = next(tuab.rglob("aaaaaaaa*.edf"))
    data = bytearray(victim.read_bytes())
    ns = int(data[252:256])
    o = 256 + (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80) * ns  # samples per record of signal 0
    data[o : o + 8] = b"-250.0  "
    victim.write_bytes(bytes(data))
    idx = scan(tuab, CFG, progress=False).index
    assert len(idx) == 4
    assert idx.errors == [
        {
            "path": str(victim.relative_to(tuab)),
            "reason": "signal 0 ('EEG FP1-REF'): samples per record is '-250.0', not an integer",
        }
    ]


OLD_INDEX = Path(__file__).parent / "data" / "index_v1.npz"


def test_index_written_before_the_split_loads():
    # tests/data/index_v1.npz was written by brainpipe before the format moved to indexfile.py
    # (a TUSZ tree: two recordings, one seizure event, one empty file).
    idx = Index.load(OLD_INDEX)
    assert idx.meta["format_version"] == 1 and idx.index_hash == "8d19d94b0fe445d4"
    assert idx.path.tolist() == [
        "edf/dev/aaaaaajy/s003_2003/03_tcp_ar_a/aaaaaajy_s003_t001.edf",
        "edf/train/aaaaaajz/s001_2004/02_tcp_le/aaaaaajz_s001_t000.edf",
    ]
    assert idx.sfreq.tolist() == [256.0, 250.0] and idx.n_samples.tolist() == [1024, 500]
    assert idx.channels(0) == ("EEG FP1-REF", "EEG FP2-REF", "EEG C3-REF")
    assert idx.channels(1) == ("EEG FP1-LE", "EEG O2-LE")
    assert [(e.onset_s, e.offset_s, e.label) for e in idx.events(0)] == [(1.0, 2.5, "seiz")]
    assert idx.events(1) == [] and idx.label.tolist() == ["seiz", "bckg"]
    assert idx.errors == [
        {
            "path": "edf/train/aaaaaajz/s001_2004/02_tcp_le/aaaaaakz_s001_t000.edf",
            "reason": "empty file: 0 bytes, not an EDF/BDF recording",
        }
    ]
    # Its rows hash as they did when written (a cache built from it stays valid), also after an
    # incremental merge re-derives the hash.
    errors = [(e["path"], e["reason"]) for e in idx.errors]
    assert Index.concat([idx], errors, idx.meta).index_hash == idx.index_hash
    assert idx.take(np.array([1])).channels(0) == ("EEG FP1-LE", "EEG O2-LE")
    assert idx.summary()["n_events"] == 1


def test_cli_says_when_the_index_is_unchanged(tuab, tmp_path, capsys):
    out = tmp_path / "index.npz"
    argv = ["index", "--raw", str(tuab), "--index", str(out), "--set", "corpus.layout=tuab"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out}"
    before = out.stat().st_mtime_ns
    os.utime(out, ns=(1, 1))  # any rewrite would change it
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"index unchanged: {out}" and "5 unchanged" in lines[0]
    assert out.stat().st_mtime_ns == 1 and before != 1
    next(tuab.rglob("aaaaaaaa*.edf")).unlink()
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out}"
    assert len(Index.load(out)) == 4


def test_cli_unwritable_output_fails_with_one_line(tuab, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "index.npz"
    argv = ["index", "--raw", str(tuab), "--index", str(out), "--set", "corpus.layout=tuab"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "cannot create output directory" in lines[0], lines
    assert "wrote" not in captured.out and "unchanged" not in captured.out
