"""brainpipe.edf against mne and pyedflib on real files written by edfio, pyedflib and mne.

Files are written once per module (tmp_path_factory); bad files are made by cutting or patching
good ones byte by byte, so every failure case is a real file on disk.
"""

from __future__ import annotations

import datetime
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import edfio
import mne
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import brainpipe.edf as edf_module
from brainpipe.edf import EdfError, EdfHeader, is_annotation_label, read_header, read_signals
from brainpipe.errors import BrainpipeError

try:
    import pyedflib
except ImportError:  # a dev extra; the mne comparisons still run without it
    pyedflib = None

needs_pyedflib = pytest.mark.skipif(pyedflib is None, reason="pyedflib is not installed")

TUH_EEG = ["EEG FP1-REF", "EEG FP2-REF", "EEG C3-REF", "EEG C4-REF", "EEG O1-REF", "EEG O2-REF"]
UNIT_SCALE = {"uV": 1e-6, "µV": 1e-6, "mV": 1e-3, "V": 1.0}  # what mne and we both apply
RTOL, ATOL = 1e-12, 1e-18  # volts; we fold the unit factor in one step earlier than mne

# ---------------------------------------------------------------------------------------------
# writers


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _edfio_signal(rng, label, rate, seconds, unit="uV", prange=(-500.0, 500.0)):
    data = np.clip(rng.normal(0, (prange[1] - prange[0]) / 10, int(rate * seconds)), *prange)
    return edfio.EdfSignal(data, rate, label=label, physical_dimension=unit, physical_range=prange)


def _write_edfio_tuh(path: Path) -> Path:
    # TUH-like: EEG, EKG and PHOTIC at 250 Hz, IBI and BURSTS at 1 Hz; plain EDF.
    rng = _rng(1)
    sigs = [_edfio_signal(rng, lab, 250, 12) for lab in TUH_EEG]
    sigs += [_edfio_signal(rng, "EKG1-REF", 250, 12, prange=(-2000.0, 2000.0))]
    sigs += [_edfio_signal(rng, "PHOTIC-REF", 250, 12, prange=(-100.0, 100.0))]
    sigs += [_edfio_signal(rng, lab, 1, 12, prange=(0.0, 100.0)) for lab in ("IBI", "BURSTS")]
    edfio.Edf(
        sigs,
        recording=edfio.Recording(startdate=datetime.date(2003, 7, 15)),
        starttime=datetime.time(10, 20, 30),
    ).write(path)
    return path


def _write_edfio_quarter(path: Path) -> Path:
    # 256 and 512 Hz in 0.25 s records, EDF+C with annotations, a 1999 start (2-digit year 99).
    rng = _rng(2)
    sigs = [_edfio_signal(rng, lab, 256, 10) for lab in TUH_EEG[:3]]
    sigs += [_edfio_signal(rng, "EEG T1-REF", 512, 10), _edfio_signal(rng, "EEG T2-REF", 512, 10)]
    edfio.Edf(
        sigs,
        recording=edfio.Recording(startdate=datetime.date(1999, 12, 31)),
        starttime=datetime.time(23, 59, 58),
        data_record_duration=0.25,
        annotations=[edfio.EdfAnnotation(1.0, 2.0, "spsw"), edfio.EdfAnnotation(4.5, None, "x")],
    ).write(path)
    return path


def _write_edfio_tenth(path: Path) -> Path:
    # 400 Hz in 0.1 s records, millivolts.
    rng = _rng(3)
    sigs = [_edfio_signal(rng, lab, 400, 6, unit="mV", prange=(-3.2, 3.2)) for lab in TUH_EEG]
    edfio.Edf(sigs, starttime=datetime.time(0, 0, 1), data_record_duration=0.1).write(path)
    return path


def _write_edfio_long_records(path: Path) -> Path:
    # 512 Hz in 2.5 s records, with a duplicated label (mne renames duplicates).
    rng = _rng(4)
    labels = ["EEG FP1-REF", "EEG A1-REF", "EEG A1-REF", "EKG1-REF"]
    sigs = [_edfio_signal(rng, lab, 512, 10) for lab in labels]
    edfio.Edf(
        sigs,
        recording=edfio.Recording(startdate=datetime.date(2084, 2, 29)),
        data_record_duration=2.5,
    ).write(path)
    return path


def _pyedflib_headers(specs, digital):
    return [
        {
            "label": lab,
            "dimension": unit,
            "sample_frequency": rate,
            "physical_max": pmax,
            "physical_min": -pmax,
            "digital_max": digital[1],
            "digital_min": digital[0],
            "transducer": "AgAgCl electrode",
            "prefilter": "HP:0.1Hz LP:70Hz N:60Hz",
        }
        for lab, rate, unit, pmax in specs
    ]


