"""Shards (`build-cache --shard I/N`) and cache sets, on real caches built by the code."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from brainpipe.cache import build_cache
from brainpipe.cachefile import CacheReader
from brainpipe.cacheset import CacheSetReader, open_cache, shard_of, write_cache_set
from brainpipe.cli import main
from brainpipe.config import load_config
from brainpipe.datasets import CacheWindowDataset
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index
from brainpipe.indexfile import Index
from brainpipe.synthetic import make_corpus

SMOKE = Path(__file__).parents[1] / "configs" / "smoke.yaml"
N = 3


def smoke(*overrides):
    return load_config(SMOKE, list(overrides))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A corpus, its index, the whole cache, and its N shards built by the CLI."""
    d = tmp_path_factory.mktemp("set")
    make_corpus(d / "raw", "tuab", n_subjects=7, seed=5, duration_s=(20.0, 40.0))
    build_index(d / "raw", d / "index.npz", smoke(), progress=False)
    build_cache(d / "index.npz", d / "full.h5", smoke(), workers=1, progress=False)
    for i in range(N):
        argv = ["build-cache", "--index", str(d / "index.npz"), "--config", str(SMOKE)]
        argv += ["--cache", str(d / f"shard-{i}-of-{N}.h5"), "--shard", f"{i}/{N}"]
        assert main([*argv, "--workers", "1"]) == 0
    return d


def shards(d: Path) -> list[Path]:
    return [d / f"shard-{i}-of-{N}.h5" for i in range(N)]


def windows_by_key(reader) -> dict[tuple[str, int], np.ndarray]:
    """Every window's signal keyed by (recording path, start within the recording)."""
    r, w = reader.recordings, reader.windows
    rec = w["recording"]
    local = w["start"] - r["offset"][rec]
    x = reader.read_windows(w["start"], reader.window_samples)
    return {
        (str(r["path"][i]), int(s)): x[k]
        for k, (i, s) in enumerate(zip(rec.tolist(), local.tolist(), strict=True))
    }


def test_shard_assignment_is_stable_whole_subjects_and_balanced():
    subjects = np.array([f"s{k % 40:03d}" for k in range(200)])
    a = shard_of(subjects, 8)
    assert np.array_equal(a, shard_of(subjects.copy(), 8))  # no per-process salt
    for s in np.unique(subjects):
        assert len(set(a[subjects == s].tolist())) == 1
    counts = np.bincount(a, minlength=8)
    assert counts.min() > 0 and counts.max() - counts.min() <= 5  # 5 rows per subject


def test_shards_partition_the_recordings_by_subject(built):
    idx = Index.load(built / "index.npz")
    seen: dict[str, int] = {}
    subject_shard: dict[str, int] = {}
    for i, p in enumerate(shards(built)):
        with CacheReader(p) as r:
            assert r.attrs["shard"] == f"{i}/{N}"
            assert len(r.recordings["path"]) > 0
            for path, subj in zip(r.recordings["path"], r.recordings["subject"], strict=True):
                assert path not in seen
                seen[path] = i
                assert subject_shard.setdefault(subj, i) == i, f"subject {subj} split"
    assert sorted(seen) == sorted(idx.path.tolist())


def test_union_of_shards_is_the_full_cache(built):
    parts: dict = {}
    for p in shards(built):
        with CacheReader(p) as r:
            parts.update(windows_by_key(r))
    with CacheReader(built / "full.h5") as full:
        whole = windows_by_key(full)
    assert parts.keys() == whole.keys()
    for k, x in whole.items():
        np.testing.assert_array_equal(parts[k], x, err_msg=str(k))


def test_a_set_reads_like_the_full_cache(built, tmp_path):
    out = built / "set.json"
    argv = ["cache-set", "--out", str(out), *map(str, shards(built))]
    assert main(argv) == 0
    manifest = json.loads(out.read_text())
    assert manifest["format_version"] == 1
    assert [m["path"] for m in manifest["members"]] == [p.name for p in shards(built)]
    with open_cache(out) as s, CacheReader(built / "full.h5") as full:
        assert isinstance(s, CacheSetReader)
        assert s.channels == full.channels and s.sfreq == full.sfreq and s.task == full.task
        assert len(s.windows["start"]) == len(full.windows["start"])
        got, want = windows_by_key(s), windows_by_key(full)
        assert got.keys() == want.keys()
        for k, x in want.items():
            np.testing.assert_array_equal(got[k], x, err_msg=str(k))
        # Joined tables keep their cross references: events point at their own recording.
        assert sorted(s.recordings["path"][s.events["recording"]].tolist()) == sorted(
            full.recordings["path"][full.events["recording"]].tolist()
        )
        summ = s.summary()
        assert summ["n_windows"] == full.summary()["n_windows"]
        assert summ["labels"] == full.summary()["labels"]
        assert len(summ["members"]) == N


