"""Chunked preprocessing (`preprocess.preprocess_chunked`, what `cache.process_recording` runs):
the same result as the whole-recording path on real FIF and EDF files, several chunks really
happening, and a worker's peak memory bounded by the result plus a constant, not by the length.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import brainpipe.preprocess as pp
from brainpipe.cache import process_recording
from brainpipe.config import load_config
from brainpipe.errors import BrainpipeError
from brainpipe.recording import load_recording, open_recording
from brainpipe.synthetic import CorpusSpec, make_corpus

# Small enough that the 120 s MEG recording takes several chunks at any of the rates below
# (the whole path is taken up to six chunks' worth); EDF has ~20 channels, not 306.
SMALL = 300_000
SMALL_EDF = 40_000

MEG = [
    "preprocess.montage=meg",
    "preprocess.l_freq=0.5",
    "preprocess.h_freq=45",
    "preprocess.notch_freqs=[50]",
    "preprocess.clip=20",
]


def _cfg(settings):
    return load_config(None, settings).preprocess


def _whole(path, cfg) -> np.ndarray:
    data, sfreq, plan = load_recording(path, cfg)
    return pp.preprocess(data, sfreq, plan, cfg).T


def _chunked(path, cfg, chunk_values=SMALL) -> tuple[np.ndarray, int]:
    read, n, sfreq, plan = open_recording(path, cfg)
    calls = []

    def counted(start, stop):
        calls.append((start, stop))
        return read(start, stop)

    return pp.preprocess_chunked(counted, n, sfreq, plan, cfg, chunk_values=chunk_values), len(
        calls
    )


def _assert_same(
    chunked: np.ndarray, whole: np.ndarray, rel: float = 1e-5, atol: float = 0.0
) -> None:
    assert chunked.shape == whole.shape and chunked.dtype == np.float32
    # float32 FFT rounding differs between a chunk and the whole: 1e-5 of each channel's range
    tol = rel * np.maximum(np.abs(whole).max(axis=0), 1e-30) + atol
    err = np.abs(chunked - whole).max(axis=0)
    assert (err <= tol).all(), f"max relative error {(err / tol).max() * rel:.2e}"


@pytest.fixture(scope="module")
def meg_fif(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("meg")
    spec = CorpusSpec("meg", n_subjects=1, duration_s=(120, 120), sessions_per_subject=(1, 1))
    make_corpus(out, CorpusSpec(**{**spec.__dict__, "sfreq": 1000}))
    return next(out.rglob("*.fif"))


@pytest.fixture(scope="module")
def eeg_edf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edf")
    make_corpus(out, "tuab", n_subjects=1, seed=5, duration_s=(150.0, 150.0))
    return next(out.rglob("*.edf"))


@pytest.mark.parametrize(
    "settings",
    [
        ["preprocess.sfreq=250", "preprocess.normalize=zscore"],  # 1000 -> 250: up 1, down 4
        ["preprocess.sfreq=1000", "preprocess.normalize=robust", "preprocess.crop_start_s=1.3"],
        [
            "preprocess.sfreq=300",
            "preprocess.normalize=none",
            "preprocess.clip=null",
            "preprocess.crop_start_s=2.3",
        ],  # fmt: skip
    ],
    ids=["resample-zscore", "no-resample-robust-crop", "3-10-none-crop"],
)
def test_meg_fif_chunks_equal_whole_recording(meg_fif, settings):
    cfg = _cfg(MEG + settings)
    chunked, n_reads = _chunked(meg_fif, cfg)
    assert n_reads >= 3
    _assert_same(chunked, _whole(meg_fif, cfg))


@pytest.mark.parametrize(
    "settings",
    [
        ["preprocess.montage=tcp", "preprocess.normalize=zscore"],
        ["preprocess.montage=referential", "preprocess.normalize=robust", "preprocess.clip=3"],
    ],
)
def test_edf_chunks_equal_whole_recording(eeg_edf, settings):
    cfg = _cfg(["preprocess.sfreq=200", *settings])
    chunked, n_reads = _chunked(eeg_edf, cfg, SMALL_EDF)
    assert n_reads >= 3
    _assert_same(chunked, _whole(eeg_edf, cfg))


def test_process_recording_returns_the_cache_dtype_and_checks_the_length(meg_fif, monkeypatch):
    cfg = _cfg([*MEG, "preprocess.sfreq=250"])
    monkeypatch.setattr(pp, "CHUNK_VALUES", SMALL)
    out, mask = process_recording(meg_fif, cfg, expected_length=30_000, dtype=np.float16)
    assert out.dtype == np.float16 and out.shape == (30_000, 306) and mask.all()
    whole = _whole(meg_fif, cfg)
    assert np.abs(out.astype(np.float32) - whole).max() <= 2e-2  # float16 rounding of |x| <= 20
    with pytest.raises(BrainpipeError, match="changed since indexing"):
        process_recording(meg_fif, cfg, expected_length=29_999)


class FileRows:
    """A time-major float16 file written a time block at a time with os.pwrite."""

    def __init__(self, path: Path, n_ch: int) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT)
        self.row, self.next = n_ch * 2, 0

    def __setitem__(self, rows: slice, block: np.ndarray) -> None:
        assert rows.start == self.next, "blocks come in time order"
        os.pwrite(self.fd, np.ascontiguousarray(block, np.float16).tobytes(), rows.start * self.row)
        self.next = rows.start + len(block)


def test_result_can_go_to_a_file_block_by_block(meg_fif, tmp_path, monkeypatch):
    cfg = _cfg([*MEG, "preprocess.sfreq=250"])
    monkeypatch.setattr(pp, "CHUNK_VALUES", SMALL)
    sink = FileRows(tmp_path / "rows.bin", 306)
    got, _ = process_recording(meg_fif, cfg, expected_length=30_000, out=sink)
    os.close(sink.fd)
    assert got is sink and sink.next == 30_000
    stored = np.fromfile(tmp_path / "rows.bin", dtype=np.float16).reshape(30_000, 306)
    held, _ = process_recording(meg_fif, cfg, dtype=np.float16)
    np.testing.assert_array_equal(stored, held)


@pytest.mark.parametrize("sfreq_in", [200.0, 256.0, 512.0])
@pytest.mark.parametrize("normalize", ["zscore", "robust", "none"])
def test_flat_offset_and_zero_filled_channels_match(sfreq_in, normalize):
    # a flat channel (exact 0 out), a 3 mV offset, and a montage output with no data
    cfg = _cfg(
        ["preprocess.channels=[FP1,FP2,CZ,O1]", "preprocess.on_missing=zero",
         f"preprocess.normalize={normalize}", "preprocess.notch_freqs=[60]"]
    )  # fmt: skip
    plan = pp.plan_channels(["FP1", "FP2", "CZ"], cfg)
    rng = np.random.default_rng(0)
    n = int(200 * sfreq_in)
    data = rng.standard_normal((3, n)).cumsum(axis=1) * 1e-6
    data[1] = 5e-5
    data[2] += 3e-3
    reads = []
    chunked = pp.preprocess_chunked(lambda a, b: reads.append(a) or data[:, a:b], n, sfreq_in,
                                    plan, cfg, chunk_values=10_000)  # fmt: skip
    assert len(reads) >= 3
    whole = pp.preprocess(data, sfreq_in, plan, cfg).T
    # float32 holds the 3 mV offset to 2e-10 V, 1e-4 of the band-passed walk on that channel:
    # the whole path's own rounding, which the chunks round differently; under "none" the flat
    # 50 µV channel band-passes to rounding noise of 1e-5 µV
    _assert_same(chunked, whole, rel=1e-3, atol=1e-4)
    assert (chunked[:, 1] == 0).all() == (normalize != "none") and (chunked[:, 3] == 0).all()


def test_non_finite_sample_in_a_late_chunk_is_one_error_naming_the_channel():
    cfg = _cfg(["preprocess.channels=[FP1,FP2]"])
    plan = pp.plan_channels(["FP1", "FP2"], cfg)
    data = np.zeros((2, 200_000))
    data[1, 190_000] = np.nan
    with pytest.raises(BrainpipeError, match=r"non-finite .* source channel\(s\) 1$"):
        pp.preprocess_chunked(lambda a, b: data[:, a:b], 200_000, 200.0, plan, cfg,
                              chunk_values=20_000)  # fmt: skip


_MEASURE = textwrap.dedent(
    r"""
    import json, os, re, sys
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec, so a child of a large
    # process would report its parent's peak; VmHWM belongs to this address space.
    def hwm():
        return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
    import numpy as np
    from brainpipe import preprocess as pp
    from brainpipe.cache import process_recording
    from brainpipe.recording import open_recording
    from brainpipe.config import load_config

    path = sys.argv[1]
    cfg = load_config(None, json.loads(sys.argv[2])).preprocess
    read, n, sfreq, plan = open_recording(path, cfg)
    read(0, 1000)  # mne's and scipy's imports and the filter design before the baseline
    pp._design(cfg.sfreq, cfg.l_freq, cfg.h_freq, tuple(cfg.notch_freqs))
    base = hwm()
    if len(sys.argv) > 3:  # the result pwritten block by block into a file, not held
        class Rows:
            def __init__(self, fd, row_bytes):
                self.fd, self.row_bytes = fd, row_bytes
            def __setitem__(self, rows, block):
                os.pwrite(self.fd, block.astype(np.float16).tobytes(), rows.start * self.row_bytes)
        fd = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT)
        process_recording(path, cfg, out=Rows(fd, 2 * len(plan.names)))
        held = 0
    else:
        held = process_recording(path, cfg, dtype=np.float16)[0].nbytes
    peak = hwm()
    raw64 = len(plan.source) * int(n) * 8
    print(json.dumps({"extra": peak - base, "out": held, "raw64": raw64}))
    """
)


@pytest.mark.slow
def test_worker_memory_is_the_result_plus_a_constant(tmp_path):
    # 6 minutes of 306 channels at 1 kHz: 881 MB as float64. Read whole (load_recording +
    # preprocess) it took 1.9 GB over this baseline; chunked about 150 MB beside the result. The
    # bound, a quarter of the float64 size, is what 2 GB is to the 8.8 GB of an hour.
    make_corpus(tmp_path / "raw", CorpusSpec("meg", n_subjects=1, duration_s=(360, 360),
                                             sessions_per_subject=(1, 1), sfreq=1000))  # fmt: skip
    fif = next(tmp_path.rglob("*.fif"))
    settings = json.dumps([*MEG, "preprocess.sfreq=250"])
    for sink in ([], [str(tmp_path / "rows.bin")]):
        res = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(fif), settings, *sink],
            capture_output=True, text=True,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        m = json.loads(res.stdout.strip().splitlines()[-1])
        assert m["raw64"] == 306 * 360_000 * 8
        assert (m["out"] == 0) == bool(sink)
        working = m["extra"] - m["out"]
        assert working < m["raw64"] / 4, f"{working / 1e6:.0f} MB beside the result"
    assert (tmp_path / "rows.bin").stat().st_size == 90_000 * 306 * 2