def _write_pyedflib(path: Path, file_type: int, specs, seconds: int, start, seed: int) -> Path:
    bdf = file_type in (pyedflib.FILETYPE_BDF, pyedflib.FILETYPE_BDFPLUS)
    digital = (-8388608, 8388607) if bdf else (-32768, 32767)
    rng = _rng(seed)
    w = pyedflib.EdfWriter(str(path), len(specs), file_type=file_type)
    try:
        w.setSignalHeaders(_pyedflib_headers(specs, digital))
        w.setStartdatetime(start)
        data = [
            np.clip(rng.normal(0, pmax / 4, rate * seconds), -pmax, pmax)
            for _, rate, _, pmax in specs
        ]
        w.writeSamples(data)
        if file_type in (pyedflib.FILETYPE_EDFPLUS, pyedflib.FILETYPE_BDFPLUS):
            w.writeAnnotation(1.5, 0.5, "seiz")
    finally:
        w.close()
    return path


def _write_pyedflib_edfplus(path: Path) -> Path:
    specs = [(lab, 250, "uV", 800.0) for lab in TUH_EEG] + [("EKG1-REF", 250, "mV", 5.0)]
    return _write_pyedflib(
        path, pyedflib.FILETYPE_EDFPLUS, specs, 8, datetime.datetime(2010, 1, 2, 3, 4, 5), 5
    )


def _write_pyedflib_bdfplus(path: Path) -> Path:
    specs = [(lab, 256, "uV", 3000.0) for lab in TUH_EEG[:4]] + [("PHOTIC-REF", 512, "uV", 100.0)]
    return _write_pyedflib(
        path, pyedflib.FILETYPE_BDFPLUS, specs, 6, datetime.datetime(1988, 8, 8, 8, 8, 8), 6
    )


def _write_pyedflib_edf(path: Path) -> Path:
    specs = [(lab, 400, "uV", 500.0) for lab in TUH_EEG] + [("IBI", 200, "uV", 100.0)]
    return _write_pyedflib(
        path, pyedflib.FILETYPE_EDF, specs, 5, datetime.datetime(2021, 6, 30, 12, 0, 0), 7
    )


def _write_mne_export(path: Path) -> Path:
    rng = _rng(8)
    names = [*TUH_EEG, "EKG1-REF", "PHOTIC-REF", "IBI", "BURSTS"]
    info = mne.create_info(names, 256.0, "eeg")
    raw = mne.io.RawArray(rng.normal(0, 20e-6, (len(names), 256 * 10)), info, verbose="error")
    raw.set_meas_date(datetime.datetime(2012, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc))
    raw.set_annotations(mne.Annotations([1.0, 3.0], [0.5, 0.0], ["seiz", "artifact"]))
    mne.export.export_raw(path, raw, fmt="edf", verbose="error")
    return path


WRITERS = {
    "edfio_tuh_250.edf": (_write_edfio_tuh, False),
    "edfio_256_512_quarter.edf": (_write_edfio_quarter, False),
    "edfio_400_tenth.edf": (_write_edfio_tenth, False),
    "edfio_512_long_records.edf": (_write_edfio_long_records, False),
    "pyedflib_edfplus.edf": (_write_pyedflib_edfplus, True),
    "pyedflib_bdfplus.bdf": (_write_pyedflib_bdfplus, True),
    "pyedflib_edf.edf": (_write_pyedflib_edf, True),
    "mne_export.edf": (_write_mne_export, False),
}


def _pyedflib_data_files() -> list[Path]:
    if pyedflib is None:
        return []
    root = Path(pyedflib.__file__).parent
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".edf", ".bdf"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("edf")
    out = {}
    for name, (write, uses_pyedflib) in WRITERS.items():
        if uses_pyedflib and pyedflib is None:
            continue
        out[name] = write(d / name)
    return out


def _case(name: str, uses_pyedflib: bool):
    return pytest.param(name, marks=[needs_pyedflib] if uses_pyedflib else [], id=name)


WRITTEN = [_case(n, p) for n, (_, p) in WRITERS.items()]
SHIPPED = [
    pytest.param(p, id=p.relative_to(Path(pyedflib.__file__).parent).as_posix())
    for p in _pyedflib_data_files()
]

# ---------------------------------------------------------------------------------------------
# reference readers


def _mne_raw(path: Path):
    read = mne.io.read_raw_bdf if path.suffix.lower() == ".bdf" else mne.io.read_raw_edf
    return read(path, preload=False, verbose="error")


def _as_mne_name(label: str) -> str:
    # mne decodes header text as latin-1; we decode UTF-8 first.
    return label.encode("utf-8").decode("latin-1")


