from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import mne
import numpy as np
import pytest
import scipy.signal

from brainpipe.cli import main
from brainpipe.config import STANDARD_1020, load_config
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index
from brainpipe.indexfile import Index
from brainpipe.preprocess import TCP_PAIRS
from brainpipe.synthetic import MARKER, CorpusSpec, make_corpus

TUAB_PATH = re.compile(
    r"^edf/(train|eval)/(normal|abnormal)/01_tcp_ar/([a-z]{8})_s(\d{3})_t(\d{3})\.edf$"
)
TUSZ_PATH = re.compile(
    r"^edf/(train|dev|eval)/(?P<subj>[a-z]{8})/s(?P<sess>\d{3})_(?P<year>\d{4})/(01_tcp_ar|02_tcp_le|03_tcp_ar_a)/"
    r"(?P=subj)_s(?P=sess)_t\d{3}\.edf$"
)


@pytest.fixture(scope="module")
def tuab(tmp_path_factory):
    return make_corpus(
        tmp_path_factory.mktemp("tuab"), "tuab", n_subjects=6, seed=3, duration_s=(20, 40)
    )


@pytest.fixture(scope="module")
def tusz(tmp_path_factory):
    return make_corpus(
        tmp_path_factory.mktemp("tusz"),
        "tusz",
        n_subjects=6,
        seed=5,
        duration_s=(40, 70),
        sessions_per_subject=(1, 1),
    )


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return list(csv.DictReader(lines))


def read_raw(root: Path, relpath: str) -> mne.io.BaseRaw:
    return mne.io.read_raw_edf(root / relpath, preload=True, verbose="error")


def scalp_picks(raw: mne.io.BaseRaw) -> list[int]:
    return [
        i
        for i, ch in enumerate(raw.ch_names)
        if ch.removeprefix("EEG ").rsplit("-", 1)[0] in STANDARD_1020
    ]


# --- layout -----------------------------------------------------------------------------------


def test_tuab_paths_follow_tuh_and_every_split_label_is_present(tuab):
    facts = {}
    for rec in tuab.recordings:
        m = TUAB_PATH.match(rec.path)
        assert m, rec.path
        assert (tuab.root / rec.path).is_file()
        split, label, subject = m.group(1, 2, 3)
        assert (rec.split, rec.label, rec.subject) == (split, label, subject)
        # a subject's recordings stay in one split and one label
        assert facts.setdefault(subject, (split, label)) == (split, label)
    assert set(tuab.counts) == {
        (s, lab) for s in ("train", "eval") for lab in ("normal", "abnormal")
    }
    assert sum(tuab.counts.values()) == len(tuab.paths) == len(set(tuab.paths))


def test_tusz_paths_and_annotation_files(tusz):
    splits_with_seizures = set()
    for rec in tusz.recordings:
        m = TUSZ_PATH.match(rec.path)
        assert m, rec.path
        assert int(m["year"]) == rec.start.year
        edf = tusz.root / rec.path
        term = read_csv_rows(edf.with_suffix(".csv_bi"))
        assert {r["channel"] for r in term} == {"TERM"}
        # TERM rows tile the recording, bckg between seizures
        starts, stops = (
            [float(r["start_time"]) for r in term],
            [float(r["stop_time"]) for r in term],
        )
        assert starts[0] == 0 and stops[-1] == rec.duration_s and starts[1:] == stops[:-1]
        seizures = [
            (float(r["start_time"]), float(r["stop_time"])) for r in term if r["label"] == "seiz"
        ]
        assert seizures == [(s.onset_s, s.offset_s) for s in rec.seizures]
        assert all(0 < on < off < rec.duration_s for on, off in seizures)
        assert {r["label"] for r in term} <= {"bckg", "seiz"}
        if seizures:
            splits_with_seizures.add(rec.split)

        per_channel = read_csv_rows(edf.with_suffix(".csv"))
        expected = {f"{a}-{b}" for a, b in TCP_PAIRS}
        if rec.montage == "03_tcp_ar_a":
            expected -= {"A1-T3", "T4-A2"}
        assert {r["channel"] for r in per_channel} == expected
        for r in per_channel:
            assert 0 <= float(r["start_time"]) < float(r["stop_time"]) <= rec.duration_s
        seized = [r for r in per_channel if r["label"] != "bckg"]
        assert bool(seized) == bool(seizures)
        assert all(any(on <= float(r["start_time"]) < off for on, off in seizures) for r in seized)
    assert splits_with_seizures == {"train", "dev", "eval"}


