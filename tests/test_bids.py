"""bids.py: a BIDS tree written by mne-bids from synthetic EEG and MEG, indexed and cached."""

from __future__ import annotations

import csv
from pathlib import Path

import mne
import mne_bids
import numpy as np
import pytest

from brainpipe.bids import bids_recordings
from brainpipe.cache import build_cache, verify_cache
from brainpipe.cachefile import CacheReader
from brainpipe.channels import BAD_TYPE
from brainpipe.config import load_config
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index

EEG_NAMES = ["Fp1", "Fp2", "C3", "C4", "T7", "O1", "O2", "STI 014"]
GROUPS = {"01": "patient", "02": "control", "03": "patient", "04": "control"}


def _eeg(subject: str, seed: int, bads=()) -> mne.io.BaseRaw:
    rng = np.random.default_rng(seed)
    info = mne.create_info(EEG_NAMES, 100.0, ["eeg"] * 7 + ["stim"])
    raw = mne.io.RawArray(rng.normal(0, 20e-6, (len(EEG_NAMES), 100 * 40)), info, verbose="error")
    raw.set_annotations(mne.Annotations([2.0, 10.5], [1.0, 2.0], ["left", "right"]))
    raw.info["bads"] = list(bads)
    raw.info["line_freq"] = 50
    return raw


def _add_column(tsv: Path, column: str, values: dict[str, str]) -> None:
    with tsv.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    fields = [*rows[0].keys(), column]
    with tsv.open("w", newline="") as f:
        w = csv.DictWriter(f, fields, delimiter="\t", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, column: values.get(r["participant_id"].removeprefix("sub-"), "n/a")})


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory):
    """Four EEG subjects (EDF, one with a bad C4, one with two sessions) and one MEG (FIF)."""
    from mne_bids import BIDSPath, write_raw_bids

    root = tmp_path_factory.mktemp("bids") / "ds"
    for k, subject in enumerate(GROUPS):
        sessions = ["a", "b"] if subject == "03" else ["a"]
        for s, session in enumerate(sessions):
            raw = _eeg(subject, 10 * k + s, bads=["C4"] if subject == "02" else ())
            path = BIDSPath(
                subject=subject, session=session, task="rest", run="01", datatype="eeg", root=root
            )
            write_raw_bids(
                raw, path, format="EDF", allow_preload=True, overwrite=True, verbose="error"
            )
    info = mne.create_info(["MEG 0111", "MEG 0112", "MEG 0113"], 200.0, ["mag", "grad", "grad"])
    meg = mne.io.RawArray(
        np.random.default_rng(9).normal(0, 1e-12, (3, 200 * 30)), info, verbose="error"
    )
    meg.info["line_freq"] = 50
    fif = root.parent / "meg_raw.fif"
    meg.save(fif, overwrite=True, verbose="error")
    write_raw_bids(
        mne.io.read_raw_fif(fif, verbose="error"),
        BIDSPath(subject="05", task="noise", datatype="meg", root=root),
        overwrite=True,
        verbose="error",
    )
    _add_column(root / "participants.tsv", "group", {**GROUPS, "05": "control"})
    _add_column(root / "participants.tsv", "fold", {"01": "train", "02": "train", "03": "eval"})
    # files a BIDS tree carries that are not recordings of their own
    deriv = root / "derivatives" / "clean" / "sub-01" / "eeg"
    deriv.mkdir(parents=True)
    (deriv / "sub-01_task-rest_eeg.edf").write_bytes(b"not read")
    return root


def _index(root, tmp_path, *extra):
    cfg = load_config(None, ["corpus.layout=bids", "corpus.extensions=[.edf, .fif]", *extra])
    return build_index(root, tmp_path / "i.npz", cfg, progress=False).index, cfg


def test_entities_labels_and_splits_from_the_bids_tree(bids_root, tmp_path):
    index, _ = _index(bids_root, tmp_path, "corpus.label_column=group", "corpus.split_column=fold")
    assert index.errors == []
    rows = {p: k for k, p in enumerate(index.path.tolist())}
    assert sorted(rows) == [
        "sub-01/ses-a/eeg/sub-01_ses-a_task-rest_run-01_eeg.edf",
        "sub-02/ses-a/eeg/sub-02_ses-a_task-rest_run-01_eeg.edf",
        "sub-03/ses-a/eeg/sub-03_ses-a_task-rest_run-01_eeg.edf",
        "sub-03/ses-b/eeg/sub-03_ses-b_task-rest_run-01_eeg.edf",
        "sub-04/ses-a/eeg/sub-04_ses-a_task-rest_run-01_eeg.edf",
        "sub-05/meg/sub-05_task-noise_meg.fif",
    ]
    k = rows["sub-03/ses-b/eeg/sub-03_ses-b_task-rest_run-01_eeg.edf"]
    assert (index.subject[k], index.session[k], index.token[k]) == ("03", "b", "task-rest_run-01")
    assert (index.label[k], index.split[k]) == ("patient", "eval")
    meg = rows["sub-05/meg/sub-05_task-noise_meg.fif"]
    assert (index.subject[meg], index.token[meg], index.label[meg], index.split[meg]) == (
        "05", "task-noise", "control", ""
    )  # fmt: skip
    assert index.split[rows["sub-04/ses-a/eeg/sub-04_ses-a_task-rest_run-01_eeg.edf"]] == ""