def assert_header_matches_mne(h: EdfHeader, path: Path) -> None:
    raw = _mne_raw(path)
    extras = raw._raw_extras[0]
    data = list(h.signal_indices)
    ours = [_as_mne_name(h.labels[i]) for i in data]
    if len(set(ours)) == len(ours):
        assert raw.ch_names == ours
    else:  # mne appends running numbers to duplicates: "EEG A1-REF-0", "EEG A1-REF-1"
        assert len(raw.ch_names) == len(ours)
        assert all(m.startswith(o) for m, o in zip(raw.ch_names, ours, strict=True))
    assert list(extras["n_samps"]) == list(h.samples_per_record)
    assert list(extras["physical_min"]) == [h.physical_min[i] for i in data]
    assert list(extras["physical_max"]) == [h.physical_max[i] for i in data]
    assert list(extras["digital_min"]) == [h.digital_min[i] for i in data]
    assert list(extras["digital_max"]) == [h.digital_max[i] for i in data]
    # mne reports "uV" as "µV"; its per-channel unit factors are the ones we apply.
    units = [_as_mne_name(h.units[i]) for i in data]
    assert list(raw._orig_units.values()) == ["µV" if u == "uV" else u for u in units]
    assert list(extras["units"]) == [UNIT_SCALE.get(u, 1.0) for u in units]
    assert extras["record_length"][0] == h.record_duration
    assert extras["n_records"] == h.n_records
    assert extras["data_offset"] == h.header_bytes
    assert extras["dtype_byte"] == h.sample_bytes
    assert raw.info["sfreq"] == max(h.sfreq(i) for i in data)
    assert raw.n_times == h.n_records * max(h.samples_per_record[i] for i in data)
    # mne keeps the date in UTC; sub-second starts from EDF+ annotations are not ours to parse.
    assert raw.info["meas_date"].replace(tzinfo=None, microsecond=0) == h.start


def assert_header_matches_pyedflib(h: EdfHeader, path: Path) -> None:
    r = pyedflib.EdfReader(str(path))
    try:
        # pyedflib hides annotation signals only in EDF+/BDF+ files.
        chans = h.signal_indices if "+" in h.format else range(len(h.labels))
        assert r.signals_in_file == len(chans)
        for k, i in enumerate(chans):
            assert r.getLabel(k) == h.labels[i]
            assert r.getSampleFrequency(k) == pytest.approx(h.sfreq(i), rel=1e-12)
            assert r.getNSamples()[k] == h.n_samples(i)
            assert r.getPhysicalMinimum(k) == h.physical_min[i]
            assert r.getPhysicalMaximum(k) == h.physical_max[i]
            assert r.getDigitalMinimum(k) == h.digital_min[i]
            assert r.getDigitalMaximum(k) == h.digital_max[i]
            assert r.getPhysicalDimension(k) == h.units[i]
            assert r.getPrefilter(k) == h.prefilter[i]
            assert r.getTransducer(k) == h.transducer[i]
        assert r.datarecords_in_file == h.n_records
        assert r.datarecord_duration == pytest.approx(h.record_duration, rel=1e-12)
        assert r.getStartdatetime().replace(microsecond=0) == h.start
        if "+" not in h.format:
            assert r.patient.decode("latin-1").strip() == h.patient_id
            assert r.recording.decode("latin-1").strip() == h.recording_id
    finally:
        r.close()


def _windows(n: int, spr: int) -> list[tuple[int, int]]:
    ws = [(0, n), (0, 1), (n - 1, n), (n - 7, n), (spr - 3, spr + 5), (spr, 2 * spr)]
    ws += [(2 * spr + 1, min(n, 5 * spr - 1)), (n // 3, n // 3 + 2 * spr + 17)]
    return [(a, b) for a, b in ws if 0 <= a <= b <= n]


def assert_signals_match_mne(h: EdfHeader, path: Path) -> None:
    raw = _mne_raw(path)
    data = list(h.signal_indices)
    # mne resamples slower channels to its rate; compare only the channels already at it.
    at_rate = [k for k, i in enumerate(data) if h.sfreq(i) == raw.info["sfreq"]]
    picks = [data[k] for k in at_rate]
    spr = h.samples_per_record[picks[0]]
    for a, b in _windows(raw.n_times, spr):
        ours = read_signals(h, picks, a, b)
        assert ours.dtype == np.float64
        assert ours.shape == (len(picks), b - a)
        ref = raw.get_data(picks=at_rate, start=a, stop=b)
        np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL, err_msg=f"window {a}:{b}")
    assert read_signals(h, picks, 5, 5).shape == (len(picks), 0)  # mne refuses empty windows
    # Picks in any order read the same samples.
    rev = picks[::-1]
    np.testing.assert_allclose(
        read_signals(h, rev, 3, spr + 9),
        raw.get_data(picks=at_rate[::-1], start=3, stop=spr + 9),
        rtol=RTOL,
        atol=ATOL,
    )


def assert_signals_match_pyedflib(h: EdfHeader, path: Path) -> None:
    # Every data signal at its own rate (mne would have resampled the slower ones).
    r = pyedflib.EdfReader(str(path))
    try:
        chans = h.signal_indices if "+" in h.format else range(len(h.labels))
        for k, i in enumerate(chans):
            if is_annotation_label(h.labels[i]):
                continue
            n = h.n_samples(i)
            scale = UNIT_SCALE.get(h.units[i], 1.0)
            for a, b in [(0, n), (max(0, n - h.samples_per_record[i] - 2), n)]:
                ref = r.readSignal(k, a, b - a) * scale
                ours = read_signals(h, [i], a, b)[0]
                np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-15)
    finally:
        r.close()