def test_dataset_inspect_and_verify_take_a_set(built, capsys):
    out = built / "set-ds.json"
    write_cache_set(out, shards(built))
    ds = CacheWindowDataset(out, "train")
    ds2 = pickle.loads(pickle.dumps(ds))  # DataLoader workers get it pickled
    x, y = ds2[0]
    full = CacheWindowDataset(built / "full.h5", "train")
    assert len(ds) == len(full) and ds.n_channels == full.n_channels
    assert np.asarray(x).shape == np.asarray(full[0][0]).shape
    assert main(["inspect", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["kind"] == "cache set" and len(s["members"]) == N
    assert main(["verify", str(out), "--n-windows", "2"]) == 0
    assert "OK" in capsys.readouterr().out


def test_a_missing_or_changed_member_is_named(built, tmp_path):
    d = tmp_path / "moved"
    d.mkdir()
    for p in shards(built):
        shutil.copy2(p, d / p.name)
    out = d / "set.json"
    write_cache_set(out, [d / p.name for p in shards(built)])
    CacheSetReader(out).close()  # a copy of the directory still reads
    (d / "shard-1-of-3.h5").unlink()
    with pytest.raises(BrainpipeError, match=r"member shard-1-of-3.h5 is missing"):
        CacheSetReader(out)
    # A member cut short (a partial copy) is refused by name, not read as zeros.
    m0 = d / "shard-0-of-3.h5"
    size = m0.stat().st_size
    with open(m0, "r+b") as f:
        f.truncate(size - 4096)
    with pytest.raises(BrainpipeError, match=r"member shard-0-of-3.h5 changed since"):
        CacheSetReader(out)
    shutil.copy2(built / "shard-0-of-3.h5", m0)
    # Another finished cache under a member's name is not the member the set was written with.
    shutil.copy2(built / "shard-0-of-3.h5", d / "shard-1-of-3.h5")
    with pytest.raises(BrainpipeError, match=r"member shard-1-of-3.h5 changed since"):
        CacheSetReader(out)


def test_members_that_disagree_are_refused_in_one_line(built, tmp_path):
    other = tmp_path / "other.h5"
    cfg = smoke("preprocess.sfreq=80", "preprocess.h_freq=30")
    build_cache(built / "index.npz", other, cfg, workers=1, progress=False, shard=(0, N))
    with pytest.raises(BrainpipeError) as e:
        write_cache_set(tmp_path / "set.json", [shards(built)[1], other])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{other}: does not fit the set: sfreq is 80.0")
    # Same rate and channels, other filters: not the same preprocessing either.
    build_cache(
        built / "index.npz", tmp_path / "hp.h5", smoke("preprocess.l_freq=1.0"),
        workers=1, progress=False, shard=(0, N),
    )  # fmt: skip
    with pytest.raises(
        BrainpipeError, match=r"hp.h5: does not fit the set: preprocess.l_freq is 1.0, .* has 0.5$"
    ):
        write_cache_set(tmp_path / "set.json", [shards(built)[1], tmp_path / "hp.h5"])


def test_a_shard_outside_the_subjects_fails_in_one_line(built, tmp_path, capsys):
    argv = ["build-cache", "--index", str(built / "index.npz"), "--config", str(SMOKE)]
    argv += ["--cache", str(tmp_path / "x.h5"), "--shard", "99/100"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "no subject falls in this shard, the index has 7 subjects" in err
    assert main([*argv[:-1], "3/3"]) == 1
    assert "need 0 <= I < N" in capsys.readouterr().err


def test_train_takes_a_set(built, tmp_path):
    from brainpipe.training.train import train

    out = built / "set-train.json"
    write_cache_set(out, shards(built))
    cfg = smoke(
        "train.model_kwargs={n_filters_time: 8, n_filters_spat: 8, pool_time_length: 10, pool_time_stride: 5}",
        "train.epochs=1",
        "train.batch_size=32",
        "train.num_workers=0",
        "train.val_fraction=0",
    )
    summary = train(out, tmp_path / "run", cfg)
    assert summary["cache"] == str(out) and summary["epochs"] == 1
    with open_cache(out) as s:
        train_windows = int((s.recordings["split"][s.windows["recording"]] == "train").sum())
    assert summary["windows"]["train"] == train_windows
