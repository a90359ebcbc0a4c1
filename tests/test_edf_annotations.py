"""EDF+/BDF+ annotations (issue 13): our TAL reader against mne's `raw.annotations` on files
written by edfio and pyedflib, EDF+D record onsets, and the events the index stores for every
layout (event labels, Sleep-EDF hypnograms paired with their recordings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import edfio
import mne
import numpy as np
import pyedflib
import pytest
from helpers import sleep_edf_tree, write_edf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainpipe.config import load_config
from brainpipe.edf import read_annotations, read_header, read_signals
from brainpipe.index import build_index
from brainpipe.indexfile import Index


def _mne(path: Path) -> list[tuple[float, float, str]]:
    a = mne.io.read_raw(path, preload=False, verbose="error").annotations
    return sorted(
        zip(a.onset.tolist(), a.duration.tolist(), list(a.description), strict=True),
        key=lambda x: x[0],
    )


def _ours(path: Path) -> list[tuple[float, float, str]]:
    return [tuple(a) for a in read_annotations(read_header(path))]


def _same(ours, theirs) -> None:
    assert len(ours) == len(theirs) > 0
    for o, t in zip(ours, theirs, strict=True):
        assert o[0] == pytest.approx(t[0], abs=1e-9) and o[1] == pytest.approx(t[1], abs=1e-9)
        assert o[2] == t[2]


def edfio_file(path: Path, annotations, seconds: float = 30, sfreq: float = 100) -> Path:
    """A two-channel EDF+C written by edfio with these (onset, duration, text) annotations."""
    return write_edf(
        path,
        sfreq,
        seconds,
        labels=("EEG Fpz-Cz", "EEG Pz-Oz"),
        scale=20.0,
        annotations=annotations,
    )


def pyedflib_file(path: Path, bdf: bool, n_annotation_signals: int) -> Path:
    kind = pyedflib.FILETYPE_BDFPLUS if bdf else pyedflib.FILETYPE_EDFPLUS
    dmax = 8388607 if bdf else 32767
    w = pyedflib.EdfWriter(str(path), 2, file_type=kind)
    w.setSignalHeaders(
        [
            {
                "label": f"EEG C{i}", "dimension": "uV", "sample_frequency": 100,
                "physical_max": 100, "physical_min": -100, "digital_max": dmax,
                "digital_min": -dmax - 1, "transducer": "", "prefilter": "",
            }
            for i in (3, 4)
        ]
    )  # fmt: skip
    w.set_number_of_annotation_signals(n_annotation_signals)
    for k in range(60):  # pyedflib writes one per record and annotation signal: 60 records
        w.writeAnnotation(k * 1.0 + 0.05, 0.5 if k % 3 else -1, f"T{k % 3} épisode {k}")
    w.writeSamples([np.zeros(6000), np.zeros(6000)])
    w.close()
    return path


def test_edfio_annotations_match_mne(tmp_path):
    ann = [(0.5, None, "T0"), (1.25, 2.5, "T1 ü"), (7.0, 0.0, "Sleep stage W"), (7.0, 30, "W2")]
    p = edfio_file(tmp_path / "a.edf", ann)
    _same(_ours(p), _mne(p))
    assert [a[2] for a in _ours(p)] == ["T0", "T1 ü", "Sleep stage W", "W2"]
    empty = edfio_file(tmp_path / "none.edf", [])  # EDF+C whose slot fits no annotation
    assert read_header(empty).format == "EDF+C" and _ours(empty) == [] == _mne(empty)
    one = edfio_file(tmp_path / "one.edf", [(12.0, None, "x")])  # the smallest slot with text
    assert _ours(one) == [(12.0, 0.0, "x")] == _mne(one)


@pytest.mark.parametrize("bdf", [False, True])
@pytest.mark.parametrize("n_signals", [1, 3])
def test_pyedflib_annotations_match_mne(tmp_path, bdf, n_signals):
    p = pyedflib_file(tmp_path / ("a.bdf" if bdf else "a.edf"), bdf, n_signals)
    h = read_header(p)
    assert sum(lab.endswith("Annotations") for lab in h.labels) == n_signals
    ours = _ours(p)
    assert len(ours) == 60
    _same(ours, _mne(p))


def test_plain_edf_has_no_annotations(tmp_path):
    p = tmp_path / "plain.edf"
    w = pyedflib.EdfWriter(str(p), 1, file_type=pyedflib.FILETYPE_EDF)
    w.setSignalHeaders([{"label": "EEG C3", "dimension": "uV", "sample_frequency": 100,
                         "physical_max": 100, "physical_min": -100, "digital_max": 32767,
                         "digital_min": -32768, "transducer": "", "prefilter": ""}])  # fmt: skip
    w.writeSamples([np.zeros(500)])
    w.close()
    assert read_annotations(read_header(p)) == ()


# --- EDF+D: records with gaps ---------------------------------------------------------------


def _field(value, width: int) -> bytes:
    return str(value).encode("latin-1").ljust(width)[:width]


def write_edf_plus_d(path: Path, record_onsets, tals_per_record, spr: int = 50, dur: float = 1.0):
    """An EDF+D file by hand (no library writes one): one data signal, two annotation signals;
    record r starts at record_onsets[r] s; tals_per_record[r] = (TALs of the first annotation
    signal after the time-keeping one, TALs of the second)."""
    n_rec, ann_bytes = len(record_onsets), 120
    labels = ["EEG Cz", "EDF Annotations", "EDF Annotations"]
    spr_all = [spr, ann_bytes // 2, ann_bytes // 2]
    ns = len(labels)
    head = b"0       " + _field("X X X X", 80) + _field("Startdate 01-JAN-2020 X X X", 80)
    head += b"01.01.2012.00.00" + _field(256 * (ns + 1), 8) + _field("EDF+D", 44)
    head += _field(n_rec, 8) + _field(dur, 8) + _field(ns, 4)
    cols = [
        [_field(lab, 16) for lab in labels],
        [_field("", 80)] * ns,
        [_field("uV", 8), _field("", 8), _field("", 8)],
        [_field(-100, 8), _field(-1, 8), _field(-1, 8)],
        [_field(100, 8), _field(1, 8), _field(1, 8)],
        [_field(-32768, 8)] * ns,
        [_field(32767, 8)] * ns,
        [_field("", 80)] * ns,
        [_field(n, 8) for n in spr_all],
        [_field("", 32)] * ns,
    ]
    head += b"".join(b"".join(c) for c in cols)
    rng = np.random.default_rng(1)
    body = b""
    for r, onset in enumerate(record_onsets):
        first, second = tals_per_record[r]
        a1 = (f"+{onset:g}\x14\x14\x00" + "".join(first)).encode().ljust(ann_bytes, b"\x00")
        a2 = "".join(second).encode().ljust(ann_bytes, b"\x00")
        assert len(a1) == len(a2) == ann_bytes
        body += rng.integers(-1000, 1000, spr, dtype="<i2").tobytes() + a1 + a2
    path.write_bytes(head + body)
    return path


def test_edf_plus_d_annotations_are_placed_on_the_records_read_back_to_back(tmp_path):
    # Records of 1 s starting at 0, 5 and 6 s: the stored samples are 3 s back to back.
    p = write_edf_plus_d(
        tmp_path / "d.edf",
        [0.0, 5.0, 6.0],
        [
            (["+0.5\x150.25\x14spike\x14\x00"], ["+0.25\x14eyes open\x14\x00"]),
            (["+5.5\x14T1\x14T2\x14\x00"], []),
            (["+3\x14in the gap\x14\x00"], ["+6.75\x150.5\x14end\x14\x00"]),
        ],
    )
    h = read_header(p)
    assert h.format == "EDF+D" and h.n_records == 3
    got = _ours(p)
    assert got == [
        (0.25, 0.0, "eyes open"),
        (0.5, 0.25, "spike"),
        (1.0, 0.0, "in the gap"),  # 3 s falls in the gap: the start of the record at 5 s
        (1.5, 0.0, "T1"),
        (1.5, 0.0, "T2"),
        (2.75, 0.25, "end"),  # 6.75 + 0.5 runs past the last record's end (7 s): cut there
    ]
    # mne agrees inside the first record; it places later ones by time since the start,
    # ignoring the gaps, and so drops those past its 3 s of data.
    theirs = _mne(p)
    _same(got[:2], theirs[:2])
    assert "T1" not in [t[2] for t in theirs]
    assert read_signals(h, [0], 0, 150).shape == (1, 150)


# --- the index's events table ----------------------------------------------------------------


def test_index_stores_annotation_events_for_every_layout(tmp_path):
    ann = [(0.5, None, "T0"), (4.0, 4.2, "T1"), (12.0, 4.1, "T2"), (20.0, None, "Sleep stage 3")]
    labels = ['corpus.event_labels={"T1": "left", "T2": "right", "Sleep stage [34]": "N3"}']
    for layout, rel in [
        ("tuab", "edf/train/normal/01_tcp_ar/aaaaaaaa_s001_t000.edf"),
        ("tusz", "edf/dev/aaaaaaaa/s001_2003/01_tcp_ar/aaaaaaaa_s001_t000.edf"),
        ("generic", "S001/S001R03.edf"),
    ]:
        root = tmp_path / layout
        edf = edfio_file(root / rel, ann)
        if layout == "tusz":  # a background-only annotation file (without one: unlabelled)
            edf.with_suffix(".csv_bi").write_text(
                "channel,start_time,stop_time,label,confidence\nTERM,0.0,30.0,bckg,1.0\n"
            )
        cfg = load_config(None, [f"corpus.layout={layout}", *labels])
        out = tmp_path / f"{layout}.npz"
        build_index(root, out, cfg, progress=False)
        idx = Index.load(out)
        t = idx.event_table(0)
        assert t["description"].tolist() == ["T0", "T1", "T2", "Sleep stage 3"]
        assert t["label"].tolist() == ["", "left", "right", "N3"]
        assert t["onset_s"].tolist() == [0.5, 4.0, 12.0, 20.0]
        assert t["duration_s"].tolist() == pytest.approx([0.0, 4.2, 4.1, 0.0])
        assert [(e.onset_s, e.label) for e in idx.events(0)][1] == (4.0, "left")
        assert idx.event_labels == {"T1": "left", "T2": "right", "Sleep stage [34]": "N3"}
        assert idx.summary()["n_events"] == 4
        if layout == "tusz":  # annotation-file events decide a TUSZ label, EDF+ ones do not
            assert idx.label[0] == "bckg"


def test_tusz_csv_events_and_edf_annotations_share_the_table(tmp_path):
    root = tmp_path / "tusz"
    edf = edfio_file(
        root / "edf/dev/aaaaaaaa/s001_2003/01_tcp_ar/aaaaaaaa_s001_t000.edf", [(3.0, None, "note")]
    )
    edf.with_suffix(".csv_bi").write_text(
        "channel,start_time,stop_time,label,confidence\nTERM,10.0,20.0,seiz,1.0\n"
    )
    idx = build_index(root, tmp_path / "i.npz", load_config(None, ["corpus.layout=tusz"]),
                      progress=False).index  # fmt: skip
    t = idx.event_table(0)
    assert t["label"].tolist() == ["seiz", ""] and t["description"].tolist() == ["", "note"]
    assert idx.label[0] == "seiz"


def test_sleep_edf_hypnograms_pair_with_their_recordings(tmp_path):
    root = tmp_path / "sleep-cassette"
    stages = sleep_edf_tree(root)
    assert set(read_header(root / "SC4001EC-Hypnogram.edf").labels) == {"EDF Annotations"}
    cfg = load_config(None, ['corpus.event_labels={"Sleep stage W": "W", "Sleep stage R": "REM"}'])
    out = tmp_path / "index.npz"
    res = build_index(root, out, cfg, progress=False)
    idx = Index.load(out)
    assert idx.path.tolist() == ["SC4001E0-PSG.edf", "SC4012E0-PSG.edf"]
    assert idx.errors == [], idx.errors
    for i, key in enumerate(("SC4001", "SC4012")):
        t = idx.event_table(i)
        cols = (t["onset_s"].tolist(), t["duration_s"].tolist(), t["description"].tolist())
        got = list(zip(*cols, strict=True))
        assert got == stages[key]
        a = mne.read_annotations(root / f"{key}EC-Hypnogram.edf")
        ref = list(zip(a.onset.tolist(), a.duration.tolist(), list(a.description), strict=True))
        _same(got, ref)
    assert idx.event_table(1)["label"].tolist() == ["W", "REM"]
    # A changed hypnogram is re-read with its recording; an unchanged tree reads nothing.
    assert build_index(root, out, cfg, progress=False).n_read == 0
    hyp = root / "SC4012EC-Hypnogram.edf"
    edfio.Edf([], annotations=[edfio.EdfAnnotation(0.0, 120.0, "Sleep stage W")]).write(hyp)
    os.utime(hyp, ns=(1, 3_000_000_000))
    res = build_index(root, out, cfg, progress=False)
    assert (res.n_read, res.n_reused) == (1, 1)
    assert Index.load(out).event_table(1)["description"].tolist() == ["Sleep stage W"]
    assert Index.load(out).event_table(0)["description"].tolist()[0] == "Sleep stage W"
    # As mne (read_annotations, then set_annotations on the recording), a paired file's onsets
    # count from its own first record, whatever start date its header gives.
    psg = mne.io.read_raw_edf(root / "SC4012E0-PSG.edf", verbose="error")
    psg.set_annotations(mne.read_annotations(hyp))
    assert Index.load(out).event_table(1)["onset_s"].tolist() == psg.annotations.onset.tolist()


def test_unpaired_annotation_only_file_is_reported_and_pairing_can_be_off(tmp_path):
    root = tmp_path / "sleep"
    sleep_edf_tree(root)
    (root / "SC4012E0-PSG.edf").unlink()
    idx = build_index(root, tmp_path / "i.npz", load_config(None), progress=False).index
    assert idx.path.tolist() == ["SC4001E0-PSG.edf"] and len(idx.event_table(0)["onset_s"]) == 3
    assert [e["path"] for e in idx.errors] == ["SC4012EC-Hypnogram.edf"]
    assert idx.errors[0]["reason"].startswith("no signals: file holds only annotations")
    off = load_config(None, ["corpus.annotation_pairing=null"])
    idx = build_index(root, tmp_path / "j.npz", off, progress=False).index
    assert len(idx.event_table(0)["onset_s"]) == 0 and len(idx.errors) == 2


def test_bad_pairing_and_label_config_fail_with_the_key():
    from brainpipe.errors import BrainpipeError

    with pytest.raises(BrainpipeError, match="corpus.annotation_pairing.*key"):
        load_config(None, ["corpus.annotation_pairing=(.+)-PSG"])
    with pytest.raises(BrainpipeError, match="corpus.event_labels"):
        load_config(None, ['corpus.event_labels={"Sleep stage (": "W"}'])


def test_index_written_before_descriptions_loads_and_hashes_the_same():
    old = Index.load(Path(__file__).parent / "data" / "index_v1.npz")
    assert old.event_table(0)["description"].tolist() == [""]
    assert old.warnings == [] and old.event_labels == {}


# --- header date repairs reach the index -------------------------------------------------------


def test_bad_start_date_indexes_with_empty_start_and_a_warning(tmp_path, capsys):
    from brainpipe.cli import main

    root = tmp_path / "raw"
    a = edfio_file(root / "a.edf", [])
    b = edfio_file(root / "b.edf", [])
    for path, date in ((a, b"01:01:85"), (b, b"31.02.03")):
        with open(path, "r+b") as f:
            f.seek(168)
            f.write(date)
    out = tmp_path / "i.npz"
    assert main(["index", "--raw", str(root), "--index", str(out)]) == 0
    assert "2 warnings" in capsys.readouterr().out
    idx = Index.load(out)
    assert idx.path.tolist() == ["a.edf", "b.edf"] and idx.errors == []
    assert idx.start.tolist()[0].startswith("1985-01-01T") and idx.start[1] == ""
    assert idx.warnings == [
        {"path": "a.edf", "reason": "start date '01:01:85' written with colons, read as 'dd.mm.yy'"},
        {"path": "b.edf", "reason": "start date/time fields are '31.02.03' '00.00.00', expected "
                                    "'dd.mm.yy' 'hh.mm.ss'; start time left empty"},
    ]  # fmt: skip
    assert main(["inspect", str(out)]) == 0
    assert "warnings: 2" in capsys.readouterr().out
    # Kept across an incremental re-index that reads only another file.
    edfio_file(root / "c.edf", [])
    assert build_index(root, out, load_config(None), progress=False).n_read == 1
    assert len(Index.load(out).warnings) == 2


# --- mne's logging during a threaded index ---------------------------------------------------


def test_threaded_index_of_fif_files_prints_only_its_own_lines(tmp_path):
    root = tmp_path / "meg"
    info = mne.create_info([f"MEG {k:04d}" for k in range(4)], 200.0, "mag")
    for k in range(60):
        (root / f"sub-{k:02d}").mkdir(parents=True)
        mne.io.RawArray(np.zeros((4, 400)), info, verbose="error").save(
            root / f"sub-{k:02d}" / "rest_meg.fif", verbose="error"
        )
    # Every open waits 3 ms (a network mount), so the index reads on threads; mne logs at INFO.
    script = (
        "import os, sys, time, builtins\n"
        "real = builtins.open\n"
        "def slow(p, *a, **k):\n"
        "    if str(p).endswith('.fif'): time.sleep(0.003)\n"
        "    return real(p, *a, **k)\n"
        "builtins.open = slow\n"
        "from brainpipe.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "MNE_LOGGING_LEVEL": "info", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", script, "index", "--raw", str(root), "--index",
           str(tmp_path / "i.npz"), "--set", "index.workers=8"]  # fmt: skip
    for _ in range(3):  # a race: give it a few chances to show
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert len(lines) == 2 and lines[0].startswith("indexed 60 recordings"), proc.stdout
        assert lines[1].startswith("wrote") or lines[1].startswith("index unchanged"), lines
        assert proc.stderr == "", proc.stderr
        (tmp_path / "i.npz").unlink()


# --- property: any annotations edfio writes read back; any bytes fail only with EdfError ------

_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x14\x15"),
    min_size=1,
    max_size=12,
).filter(lambda t: t.strip() == t and t)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1900).map(lambda k: k / 100),
            st.one_of(st.none(), st.integers(0, 500).map(lambda k: k / 100)),
            _TEXT,
        ),
        min_size=1,
        max_size=12,
    )
)
def test_annotations_round_trip_through_edfio(tmp_path, written):
    p = edfio_file(tmp_path / "rt.edf", written, seconds=20)
    got = sorted(_ours(p), key=lambda a: (a[0], a[2], a[1]))  # writers reorder equal onsets
    want = sorted(
        ((on, min(dur or 0.0, 20 - on), text) for on, dur, text in written),
        key=lambda a: (a[0], a[2], a[1]),
    )
    assert [a[2] for a in got] == [a[2] for a in want]
    assert [a[0] for a in got] == pytest.approx([a[0] for a in want])
    assert [a[1] for a in got] == pytest.approx([a[1] for a in want])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(min_size=120, max_size=120), st.sampled_from(["EDF+C", "EDF+D"]))
def test_any_annotation_bytes_read_or_fail_with_one_line(tmp_path, blob, kind):
    from brainpipe.edf import EdfError

    p = write_edf_plus_d(tmp_path / "fuzz.edf", [0.0, 1.0], [([], []), ([], [])])
    data = bytearray(p.read_bytes())
    h = read_header(p)
    rec0 = h.header_bytes + 100  # the first record's first annotation signal
    data[rec0 : rec0 + 120] = blob
    data[192:197] = kind.encode()
    p.write_bytes(bytes(data))
    try:
        out = read_annotations(read_header(p))
    except EdfError as e:
        assert str(p) in str(e) and "\n" not in str(e)
    else:
        assert all(isinstance(a.description, str) and a.description for a in out)