def test_annotation_headers_vary_but_columns_do_not(tusz):
    headers = set()
    for rel in tusz.annotation_files:
        lines = (tusz.root / rel).read_text().splitlines()
        headers.add(
            tuple(
                ln
                for ln in lines
                if ln.startswith("#") and "bname" not in ln and "duration" not in ln
            )
        )
        assert (
            next(ln for ln in lines if not ln.startswith("#"))
            == "channel,start_time,stop_time,label,confidence"
        )
    assert len(headers) > 1


def test_exact_recording_count(tmp_path):
    summary = make_corpus(
        tmp_path, "tuab", n_subjects=7, n_recordings=23, duration_s=(2, 3), seed=1
    )
    assert len(summary.paths) == 23 and summary.n_subjects == 7
    assert len(list(tmp_path.rglob("*.edf"))) == 23


# --- files read back --------------------------------------------------------------------------


def test_edf_reads_back_as_generated(tuab, tusz):
    recordings = [*tuab.recordings, *tusz.recordings]
    assert {r.edf_plus for r in recordings} == {True, False}
    for summary in (tuab, tusz):
        for rec in summary.recordings:
            raw = read_raw(summary.root, rec.path)
            assert tuple(raw.ch_names) == rec.channels
            assert raw.info["sfreq"] == rec.sfreq
            assert raw.n_times == rec.sfreq * rec.duration_s
            assert 24 <= len(rec.channels) <= 36
            ref = "LE" if rec.montage == "02_tcp_le" else "REF"
            assert {f"EEG {c}-{ref}" for c in STANDARD_1020} <= set(rec.channels)
            assert any(c.startswith("EEG A1-") for c in rec.channels) == (
                rec.montage != "03_tcp_ar_a"
            )
            head = (summary.root / rec.path).read_bytes()[:256].decode("ascii")
            assert re.match(
                rf"{rec.subject} [MF] 01-JAN-\d{{4}} {rec.subject} Age:\d+ ", head[8:88]
            )
            assert head[192:236].strip() == ("EDF+C" if rec.edf_plus else "")


def test_fif_reads_back_with_306_meg_channels(tmp_path):
    summary = make_corpus(
        tmp_path, "meg", n_subjects=1, sessions_per_subject=(1, 1), duration_s=(5, 5)
    )
    (path,) = summary.paths
    assert re.fullmatch(r"meg/sub-01/ses-01/sub-01_ses-01_task-rest_meg\.fif", path)
    raw = mne.io.read_raw_fif(tmp_path / path, verbose="error")
    assert len(mne.pick_types(raw.info, meg=True)) == 306
    assert len(mne.pick_types(raw.info, meg="mag")) == 102
    assert {"MEG 0111", "MEG 0112", "MEG 0113", "EOG 061", "STI 014"} <= set(raw.ch_names)
    assert raw.n_times == 5 * raw.info["sfreq"]


# --- determinism ------------------------------------------------------------------------------


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_files(tmp_path):
    kwargs = dict(n_subjects=4, duration_s=(3, 5))
    a = tree_bytes(make_corpus(tmp_path / "a", "tusz", seed=7, **kwargs).root)
    b = tree_bytes(make_corpus(tmp_path / "b", "tusz", seed=7, **kwargs).root)
    c = tree_bytes(make_corpus(tmp_path / "c", "tusz", seed=8, **kwargs).root)
    assert a == b
    assert any(p.endswith(".edf") for p in a)
    shared_edfs = [p for p in a if p.endswith(".edf") and p in c]
    assert a.keys() != c.keys() or all(a[p] != c[p] for p in shared_edfs)