# ---------------------------------------------------------------------------------------------
# written files vs mne and pyedflib


@pytest.mark.parametrize("name", WRITTEN)
def test_header_matches_mne(files, name):
    path = files[name]
    assert_header_matches_mne(read_header(path), path)


@pytest.mark.parametrize("name", WRITTEN)
@needs_pyedflib
def test_header_matches_pyedflib(files, name):
    path = files[name]
    assert_header_matches_pyedflib(read_header(path), path)


@pytest.mark.parametrize("name", WRITTEN)
def test_read_signals_matches_mne(files, name):
    path = files[name]
    assert_signals_match_mne(read_header(path), path)


@pytest.mark.parametrize("name", WRITTEN)
@needs_pyedflib
def test_read_signals_matches_pyedflib_every_rate(files, name):
    path = files[name]
    assert_signals_match_pyedflib(read_header(path), path)


def test_header_values_written_by_edfio(files):
    h = read_header(files["edfio_tuh_250.edf"])
    assert h.path == str(files["edfio_tuh_250.edf"])
    assert h.format == "EDF"
    assert h.start == datetime.datetime(2003, 7, 15, 10, 20, 30)
    assert h.labels == (*TUH_EEG, "EKG1-REF", "PHOTIC-REF", "IBI", "BURSTS")
    assert h.signal_indices == tuple(range(10))
    assert h.samples_per_record == (250,) * 8 + (1, 1)
    assert [h.sfreq(i) for i in (0, 7, 8)] == [250.0, 250.0, 1.0]
    assert (h.n_records, h.record_duration, h.duration) == (12, 1.0, 12.0)
    assert h.n_samples(0) == 3000 and h.n_samples(9) == 12
    assert h.sample_bytes == 2
    assert h.header_bytes == 256 * 11
    assert h.record_bytes == (8 * 250 + 2) * 2
    assert h.file_size == os.path.getsize(h.path) == h.header_bytes + 12 * h.record_bytes
    assert h.physical_min[6] == -2000.0 and h.physical_max[7] == 100.0
    assert h.units == ("uV",) * 10
    assert h.recording_id.startswith("Startdate 15-JUL-2003")

    q = read_header(files["edfio_256_512_quarter.edf"])
    assert q.format == "EDF+C"
    assert q.start == datetime.datetime(1999, 12, 31, 23, 59, 58)
    assert q.record_duration == 0.25
    assert q.labels[-1] == "EDF Annotations" and q.signal_indices == (0, 1, 2, 3, 4)
    assert [q.sfreq(i) for i in q.signal_indices] == [256.0] * 3 + [512.0] * 2

    t = read_header(files["edfio_400_tenth.edf"])
    assert (t.record_duration, t.samples_per_record[0], t.sfreq(0)) == (0.1, 40, 400.0)
    assert t.units[0] == "mV"
    assert t.start == datetime.datetime(1985, 1, 1, 0, 0, 1)  # edfio's default date, "01.01.85"

    assert read_header(files["edfio_512_long_records.edf"]).start.year == 2084


@needs_pyedflib
def test_bdf_header_values(files):
    h = read_header(files["pyedflib_bdfplus.bdf"])
    assert (h.format, h.sample_bytes) == ("BDF+C", 3)
    assert h.labels[-1] == "BDF Annotations"
    assert h.start == datetime.datetime(1988, 8, 8, 8, 8, 8)
    assert h.digital_min[0] == -8388608 and h.digital_max[0] == 8388607
    assert h.prefilter[0] == "HP:0.1Hz LP:70Hz N:60Hz"
    assert h.transducer[0] == "AgAgCl electrode"


# ---------------------------------------------------------------------------------------------
# EDFbrowser-written files shipped with pyedflib


@needs_pyedflib
def test_pyedflib_ships_data_files():
    names = {p.name for p in _pyedflib_data_files()}
    assert {"test_generator.edf", "test_generator.bdf"} <= names


@pytest.mark.parametrize("path", SHIPPED)
def test_pyedflib_data_file_header(path):
    h = read_header(path)
    assert_header_matches_pyedflib(h, path)
    assert_header_matches_mne(h, path)


@pytest.mark.parametrize("path", SHIPPED)
def test_pyedflib_data_file_signals(path):
    h = read_header(path)
    assert_signals_match_mne(h, path)
    assert_signals_match_pyedflib(h, path)


# ---------------------------------------------------------------------------------------------
# policies and quirks, on patched copies of good files


def _signal_field_offset(ns: int, field: str, i: int) -> int:
    widths = {"label": 16, "transducer": 80, "unit": 8, "pmin": 8, "pmax": 8, "dmin": 8,
              "dmax": 8, "prefilter": 80, "samples": 8}  # fmt: skip
    pos = 256
    for name, width in widths.items():
        if name == field:
            return pos + width * i
        pos += width * ns
    raise KeyError(field)


def _patch(path: Path, offset: int, value: bytes | str, width: int) -> None:
    raw = value.encode("latin-1") if isinstance(value, str) else value
    assert len(raw) <= width
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(raw.ljust(width, b" "))


