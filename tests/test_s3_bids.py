"""A BIDS dataset in object storage: sidecars and recordings of several files, over s3://.

mne-bids writes a BIDS tree (EDF and BrainVision EEG with events.tsv and a bad channel in
channels.tsv; a MEG FIF saved in two split parts), which is uploaded to a real S3 server on
loopback. What `index` and `build-cache` make from s3:// must equal what they make from the
local copy, and an edit to any object of a recording (a sidecar, a BrainVision data file)
must re-read that recording on the next index.
"""

from __future__ import annotations

import time
from pathlib import Path

import mne
import numpy as np
import pytest
from helpers import cache_windows
from s3server import S3Server, use_s3

from brainpipe.cache import build_cache, verify_cache
from brainpipe.channels import BAD_TYPE
from brainpipe.config import load_config
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index
from brainpipe.indexfile import Index

BUCKET = "openneuro"
URL = f"s3://{BUCKET}/ds9"
EEG = ["Fp1", "Fp2", "C3", "C4", "O1", "O2"]
COMMON = [
    "corpus.layout=bids",
    "corpus.extensions=[.edf, .vhdr, .fif]",
    "corpus.label_column=group",
    "preprocess.sfreq=100",
    "preprocess.h_freq=30",
    "preprocess.notch_freqs=[]",
    "preprocess.on_missing=zero",
    "window.seconds=5",
    "window.stride_seconds=5",
    "cache.task=none",
    "cache.workers=1",
]
EEG_CFG = [*COMMON, "preprocess.channels=[FP1, FP2, C3, C4]"]


def cfg(*extra):
    return load_config(None, [*EEG_CFG, *extra])


def _eeg(seed: int, bads=()) -> mne.io.BaseRaw:
    rng = np.random.default_rng(seed)
    info = mne.create_info(EEG, 100.0, "eeg")
    raw = mne.io.RawArray(rng.normal(0, 20e-6, (len(EEG), 100 * 30)), info, verbose="error")
    raw.set_annotations(mne.Annotations([2.0, 10.5], [1.0, 2.0], ["left", "right"]))
    raw.info["bads"] = list(bads)
    raw.info["line_freq"] = 50
    return raw


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    from mne_bids import BIDSPath, write_raw_bids

    d = tmp_path_factory.mktemp("s3bids")
    root = d / "ds9"
    for subject, fmt, bads in (("01", "EDF", ()), ("02", "BrainVision", ("C4",))):
        write_raw_bids(
            _eeg(int(subject), bads),
            BIDSPath(subject=subject, task="rest", datatype="eeg", root=root),
            format=fmt,
            allow_preload=True,
            verbose="error",
        )
    # A MEG recording in two split parts (mne's 10 MB minimum part): both must be fetched.
    n = 16
    info = mne.create_info([f"MEG {k:04d}" for k in range(n)], 1000.0, "mag")
    meg = mne.io.RawArray(
        np.random.default_rng(3).normal(0, 1e-12, (n, 1000 * 200)), info, verbose="error"
    )
    meg_dir = root / "sub-03" / "meg"
    meg_dir.mkdir(parents=True)
    meg.save(
        meg_dir / "sub-03_task-noise_meg.fif",
        split_size="10MB",
        split_naming="bids",
        fmt="single",
        verbose="error",
    )
    _label(root, {"01": "patient", "02": "control", "03": "control"})
    return d


def _label(root: Path, groups: dict[str, str]) -> None:
    """participants.tsv with a `group` column, and a row for the subject mne-bids did not add."""
    lines = (root / "participants.tsv").read_text().splitlines()
    width = len(lines[0].split("\t"))
    rows = {line.split("\t")[0]: line for line in lines[1:]}
    out = [lines[0] + "\tgroup"]
    for sub, group in groups.items():
        row = rows.get(f"sub-{sub}", "\t".join([f"sub-{sub}"] + ["n/a"] * (width - 1)))
        out.append(f"{row}\t{group}")
    (root / "participants.tsv").write_text("\n".join(out) + "\n")


@pytest.fixture(scope="module")
def server(local):
    with S3Server() as s3:
        s3.upload_tree(local / "ds9", BUCKET, "ds9")
        yield s3


@pytest.fixture
def s3(server, monkeypatch) -> S3Server:
    use_s3(monkeypatch, server)
    server.reset_counters()
    return server


def content(idx: Index) -> dict:
    a = idx.arrays
    cols = ("path", "size", "format", "n_samples", "sfreq", "subject", "label", "token")
    out = {k: a[k].tolist() for k in cols}
    out["channels"] = [
        list(zip(idx.channels(i), idx.channel_types(i), strict=True)) for i in range(len(idx))
    ]
    out["events"] = [
        [(e.onset_s, e.offset_s, e.label) for e in idx.events(i)] for i in range(len(idx))
    ]
    out["errors"] = idx.errors
    return out


def test_the_split_fif_fixture_has_two_parts(local):
    parts = sorted(p.name for p in (local / "ds9" / "sub-03" / "meg").glob("*.fif"))
    assert parts == ["sub-03_task-noise_split-01_meg.fif", "sub-03_task-noise_split-02_meg.fif"]