# --- the signal -------------------------------------------------------------------------------


def test_abnormal_recordings_have_more_relative_delta_than_every_normal_one(tuab):
    rel_delta = {"normal": [], "abnormal": []}
    for rec in tuab.recordings:
        raw = read_raw(tuab.root, rec.path)
        x = raw.get_data(picks=scalp_picks(raw))
        x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)  # z-scoring removes amplitude
        f, psd = scipy.signal.welch(x, fs=rec.sfreq, nperseg=int(4 * rec.sfreq))
        band = psd[:, (f >= 1) & (f < 4)].sum(1) / psd[:, (f >= 0.5) & (f < 40)].sum(1)
        rel_delta[rec.label].append(band.mean())
    assert min(rel_delta["abnormal"]) > max(rel_delta["normal"])


def test_seizure_intervals_are_louder_than_background(tusz):
    for rec in (r for r in tusz.recordings if r.seizures):
        raw = read_raw(tusz.root, rec.path)
        x = raw.get_data(picks=scalp_picks(raw))
        x = scipy.signal.sosfiltfilt(
            scipy.signal.butter(4, (0.5, 40), "bandpass", fs=rec.sfreq, output="sos"), x
        )
        inside = np.zeros(raw.n_times, bool)
        for s in rec.seizures:
            inside |= (raw.times >= s.onset_s) & (raw.times < s.offset_s)
        rms_in, rms_out = x[:, inside].std(1), x[:, ~inside].std(1)
        assert np.median(rms_in / rms_out) > 1.5, rec.path


# --- the output directory ---------------------------------------------------------------------


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "thesis.txt").write_text("do not delete")
    with pytest.raises(BrainpipeError, match="overwrite"):
        make_corpus(tmp_path, "tuab", n_subjects=1, duration_s=(2, 2))
    make_corpus(tmp_path, "tuab", n_subjects=1, duration_s=(2, 2), overwrite=True)
    assert (tmp_path / "thesis.txt").read_text() == "do not delete"


def test_replaces_a_previous_synthetic_corpus_without_stale_files(tmp_path):
    make_corpus(tmp_path, "tusz", n_subjects=5, duration_s=(2, 3), seed=1)
    summary = make_corpus(tmp_path, "tuab", n_subjects=2, duration_s=(2, 3), seed=2)
    on_disk = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk == {*summary.paths, MARKER}
    assert not any(p.name.startswith(".tmp") for p in tmp_path.rglob("*"))


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(BrainpipeError, match="layout"):
        make_corpus(tmp_path, "tuh", n_subjects=1)  # type: ignore[arg-type]
    with pytest.raises(BrainpipeError, match="n_recordings"):
        make_corpus(tmp_path, "tuab", n_subjects=5, n_recordings=3)
    with pytest.raises(BrainpipeError, match="duration_s"):
        make_corpus(tmp_path, "tuab", duration_s=(10, 5))


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["synth", "--layout", "tuab", "--out", str(out), "--n-subjects", "4"]
    assert main([*argv, "--duration", "2", "3", "--sessions", "1", "1", "--sfreq", "128"]) == 0
    assert "wrote 4 tuab recordings" in capsys.readouterr().out
    for edf in out.rglob("*.edf"):
        assert mne.io.read_raw_edf(edf, verbose="error").info["sfreq"] == 128
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("")
    assert main(["synth", "--layout", "tuab", "--out", str(tmp_path / "d")]) != 0
    err = capsys.readouterr().err
    assert "error: " in err and "overwrite" in err and err.count("\n") == 1


def test_script_is_the_cli(tmp_path):
    script = Path(__file__).parents[1] / "scripts" / "make_synthetic_corpus.py"
    argv = ["--layout", "tuab", "--out", str(tmp_path), "--n-subjects", "2", "--duration", "2", "2"]
    done = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list(tmp_path.rglob("*.edf"))) == 2


# --- the spec ---------------------------------------------------------------------------------