def _patch_signal(path: Path, field: str, i: int, value: bytes | str) -> None:
    ns = read_header(path).header_bytes // 256 - 1
    width = 16 if field == "label" else 80 if field in ("transducer", "prefilter") else 8
    _patch(path, _signal_field_offset(ns, field, i), value, width)


@pytest.fixture
def tuh(files, tmp_path) -> Path:
    """A private copy of the TUH-like file, free to patch or cut."""
    dst = tmp_path / "copy.edf"
    shutil.copyfile(files["edfio_tuh_250.edf"], dst)
    return dst


def test_utf8_and_latin1_text(tuh):
    # (pyedflib's edflib refuses non-ASCII labels outright, so mne is the only reference here.)
    _patch_signal(tuh, "label", 0, "EEG Fż-REF".encode())  # EDFbrowser writes UTF-8
    _patch_signal(tuh, "label", 1, b"Temp \xb0C")  # not valid UTF-8: latin-1
    _patch_signal(tuh, "unit", 2, b"\xb5V")  # latin-1 micro sign
    h = read_header(tuh)
    assert h.labels[:2] == ("EEG Fż-REF", "Temp °C")
    assert h.units[2] == "µV"
    raw = _mne_raw(tuh)
    assert raw.ch_names[:2] == ["EEG FÅ¼-REF", "Temp °C"]  # mne: latin-1 throughout
    # µV scales like uV, as in mne.
    np.testing.assert_allclose(
        read_signals(h, [2], 0, 500), raw.get_data([2], 0, 500), rtol=RTOL, atol=ATOL
    )


def test_units_scale_to_volts_like_mne_except_nanovolts(tuh):
    _patch_signal(tuh, "unit", 0, "mV")
    _patch_signal(tuh, "unit", 1, "V")
    _patch_signal(tuh, "unit", 2, "nV")
    _patch_signal(tuh, "unit", 3, "furlong")
    _patch_signal(tuh, "unit", 4, "")
    h = read_header(tuh)
    raw = _mne_raw(tuh)
    got = read_signals(h, range(6), 250, 750)
    ref = raw.get_data(range(6), 250, 750)
    for i in (0, 1, 3, 4, 5):
        np.testing.assert_allclose(got[i], ref[i], rtol=RTOL, atol=ATOL)
    # mne 1.13 leaves nV unscaled; we read volts.
    np.testing.assert_allclose(got[2], ref[2] * 1e-9, rtol=1e-12, atol=1e-27)
    assert np.abs(got[0]).max() > 1e-3 > np.abs(got[5]).max()  # mV really is 1000x uV


def test_physical_range_zero_reads_like_mne(tuh):
    _patch_signal(tuh, "pmax", 0, "-500")  # pmin is -500 too
    h = read_header(tuh)
    assert h.physical_min[0] == h.physical_max[0] == -500.0
    raw = _mne_raw(tuh)
    np.testing.assert_allclose(
        read_signals(h, [0], 0, 3000), raw.get_data([0]), rtol=RTOL, atol=ATOL
    )


def test_lenient_numbers_like_mne(tuh):
    _patch_signal(tuh, "pmin", 0, "-500,5")  # decimal comma
    _patch_signal(tuh, "dmin", 1, "-32768.0")  # integral float in an integer field
    _patch_signal(tuh, "samples", 2, b"250\x00\x00\x00\x00\x00")  # NUL padding
    _patch_signal(tuh, "label", 3, b"EEG C4-REF\x00\x00\x00\x00\x00\x00")
    h = read_header(tuh)
    assert h.physical_min[0] == -500.5
    assert h.digital_min[1] == -32768
    assert h.samples_per_record[2] == 250
    assert h.labels[3] == "EEG C4-REF"
    raw = _mne_raw(tuh)
    np.testing.assert_allclose(
        read_signals(h, [0, 1, 2], 0, 3000), raw.get_data([0, 1, 2]), rtol=RTOL, atol=ATOL
    )


def test_recording_in_progress_infers_records_from_size(tuh):
    _patch(tuh, 236, "-1", 8)
    h = read_header(tuh)
    assert h.n_records == 12
    assert _mne_raw(tuh)._raw_extras[0]["n_records"] == 12


def test_trailing_bytes_are_ignored(tuh):
    with open(tuh, "ab") as f:
        f.write(b"\x00" * 1001)  # a partial record: mne drops it too
    h = read_header(tuh)
    assert h.n_records == 12 and h.file_size == os.path.getsize(tuh)
    assert_header_matches_mne(h, tuh)
    with open(tuh, "ab") as f:
        f.write(b"\x00" * 2 * h.record_bytes)  # whole extra records: we keep the header's count
    assert read_header(tuh).n_records == 12