def test_bids_index_from_s3_equals_the_local_index(local, s3, tmp_path):
    here = build_index(local / "ds9", tmp_path / "local.npz", cfg(), progress=False).index
    res = build_index(URL, tmp_path / "s3.npz", cfg(), progress=False)
    remote = Index.load(tmp_path / "s3.npz")
    assert content(remote) == content(here)
    assert remote.path.tolist() == [
        "sub-01/eeg/sub-01_task-rest_eeg.edf",
        "sub-02/eeg/sub-02_task-rest_eeg.vhdr",
        "sub-03/meg/sub-03_task-noise_split-01_meg.fif",
    ]
    # The sidecars were read: events from events.tsv, C4 bad from channels.tsv, labels.
    assert [e.label for e in remote.events(0)] == ["left", "right"]
    assert dict(zip(remote.channels(1), remote.channel_types(1), strict=True))["C4"] == BAD_TYPE
    assert remote.label.tolist() == ["patient", "control", "control"]
    # The MEG recording is both parts: 200 s, not the first part's share of it.
    assert int(remote.n_samples[2]) == 200_000
    assert res.n_read == 3 and s3.requests["PUT"] == 0


def test_recordings_fetched_whole_are_read_a_batch_at_a_time(local, s3, tmp_path, monkeypatch):
    """One recording per batch (the bound is 2 GiB): the same index, each batch's parts removed
    from local disk before the next batch is fetched."""
    from brainpipe.index import remote as index_remote

    monkeypatch.setattr(index_remote, "WHOLE_BATCH_BYTES", 1)
    parts = {".eeg", ".vhdr", ".vmrk", ".fif"}
    on_disk: list[list[str]] = []  # recording parts present as each fetch starts
    fetch = index_remote.ObjectStore.fetch_into

    def watched(store, objs, into):
        on_disk.append([p.name for p in Path(into).rglob("*") if p.suffix in parts])
        return fetch(store, objs, into)

    monkeypatch.setattr(index_remote.ObjectStore, "fetch_into", watched)
    here = build_index(local / "ds9", tmp_path / "local.npz", cfg(), progress=False).index
    build_index(URL, tmp_path / "s3.npz", cfg(), progress=False)
    assert content(Index.load(tmp_path / "s3.npz")) == content(here)
    # sidecars, the header-read EDF, then the BrainVision and the split FIF one batch each
    assert on_disk == [[], [], [], []]


@pytest.mark.parametrize(
    "extra",
    [
        ["corpus.extensions=[.edf, .vhdr]"],
        ["corpus.extensions=[.fif]", "preprocess.montage=meg", "preprocess.sfreq=200"],
    ],
    ids=["eeg", "meg"],
)
def test_bids_cache_from_s3_equals_the_local_cache(local, s3, tmp_path, extra):
    c = cfg(*extra)
    build_index(local / "ds9", tmp_path / "local.npz", c, progress=False)
    build_cache(tmp_path / "local.npz", tmp_path / "local.h5", c, workers=1, progress=False)
    build_index(URL, tmp_path / "s3.npz", c, progress=False)
    s3.reset_counters()
    res = build_cache(tmp_path / "s3.npz", tmp_path / "s3.h5", c, workers=2, progress=False)
    assert res.n_skipped == 0, res.skipped
    got, want = cache_windows(tmp_path / "s3.h5"), cache_windows(tmp_path / "local.h5")
    assert got.keys() == want.keys() and len(got) > 0
    for k, x in want.items():
        np.testing.assert_array_equal(got[k], x, err_msg=str(k))
    assert s3.requests["PUT"] == 0 and s3.requests["DELETE"] == 0
    report = verify_cache(tmp_path / "s3.h5", n_windows=4)
    assert report.ok, report.problems  # verify fetches every part of a recording again


def test_an_edit_to_any_object_of_a_recording_rereads_it(local, s3, tmp_path):
    out = tmp_path / "s3.npz"
    first = build_index(URL, out, cfg(), progress=False)
    assert build_index(URL, out, cfg(), progress=False).n_reused == len(first.index)
    ds = local / "ds9"
    events = "sub-01/eeg/sub-01_task-rest_events.tsv"
    data = "sub-02/eeg/sub-02_task-rest_eeg.eeg"
    edited = tmp_path / "events.tsv"
    lines = (ds / events).read_text().splitlines()
    edited.write_text("\n".join(lines[:2]) + "\n")  # the header and the first event only
    flipped = tmp_path / "data.eeg"
    flipped.write_bytes((ds / data).read_bytes()[::-1])  # same size, new content
    c = s3.client()
    try:
        c.upload_file(str(edited), BUCKET, f"ds9/{events}")
        c.upload_file(str(flipped), BUCKET, f"ds9/{data}")
        time.sleep(0.01)
        again = build_index(URL, out, cfg(), progress=False)
        assert (again.n_read, again.n_reused) == (2, 1)
        assert [e.label for e in Index.load(out).events(0)] == ["left"]
    finally:
        c.upload_file(str(ds / events), BUCKET, f"ds9/{events}")
        c.upload_file(str(ds / data), BUCKET, f"ds9/{data}")


def test_a_missing_part_skips_the_recording_with_one_line(local, s3, tmp_path):
    gone = "sub-02/eeg/sub-02_task-rest_eeg.eeg"  # the header names it; mne sizes the data by it
    s3.client().delete_object(Bucket=BUCKET, Key=f"ds9/{gone}")
    try:
        res = build_index(URL, tmp_path / "s3.npz", cfg(), progress=False)
    finally:
        s3.client().upload_file(str(local / "ds9" / gone), BUCKET, f"ds9/{gone}")
    ((path, reason),) = [tuple(e.values()) for e in res.index.errors]
    assert path == "sub-02/eeg/sub-02_task-rest_eeg.vhdr"
    assert "\n" not in reason and "brainpipe-index-" not in reason, reason
    assert "sub-02_task-rest_eeg.eeg" in reason


def test_a_prefix_that_is_not_a_bids_root_is_one_line_naming_it(local, s3, tmp_path):
    with pytest.raises(BrainpipeError) as e:
        build_index(f"{URL}/sub-01", tmp_path / "x.npz", cfg(), progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{URL}/sub-01: not a BIDS dataset root") and "\n" not in msg