def test_a_spec_and_its_keywords_write_the_same_corpus(tmp_path):
    kwargs = dict(n_subjects=3, seed=4, duration_s=(2, 3), sessions_per_subject=(1, 2))
    a = make_corpus(tmp_path / "a", CorpusSpec("tusz", **kwargs))
    b = make_corpus(tmp_path / "b", "tusz", **kwargs)
    assert a.spec == b.spec and tree_bytes(a.root) == tree_bytes(b.root)
    with pytest.raises(BrainpipeError, match="sfreq"):
        CorpusSpec("meg", sfreq=0)
    with pytest.raises(BrainpipeError, match="sessions_per_subject"):
        CorpusSpec("tuab", sessions_per_subject=(2, 1))
    assert CorpusSpec("meg").duration_s == (10.0, 30.0)
    assert CorpusSpec("tuab").duration_s == (60.0, 180.0)


# --- MEG subjects -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def meg(tmp_path_factory):
    spec = CorpusSpec(
        "meg", n_subjects=4, seed=11, duration_s=(20, 20), sessions_per_subject=(2, 2)
    )
    return make_corpus(tmp_path_factory.mktemp("meg"), spec)


def alpha_signature(path: Path) -> np.ndarray:
    """Per-sensor log of the 7-14 Hz share of 1-40 Hz power, after per-channel z-scoring."""
    raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
    x = raw.get_data(picks="meg")
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    f, psd = scipy.signal.welch(x, fs=raw.info["sfreq"], nperseg=int(4 * raw.info["sfreq"]))
    band = psd[:, (f >= 7) & (f < 14)].sum(1) / psd[:, (f >= 1) & (f < 40)].sum(1)
    return np.log(band)


def test_meg_sessions_of_one_subject_are_closer_than_other_subjects(meg):
    features = {rec.path: alpha_signature(meg.root / rec.path) for rec in meg.recordings}
    same, other = [], []
    for a in meg.recordings:
        for b in meg.recordings:
            if a.path < b.path:
                d = float(np.linalg.norm(features[a.path] - features[b.path]))
                (same if a.subject == b.subject else other).append(d)
    assert len(same) == 4 and len(other) == 24
    assert max(same) < min(other)


def test_meg_subjects_come_from_the_layout_in_the_index(meg, tmp_path):
    expected = {rec.path: (rec.subject, f"ses-{rec.session:02d}") for rec in meg.recordings}
    by_manifest = ["corpus.layout=generic", f"corpus.manifest={meg.root / 'manifest.csv'}"]
    by_regex = [
        "corpus.layout=generic",
        r"corpus.filename_regex=(?P<subject>sub-\d+)_(?P<session>ses-\d+)_",
    ]
    for name, overrides in (("manifest", by_manifest), ("regex", by_regex)):
        build_index(
            meg.root, tmp_path / f"{name}.npz", load_config(None, overrides), progress=False
        )
        ix = Index.load(tmp_path / f"{name}.npz")
        found = {
            str(p): (str(s), str(ses))
            for p, s, ses in zip(ix.path, ix.subject, ix.session, strict=True)
        }
        assert found == expected, name


@pytest.mark.slow
def test_a_long_meg_recording_is_written_without_holding_it_in_memory(tmp_path):
    # 5 minutes of 313 channels at 1 kHz are 751 MB as one float64 array (how it was once written).
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec, so a child of a large
    # pytest process would report its parent's peak; VmHWM belongs to the new address space.
    code = (
        "import re, sys; from brainpipe.synthetic import CorpusSpec, make_corpus; "
        "make_corpus(sys.argv[1], CorpusSpec('meg', n_subjects=1, duration_s=(300, 300), "
        "sessions_per_subject=(1, 1), sfreq=1000)); "
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    peak_mb = int(done.stdout.split()[-1]) / 1024
    (fif,) = tmp_path.rglob("*.fif")
    raw = mne.io.read_raw_fif(fif, verbose="error")
    assert raw.n_times == 300_000 and len(raw.ch_names) == 313
    assert peak_mb < 450, peak_mb