@pytest.mark.parametrize(
    ("date", "recording", "year"),
    [
        ("15.07.85", "Startdate X", 1985),
        ("15.07.99", "Startdate X", 1999),
        ("15.07.00", "Startdate X", 2000),
        ("15.07.84", "Startdate X", 2084),
        ("15.07.84", "Startdate 15-JUL-1984 X X X", 1984),  # the 4-digit year wins when it agrees
        ("15.07.yy", "Startdate 15-JUL-2091 X X X", 2091),  # EDF+ after 2084
        ("15.07.03", "Startdate 15-JUL-1903 X X X", 1903),
        ("15.07.03", "Startdate 15-JUL-2050 X X X", 2003),  # disagrees: the date field wins
    ],
)
def test_start_year_rules(tuh, date, recording, year):
    _patch(tuh, 192, "EDF+C", 44)
    _patch(tuh, 88, recording, 80)
    _patch(tuh, 168, date, 8)
    assert read_header(tuh).start == datetime.datetime(year, 7, 15, 10, 20, 30)


def test_start_year_plain_edf_ignores_recording_field(tuh):
    _patch(tuh, 88, "Startdate 15-JUL-1984 X X X", 80)
    _patch(tuh, 168, "15.07.84", 8)
    assert read_header(tuh).start.year == 2084


def test_annotation_only_file(tmp_path):
    path = tmp_path / "annotations.edf"
    edfio.Edf([], annotations=[edfio.EdfAnnotation(1.0, None, "note")]).write(path)
    h = read_header(path)
    assert h.format == "EDF+C"
    assert h.signal_indices == ()
    assert h.record_duration == 0.0 and h.duration == 0.0
    assert h.sfreq(0) == 0.0


def test_is_annotation_label():
    assert is_annotation_label("EDF Annotations")
    assert is_annotation_label("BDF Annotations ")
    assert not is_annotation_label("EEG FP1-REF")
    assert not is_annotation_label("Annotations")


def test_read_signals_argument_errors(files):
    h = read_header(files["edfio_tuh_250.edf"])
    with pytest.raises(ValueError, match="mix samples per record"):
        read_signals(h, [0, 8], 0, 10)
    with pytest.raises(ValueError, match="outside"):
        read_signals(h, [0], 0, 3001)
    with pytest.raises(ValueError, match="outside"):
        read_signals(h, [0], -1, 10)
    with pytest.raises(ValueError, match="out of range"):
        read_signals(h, [10], 0, 1)
    assert read_signals(h, [], 0, 7).shape == (0, 7)
    q = read_header(files["edfio_256_512_quarter.edf"])
    with pytest.raises(ValueError, match="annotation"):
        read_signals(q, [5], 0, 1)


def test_read_signals_after_file_shrank(tuh):
    h = read_header(tuh)
    os.truncate(tuh, h.header_bytes + 3 * h.record_bytes + 10)
    assert read_signals(h, [0], 0, 750).shape == (1, 750)
    with pytest.raises(EdfError, match=r"copy\.edf: file ended inside data record 3"):
        read_signals(h, [0], 700, 800)


def test_header_pickles(files):
    h = read_header(files["edfio_tuh_250.edf"])
    assert pickle.loads(pickle.dumps(h)) == h


def test_one_open_two_reads(files, monkeypatch):
    calls = {"open": 0, "read": 0}
    real_open, real_read = os.open, os.read

    def counting_open(*a, **k):
        calls["open"] += 1
        return real_open(*a, **k)

    def counting_read(*a, **k):
        calls["read"] += 1
        return real_read(*a, **k)

    monkeypatch.setattr(edf_module.os, "open", counting_open)
    monkeypatch.setattr(edf_module.os, "read", counting_read)
    read_header(files["edfio_tuh_250.edf"])
    assert calls == {"open": 1, "read": 2}


def test_import_is_light():
    code = "import sys, brainpipe.edf; print('mne' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------
# bad files: EdfError, one line, naming the file and the reason


def _bad(path: Path, match: str, memo: dict | None = None) -> EdfError:
    with pytest.raises(EdfError) as info:
        read_header(path, memo)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg
    assert match in msg, msg
    assert isinstance(info.value, BrainpipeError)
    return info.value


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.edf"
    p.write_bytes(b"")
    _bad(p, "empty file: 0 bytes, not an EDF/BDF recording")


def test_short_file(tmp_path):
    p = tmp_path / "short.edf"
    p.write_bytes(b"0       " + b" " * 100)
    _bad(p, "too short for an EDF/BDF header: 108 bytes")


def test_text_file_named_edf(tmp_path):
    p = tmp_path / "notes.edf"
    p.write_text("patient notes, not a recording\n" * 40)
    _bad(p, "not an EDF/BDF file: version field is b'patient '")