def test_events_from_events_tsv_match_mne_annotations(bids_root, tmp_path):
    index, _ = _index(bids_root, tmp_path)
    k = index.path.tolist().index("sub-01/ses-a/eeg/sub-01_ses-a_task-rest_run-01_eeg.edf")
    raw = mne_bids.read_raw_bids(
        mne_bids.BIDSPath(
            subject="01", session="a", task="rest", run="01", datatype="eeg", root=bids_root
        ),
        verbose="error",
    )
    got = [(e.onset_s, e.offset_s, e.label) for e in index.events(k)]
    want = [(a["onset"], a["onset"] + a["duration"], a["description"]) for a in raw.annotations]
    assert got == want and len(got) == 2


def test_bad_channels_from_channels_tsv_are_missing_for_build_cache(bids_root, tmp_path):
    index, _ = _index(bids_root, tmp_path)
    k = index.path.tolist().index("sub-02/ses-a/eeg/sub-02_ses-a_task-rest_run-01_eeg.edf")
    types = dict(zip(index.channels(k), index.channel_types(k), strict=True))
    assert types["C4"] == BAD_TYPE and types["C3"] == "eeg" and types["STI 014"] == "stim"

    common = ["corpus.layout=bids", "corpus.extensions=[.edf]", "preprocess.sfreq=100"]
    common += ["preprocess.h_freq=30", "preprocess.notch_freqs=[]", "window.seconds=5"]
    common += ["window.stride_seconds=5", "preprocess.channels=[FP1, C3, C4, T3]"]
    skip = load_config(None, common)
    build_index(bids_root, tmp_path / "e.npz", skip, progress=False)
    built = build_cache(tmp_path / "e.npz", tmp_path / "skip.h5", skip, workers=1, progress=False)
    assert [(p.split("/")[0], r) for p, r in built.skipped] == [
        (
            "sub-02",
            "missing channels: C4 (have: FP1, FP2, C3, C4 (bad), T7, O1, O2, STI 014); set preprocess.on_missing=zero to zero-fill them",
        )
    ]

    zero = load_config(None, [*common, "preprocess.on_missing=zero"])
    build_index(bids_root, tmp_path / "z.npz", zero, progress=False)
    build_cache(tmp_path / "z.npz", tmp_path / "zero.h5", zero, workers=1, progress=False)
    with CacheReader(tmp_path / "zero.h5") as r:
        rec = r.recordings
        sub02 = [i for i, p in enumerate(rec["path"].astype(str)) if p.startswith("sub-02/")]
        assert rec["mask"][sub02[0]].tolist() == [True, True, False, True]
        off, n = int(rec["offset"][sub02[0]]), int(rec["length"][sub02[0]])
        assert not r.read(off, n)[:, 2].any()  # the bad channel is zero-filled, not read
    report = verify_cache(tmp_path / "zero.h5", n_windows=40)
    assert report.ok, report.problems  # verify reads the recordings as the build did


def test_subject_splits_from_config_and_derivatives_are_not_recordings(bids_root, tmp_path):
    index, _ = _index(
        bids_root, tmp_path, 'corpus.subject_splits={"train": ["01", "02"], "eval": ["04"]}'
    )
    split = dict(zip(index.subject.tolist(), index.split.tolist(), strict=True))
    assert split == {"01": "train", "02": "train", "03": "", "04": "eval", "05": ""}
    assert not any(p.startswith("derivatives/") for p in index.path.tolist())


def test_only_the_first_part_of_a_split_fif_is_a_recording():
    names = [
        "sub-01/meg/sub-01_task-rest_split-01_meg.fif",
        "sub-01/meg/sub-01_task-rest_split-02_meg.fif",
        "derivatives/x/sub-01/meg/sub-01_task-rest_meg.fif",
    ]
    assert bids_recordings(names) == names[:1]


def test_bids_errors_name_the_file_and_the_fix(bids_root, tmp_path):
    with pytest.raises(BrainpipeError, match="no column 'diagnosis'.*participant_id"):
        _index(bids_root, tmp_path, "corpus.label_column=diagnosis")
    with pytest.raises(BrainpipeError, match="not a BIDS dataset root"):
        _index(bids_root / "sub-01", tmp_path)
    with pytest.raises(BrainpipeError, match="only corpus.layout=bids"):
        load_config(None, ["corpus.label_column=group"])
    with pytest.raises(BrainpipeError, match="subject '01' is in both"):
        load_config(None, ['corpus.subject_splits={"train": ["01"], "eval": ["01"]}'])
