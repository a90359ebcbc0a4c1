"""`index` and `build-cache` with the raw corpus in object storage: a real S3 server on loopback.

A synthetic TUSZ corpus (EDF + `.csv_bi`/`.csv` annotations) is written locally and uploaded;
everything read through s3:// must equal what the local copy gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import cache_windows, sleep_edf_tree
from s3server import S3Server, use_s3

from brainpipe.cache import build_cache, verify_cache
from brainpipe.cli import main
from brainpipe.config import load_config
from brainpipe.index import build_index
from brainpipe.indexfile import Index

SMOKE = Path(__file__).parents[1] / "configs" / "smoke.yaml"
BUCKET = "corpus"
URL = f"s3://{BUCKET}/tusz"
# TUSZ layout, referential montage, no class check (a 4-subject corpus may lack seizure windows).
OVERRIDES = ["corpus.layout=tusz", "cache.task=none", "cache.workers=1"]


def cfg():
    return load_config(SMOKE, OVERRIDES)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("s3stages")
    argv = ["synth", "--layout", "tusz", "--out", str(d / "raw"), "--n-subjects", "4"]
    assert main([*argv, "--duration", "20", "40", "--seed", "2"]) == 0
    build_index(d / "raw", d / "local.npz", cfg(), progress=False)
    build_cache(d / "local.npz", d / "local.h5", cfg(), workers=1, progress=False)
    return d


@pytest.fixture(scope="module")
def server(local):
    with S3Server() as s3:
        s3.upload_tree(local / "raw", BUCKET, "tusz")
        yield s3


@pytest.fixture
def s3(server, monkeypatch) -> S3Server:
    use_s3(monkeypatch, server)
    server.fail_next_gets(0)
    server.reset_counters()
    return server


def content(idx: Index) -> dict:
    """What an index says about the recordings, without file times."""
    a = idx.arrays
    cols = ("path", "size", "format", "n_samples", "sfreq", "duration_s", "start", "subject")
    out = {k: a[k].tolist() for k in cols}
    out["channels"] = [idx.channels(i) for i in range(len(idx))]
    out["events"] = [
        [(e.onset_s, e.offset_s, e.label) for e in idx.events(i)] for i in range(len(idx))
    ]
    out["errors"] = idx.errors
    return out


def test_index_from_s3_equals_the_local_index(local, s3, tmp_path, capsys):
    out = tmp_path / "s3.npz"
    argv = ["index", "--raw", URL, "--index", str(out), "--config", str(SMOKE)]
    assert main([*argv, *(x for o in OVERRIDES for x in ("--set", o))]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    remote, here = Index.load(out), Index.load(local / "local.npz")
    assert remote.raw_root == URL
    assert content(remote) == content(here)
    assert any(idx.events(i) for idx in (remote,) for i in range(len(idx)))  # annotations read
    # Headers by range reads: a fraction of the corpus crossed the wire, and the line says so.
    corpus_bytes = sum(p.stat().st_size for p in (local / "raw").rglob("*") if p.is_file())
    assert s3.body_bytes["GET"] < corpus_bytes / 5
    assert f"from {URL}" in line and " MB in " in line
    assert s3.requests["PUT"] == 0 and s3.requests["POST"] == 0


def test_reindex_rereads_only_a_changed_object(local, s3, tmp_path):
    out = tmp_path / "s3.npz"
    first = build_index(URL, out, cfg(), progress=False)
    assert first.n_read == len(first.index)
    again = build_index(URL, out, cfg(), progress=False)
    assert (again.n_read, again.n_reused, again.written) == (0, len(first.index), False)
    # Replace one recording with another recording's bytes: same key, new size and ETag.
    idx = first.index
    a, b = str(idx.path[0]), str(idx.path[1])
    s3.client().upload_file(str(local / "raw" / b), BUCKET, f"tusz/{a}")
    try:
        third = build_index(URL, out, cfg(), progress=False)
        assert (third.n_read, third.n_reused) == (1, len(idx) - 1)
        new = Index.load(out)
        i = new.path.tolist().index(a)
        assert int(new.size[i]) == (local / "raw" / b).stat().st_size
    finally:
        s3.client().upload_file(str(local / "raw" / a), BUCKET, f"tusz/{a}")


def test_build_cache_from_s3_equals_the_local_cache(local, s3, tmp_path):
    build_index(URL, tmp_path / "s3.npz", cfg(), progress=False)
    s3.reset_counters()
    res = build_cache(tmp_path / "s3.npz", tmp_path / "s3.h5", cfg(), workers=2, progress=False)
    got, want = cache_windows(tmp_path / "s3.h5"), cache_windows(local / "local.h5")
    assert got.keys() == want.keys() and res.n_skipped == 0
    for k, x in want.items():
        np.testing.assert_array_equal(got[k], x, err_msg=str(k))
    # One GET per recording, the bucket never written.
    n = len(Index.load(tmp_path / "s3.npz"))
    assert s3.requests["GET"] == n and s3.requests["PUT"] == 0 and s3.requests["DELETE"] == 0
    assert res.raw_bytes == s3.body_bytes["GET"]
    # verify re-reads windows from the bucket the index names.
    report = verify_cache(tmp_path / "s3.h5", n_windows=3)
    assert report.ok and report.checked_windows == 3, report.problems


def test_build_cache_retries_and_skips_a_recording_that_keeps_failing(local, s3, tmp_path):
    build_index(URL, tmp_path / "s3.npz", cfg(), progress=False)
    idx = Index.load(tmp_path / "s3.npz")
    gone = str(idx.path[0])
    s3.fail_next_gets(2)  # transient: the retries get through
    s3.client().delete_object(Bucket=BUCKET, Key=f"tusz/{gone}")
    try:
        res = build_cache(tmp_path / "s3.npz", tmp_path / "s3.h5", cfg(), workers=1, progress=False)
    finally:
        s3.client().upload_file(str(local / "raw" / gone), BUCKET, f"tusz/{gone}")
    assert res.n_written == len(idx) - 1
    ((path, reason),) = res.skipped
    assert path == gone and reason.startswith("fetch failed") and "\n" not in reason
    assert s3.requests["GET"] >= len(idx) + 2


def test_the_index_records_the_url_root_without_credentials():
    from brainpipe.index import raw_root_of

    assert raw_root_of("s3://KEY:secret@corpus/tusz/") == "s3://corpus/tusz"
    assert raw_root_of(URL + "/") == URL


def test_sleep_edf_hypnograms_pair_with_their_recordings_from_s3(s3, tmp_path):
    """Sleep-EDF (PhysioNet's open bucket has it): each hypnogram, an annotation-only EDF+, is
    found by its header's range read and read whole with its recording, as from a local tree."""
    local_root = tmp_path / "sleep-cassette"
    sleep_edf_tree(local_root)
    s3.upload_tree(local_root, BUCKET, "sleep")
    c = load_config(None, ['corpus.event_labels={"Sleep stage W": "W", "Sleep stage R": "REM"}'])
    here = build_index(local_root, tmp_path / "local.npz", c, progress=False).index
    res = build_index(f"s3://{BUCKET}/sleep", tmp_path / "s3.npz", c, progress=False)
    remote = res.index
    assert remote.path.tolist() == ["SC4001E0-PSG.edf", "SC4012E0-PSG.edf"] and not remote.errors
    for i in range(2):
        got, want = remote.event_table(i), here.event_table(i)
        assert got.keys() == want.keys() and len(want["onset_s"]) > 0
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert remote.event_table(1)["label"].tolist() == ["W", "REM"]
    # A changed hypnogram re-reads its recording only.
    assert build_index(f"s3://{BUCKET}/sleep", tmp_path / "s3.npz", c, progress=False).n_read == 0
    import edfio

    hyp = tmp_path / "SC4012EC-Hypnogram.edf"
    edfio.Edf([], annotations=[edfio.EdfAnnotation(0.0, 120.0, "Sleep stage W")]).write(hyp)
    s3.client().upload_file(str(hyp), BUCKET, "sleep/SC4012EC-Hypnogram.edf")
    again = build_index(f"s3://{BUCKET}/sleep", tmp_path / "s3.npz", c, progress=False)
    assert (again.n_read, again.n_reused) == (1, 1)
    assert Index.load(tmp_path / "s3.npz").event_table(1)["description"].tolist() == [
        "Sleep stage W"
    ]


def test_tuev_rec_files_are_read_from_s3_as_from_a_local_tree(s3, tmp_path):
    """TUEV: each recording's .rec comes with it from object storage; the events table equals
    the local one, and a changed .rec re-reads its recording only."""
    from brainpipe.synthetic import make_corpus

    corpus = make_corpus(tmp_path / "tuev", "tuev", n_subjects=3, seed=4, duration_s=(20, 25))
    s3.upload_tree(tmp_path / "tuev", BUCKET, "tuev")
    c = load_config(Path(__file__).parents[1] / "configs" / "tuev.yaml")
    here = build_index(tmp_path / "tuev", tmp_path / "local.npz", c, progress=False).index
    remote = build_index(f"s3://{BUCKET}/tuev", tmp_path / "s3.npz", c, progress=False).index
    assert sorted(remote.path.tolist()) == sorted(corpus.paths) and not remote.errors
    assert remote.path.tolist() == here.path.tolist()
    for i in range(len(here)):
        got, want = remote.event_table(i), here.event_table(i)
        assert len(want["onset_s"]) > 0
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    rel = str(here.path[0]).removesuffix(".edf") + ".rec"
    edited = tmp_path / "edited.rec"
    edited.write_text("0,1.0,2.0,1\n")
    s3.client().upload_file(str(edited), BUCKET, f"tuev/{rel}")
    again = build_index(f"s3://{BUCKET}/tuev", tmp_path / "s3.npz", c, progress=False)
    assert (again.n_read, again.n_reused) == (1, len(here) - 1)
    after = Index.load(tmp_path / "s3.npz")
    row = after.path.tolist().index(str(here.path[0]))
    assert after.event_table(row)["description"].tolist() == ["spsw"]