def test_truncated_mid_record(tuh):
    h = read_header(tuh)
    os.truncate(tuh, h.header_bytes + 5 * h.record_bytes + h.record_bytes // 2)
    e = _bad(tuh, "truncated: header says 12 data records")
    assert "(5 whole records)" in str(e)
    # mne reads the same file as 5 records, with a warning; we refuse it.


def test_n_records_disagrees_with_size(tuh):
    _patch(tuh, 236, "24", 8)
    _bad(tuh, "truncated: header says 24 data records")


def test_truncated_inside_signal_header(tuh):
    os.truncate(tuh, 256 + 100)
    _bad(tuh, "truncated header: 10 signals need a 2816-byte header but the file has 356 bytes")


@pytest.mark.parametrize(
    ("offset", "value", "width", "reason"),
    [
        (252, "ten", 4, "number of signals field is 'ten', not an integer"),
        (252, "0", 4, "number of signals is 0"),
        (252, "5000", 4, "number of signals is 5000, expected 1 to 4096"),
        (184, "2560", 8, "header size field says 2560 bytes but 10 signals need 2816"),
        (236, "12.5", 8, "number of data records field is '12.5', not an integer"),
        (236, "-2", 8, "number of data records is -2"),
        (244, "one", 8, "data record duration field is 'one', not a finite number"),
        (244, "nan", 8, "data record duration field is 'nan', not a finite number"),
        (244, "-1", 8, "data record duration is -1.0 s"),
        (244, "0", 8, "data record duration is 0 s but the file has data signals"),
    ],
)
def test_corrupt_fixed_header_fields(tuh, offset, value, width, reason):
    _patch(tuh, offset, value, width)
    _bad(tuh, reason)


@pytest.mark.parametrize(
    ("offset", "value", "width", "reason"),
    [
        (168, "31.02.03", 8, "start date/time fields are '31.02.03' '10.20.30'"),
        (176, "25.00.00", 8, "start date/time fields are '15.07.03' '25.00.00'"),
        (168, "15.07:03", 8, "start date/time fields are '15.07:03' '10.20.30'"),
    ],
)
def test_unparsable_start_date(tuh, offset, value, width, reason):
    """An error on request; by default the header reads with no start and a note saying why,
    so a clinical file with a broken date still indexes and its signals still read."""
    _patch(tuh, offset, value, width)
    with pytest.raises(EdfError, match=reason) as info:
        read_header(tuh, on_bad_date="raise")
    assert str(tuh) in str(info.value) and "\n" not in str(info.value)
    h = read_header(tuh)
    assert h.start is None and h.notes == (
        f"{reason}, expected 'dd.mm.yy' 'hh.mm.ss'; start time left empty",
    )
    assert h.n_records == read_header(tuh, {}).n_records > 0
    assert read_signals(h, [0], 0, 10).shape == (1, 10)


def test_start_date_written_with_colons(tuh):
    """TUSZ has files whose date field reads "01:01:85": read as 01.01.85, with the repair noted."""
    _patch(tuh, 168, "01:01:85", 8)
    h = read_header(tuh)
    assert h.start == datetime.datetime(1985, 1, 1, 10, 20, 30)
    assert h.notes == ("start date '01:01:85' written with colons, read as 'dd.mm.yy'",)
    raw = mne.io.read_raw_edf(tuh, preload=False, verbose="error")
    assert raw.n_times == h.n_records * h.samples_per_record[0]
    _patch(tuh, 168, "01.01.85", 8)
    assert read_header(tuh).notes == ()


@pytest.mark.parametrize(
    ("field", "i", "value", "reason"),
    [
        ("samples", 2, "25x", "signal 2 ('EEG C3-REF'): samples per record is '25x', not an integer"),
        ("samples", 0, "-250", "signal 0 ('EEG FP1-REF'): samples per record is -250, expected >= 0"),
        ("pmin", 4, "abc", "signal 4 ('EEG O1-REF'): physical minimum is 'abc', not a finite number"),
        ("pmax", 5, "inf", "signal 5 ('EEG O2-REF'): physical maximum is 'inf', not a finite number"),
        ("dmin", 6, "-3.5", "signal 6 ('EKG1-REF'): digital minimum is '-3.5', not an integer"),
        ("dmax", 1, "-32768", "signal 1 ('EEG FP2-REF'): digital minimum -32768 is not below digital maximum -32768"),
    ],
)  # fmt: skip
def test_corrupt_signal_fields(tuh, field, i, value, reason):
    _patch_signal(tuh, field, i, value)
    _bad(tuh, reason)


def test_memo_keeps_each_file_own_errors(files, tmp_path):
    # A scan shares one memo between its reads; a later file with a bad field must still fail,
    # with its own name, and the same bytes must keep their meaning per field: "-250.0" is a
    # valid digital minimum but not a samples-per-record count.
    memo: dict = {}
    good = tmp_path / "good.edf"
    shutil.copyfile(files["edfio_tuh_250.edf"], good)
    ns = read_header(good).header_bytes // 256 - 1
    for i in range(ns):
        _patch_signal(good, "dmin", i, "-250.0")
    assert read_header(good, memo).digital_min == (-250,) * ns
    assert read_header(good, memo) == read_header(good)  # memo hit, equal to a plain read
    bad = tmp_path / "bad.edf"
    shutil.copyfile(files["edfio_tuh_250.edf"], bad)
    for i in range(ns):
        _patch(bad, _signal_field_offset(ns, "samples", i), "-250.0", 8)
    _bad(bad, "signal 0 ('EEG FP1-REF'): samples per record is '-250.0', not an integer", memo)
    again = tmp_path / "again.edf"
    shutil.copyfile(good, again)
    _patch_signal(again, "pmin", 3, "abc")
    _bad(again, "signal 3 ('EEG C4-REF'): physical minimum is 'abc', not a finite number", memo)
    assert read_header(good, memo).digital_min == (-250,) * ns


def test_memo_checks_labels_per_file(files, tmp_path):
    # Which signals the checks exempt (annotations) depends on each file's labels, also when
    # the numbers were read before from another file with the same memo.
    memo: dict = {}
    ann = tmp_path / "ann.edf"
    shutil.copyfile(files["edfio_tuh_250.edf"], ann)
    _patch_signal(ann, "label", 0, "EDF Annotations")
    _patch_signal(ann, "dmax", 0, "-32768")  # equal to its digital minimum
    assert read_header(ann, memo).digital_max[0] == -32768
    eeg = tmp_path / "eeg.edf"
    shutil.copyfile(ann, eeg)
    _patch(eeg, 256, "EEG FP1-REF", 16)
    _bad(eeg, "signal 0 ('EEG FP1-REF'): digital minimum -32768 is not below digital maximum", memo)


def test_memo_changes_no_header(files, tmp_path):
    # Every header read with one shared memo (in either order, and from threads) equals the same
    # header read without one, over a synthetic TUH tree (varying channel sets, rates, EDF and
    # EDF+) and the files above.
    from concurrent.futures import ThreadPoolExecutor

    from brainpipe.synthetic import make_corpus

    make_corpus(tmp_path / "raw", "tuab", n_subjects=12, seed=5, duration_s=(10.0, 20.0))
    paths = sorted((tmp_path / "raw").rglob("*.edf")) + [
        p for p in files.values() if p.suffix in (".edf", ".bdf")
    ]
    plain = [read_header(p) for p in paths]
    memo: dict = {}
    assert [read_header(p, memo) for p in paths] == plain
    assert [read_header(p, memo) for p in reversed(paths)][::-1] == plain
    shared: dict = {}
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda p: read_header(p, shared), paths * 4)) == plain * 4


def test_all_signals_empty(tuh):
    for i in range(10):
        _patch_signal(tuh, "samples", i, "0")
    _bad(tuh, "every signal has 0 samples per record")


def test_directory(tmp_path):
    d = tmp_path / "dir.edf"
    d.mkdir()
    _bad(d, "is a directory")


def test_missing_file(tmp_path):
    _bad(tmp_path / "missing.edf", "cannot open: No such file or directory")


# ---------------------------------------------------------------------------------------------
# property: any bytes give a header or an EdfError, never another exception


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzz.edf"


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> list[bytes]:
    """A tiny EDF+ and (with pyedflib) a tiny BDF+, each with a slower signal and annotations."""
    d = tmp_path_factory.mktemp("small")
    rng = _rng(9)
    sigs = [_edfio_signal(rng, "EEG FP1-REF", 8, 3), _edfio_signal(rng, "IBI", 2, 3)]
    edfio.Edf(sigs, annotations=[edfio.EdfAnnotation(0.5, None, "x")]).write(d / "small.edf")
    out = [(d / "small.edf").read_bytes()]
    if pyedflib is not None:
        specs = [("EEG FP1-REF", 8, "uV", 100.0), ("IBI", 2, "uV", 100.0)]
        path = _write_pyedflib(
            d / "small.bdf", pyedflib.FILETYPE_BDFPLUS, specs, 3, datetime.datetime(2001, 1, 1), 9
        )
        out.append(path.read_bytes())
    for name, data in zip(("small.edf", "small.bdf"), out, strict=False):
        (d / name).write_bytes(data)
        assert read_header(d / name).n_records == 3  # the unmutated files parse
    return out


def _check_any(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        h = read_header(path)
    except EdfError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    assert h.file_size == len(data)
    assert h.file_size >= h.header_bytes + h.n_records * h.record_bytes
    for i in h.signal_indices:
        n = min(h.n_samples(i), 5)
        assert read_signals(h, [i], 0, n).shape == (1, n)


FIELD_TEXT = st.text(alphabet="0123456789 .,-+eEyYx:\x00\xff", max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=1200))
def test_random_bytes_never_crash(scratch, data):
    _check_any(scratch, data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, 1),
    flips=st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), max_size=6),
    fields=st.lists(st.tuples(st.integers(0, 127), FIELD_TEXT), max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 2000)),
)
def test_mutated_header_never_crashes(scratch, small_files, which, flips, fields, cut):
    data = bytearray(small_files[which % len(small_files)])
    hb = int(data[184:192])
    for pos, value in flips:  # random bytes anywhere in the header
        data[pos % hb] = value
    for slot, text in fields:  # plausible junk in an 8-byte-aligned field
        raw = text.encode("latin-1").ljust(8, b" ")
        pos = (168 + 8 * slot) % (hb - 8)
        data[pos : pos + 8] = raw
    if cut is not None:
        data = data[:cut]
    _check_any(scratch, bytes(data))
