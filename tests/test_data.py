"""Cache datasets, samplers and the batch ring: reads, splits, sampling, augmentation, pairs, real DataLoaders.

`helpers.make_cache` writes the small real caches these tests read, with the cache format's own
writer; its signal is noise, plus a 6 Hz rhythm in class-1 recordings so that a model can learn
the labels.
"""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import SFREQ, make_cache, small_config

from brainpipe.cachefile import STATUS_DONE, STATUS_SKIPPED, CacheReader
from brainpipe.datasets import (
    CacheWindowDataset,
    SubjectPairDataset,
    subject_keys,
    window_table,
)
from brainpipe.errors import BrainpipeError
from brainpipe.ring import BatchRing, RingBatchSampler, RingSlot, collate_batch
from brainpipe.samplers import (
    SubjectPairSampler,
    WindowBatchSampler,
    carve_validation,
    class_balanced_weights,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("cache") / "cache.h5")


@pytest.fixture(scope="module")
def reader(cache) -> CacheReader:
    return CacheReader(cache)


# ---------------------------------------------------------------------------------------------
# Windows and reads
# ---------------------------------------------------------------------------------------------


def test_dataset_reads_the_windows_the_table_names(reader):
    ds = CacheWindowDataset(reader, "train")
    assert len(ds) == int(
        (reader.recordings["split"][reader.windows["recording"]] == "train").sum()
    )
    idx = np.array([0, 5, len(ds) - 1, 5])
    x, y = ds.__getitems__(idx)
    assert x.dtype == np.float16 and x.shape == (4, reader.window_samples, reader.n_channels)
    assert y.dtype == np.int64
    for k, i in enumerate(idx):
        np.testing.assert_array_equal(x[k], reader.read(int(ds.start[i]), reader.window_samples))
        assert y[k] == reader.recordings["label"][ds.recording[i]]
    xi, yi = ds[5]
    np.testing.assert_array_equal(xi, x[1])
    assert yi == y[1]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_split_and_label_selection(cache, tmp_path):
    ev = CacheWindowDataset(cache, "eval")
    assert set(ev.reader.recordings["split"][ev.recording]) == {"eval"}
    everything = CacheWindowDataset(cache)
    assert len(everything) == len(ev) + len(CacheWindowDataset(cache, "train"))
    # Unlabelled recordings (-1) are left out unless asked for.
    path = make_cache(tmp_path / "c.h5", [("a", "train", -1), ("b", "train", 1)])
    assert set(CacheWindowDataset(path).label.tolist()) == {1}
    assert set(CacheWindowDataset(path, labelled_only=False).label.tolist()) == {-1, 1}


def test_skipped_recordings_have_no_windows(tmp_path):
    status = np.array([STATUS_DONE, STATUS_SKIPPED, STATUS_DONE, STATUS_DONE], np.uint8)
    path = make_cache(tmp_path / "c.h5", [("a", "train", 0), ("b", "train", 1)], status=status)
    reader = CacheReader(path)
    for window_s in (None, 3.0):  # the cache's table and a recomputed one
        ds = CacheWindowDataset(reader, window_s=window_s)
        assert 1 not in set(ds.recording.tolist())
        assert len(ds) > 0


def test_rewindowing_matches_a_build_with_that_window(tmp_path):
    built = CacheReader(
        make_cache(
            tmp_path / "a.h5", cfg=small_config("window.seconds=3", "window.stride_seconds=1")
        )
    )
    other = CacheReader(make_cache(tmp_path / "b.h5", cfg=small_config()))
    mine = window_table(other, window_s=3.0, stride_s=1.0)
    ref = built.windows
    np.testing.assert_array_equal(mine["recording"], ref["recording"])
    np.testing.assert_array_equal(mine["start"], ref["start"])
    np.testing.assert_array_equal(mine["label"], ref["label"])
    assert mine["window_samples"] == 150 and mine["stride_samples"] == 50
    ds = CacheWindowDataset(other, window_s=3.0, stride_s=1.0)
    assert ds.__getitems__([0])[0].shape == (1, 150, other.n_channels)
    # Starts stay inside their recordings.
    r = other.recordings
    assert (ds.start >= r["offset"][ds.recording]).all()
    assert (ds.start + 150 <= r["offset"][ds.recording] + r["length"][ds.recording]).all()


def test_tusz_rewindowing_labels_from_events(tmp_path):
    cfg = small_config()
    events = {
        "recording": np.array([0, 2]),
        "onset_s": np.array([4.0, 10.0]),
        "offset_s": np.array([9.0, 14.0]),
        "label": np.array(["seiz", "seiz"]),
    }
    path = make_cache(
        tmp_path / "c.h5",
        [("a", "train", -1), ("b", "train", -1)],
        cfg=cfg,
        label_names=("bckg", "seiz"),
        events=events,
    )
    reader = CacheReader(path)
    t = window_table(reader, window_s=1.0, stride_s=1.0, label_overlap=0.5)
    r = reader.recordings
    t_on = (t["start"] - r["offset"][t["recording"]]) / SFREQ
    expect = ((t["recording"] == 0) & (t_on >= 4) & (t_on < 9)) | (
        (t["recording"] == 2) & (t_on >= 10) & (t_on < 14)
    )
    np.testing.assert_array_equal(t["label"] == 1, expect)


def test_rewindowing_follows_the_task_the_cache_records(tmp_path):
    # Seizure labels come from the events because the cache says "seizure", not because its
    # label names look like TUSZ's: the same cache marked "abnormal" labels by recording.
    events = {
        "recording": np.array([0]),
        "onset_s": np.array([4.0]),
        "offset_s": np.array([9.0]),
        "label": np.array(["seiz"]),
    }
    subjects = [("a", "train", 0), ("b", "train", 0)]
    path = make_cache(tmp_path / "c.h5", subjects, label_names=("bckg", "seiz"), events=events)
    assert CacheReader(path).task == "seizure"
    assert window_table(CacheReader(path), window_s=1.0)["label"].max() == 1
    with h5py.File(path, "r+") as f:
        f.attrs["task"] = "abnormal"
    reader = CacheReader(path)
    assert reader.task == "abnormal"
    assert set(window_table(reader, window_s=1.0)["label"].tolist()) == {0}


# ---------------------------------------------------------------------------------------------
# Validation carve-out
# ---------------------------------------------------------------------------------------------


def test_validation_is_subject_disjoint_stratified_and_deterministic(reader):
    train, val = carve_validation(reader, 0.2, seed=0)
    assert not set(train) & set(val)
    names = set(subject_keys(reader)[reader.recordings["split"] == "train"])
    assert set(train) | set(val) == names
    # one subject of each class (5 subjects per class, 20%)
    labels = {
        s: lab
        for s, lab in zip(reader.recordings["subject"], reader.recordings["label"], strict=True)
    }
    assert sorted(labels[s] for s in val) == [0, 1]
    assert np.array_equal(carve_validation(reader, 0.2, seed=0)[1], val)
    assert any(
        not np.array_equal(carve_validation(reader, 0.2, seed=s)[1], val) for s in range(1, 6)
    )
    # Windows follow their subjects: no subject in two datasets.
    ds_t = CacheWindowDataset(reader, "train", subjects=train)
    ds_v = CacheWindowDataset(reader, "train", subjects=val)
    assert not set(ds_t.subjects()) & set(ds_v.subjects())
    assert len(ds_t) + len(ds_v) == len(CacheWindowDataset(reader, "train"))
    assert carve_validation(reader, 0.0)[1].size == 0


def test_validation_does_not_depend_on_the_other_subjects(tmp_path):
    # A keyed hash per subject: adding subjects never moves an existing one across.
    small = CacheReader(make_cache(tmp_path / "a.h5", [(f"s{i}", "train", 0) for i in range(10)]))
    big = CacheReader(make_cache(tmp_path / "b.h5", [(f"s{i}", "train", 0) for i in range(11)]))
    v_small = set(carve_validation(small, 0.3, seed=3)[1])
    v_big = set(carve_validation(big, 0.3, seed=3)[1])
    assert len(v_small) == len(v_big) == 3
    assert v_big - {"s10"} <= v_small
    # sha256-keyed, so this literal holds on any machine and numpy version
    assert v_small == {"s3", "s8", "s9"}


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def test_batch_sampler_epochs_and_ranks():
    s = WindowBatchSampler(103, 10, seed=1)
    a = np.concatenate(list(s))
    assert sorted(a.tolist()) == list(range(103)) and len(s) == 11
    s.set_epoch(1)
    b = np.concatenate(list(s))
    assert not np.array_equal(a, b)
    s.set_epoch(0)
    np.testing.assert_array_equal(np.concatenate(list(s)), a)
    assert len(WindowBatchSampler(103, 10, drop_last=True)) == 10
    # DDP sharding: disjoint and complete up to the wrap-around padding, equal lengths.
    shards = [WindowBatchSampler(103, 8, seed=1, rank=r, world_size=3) for r in range(3)]
    got = [np.concatenate(list(x)) for x in shards]
    assert len({len(g) for g in got}) == 1 and len({len(x) for x in shards}) == 1
    assert set(np.concatenate(got).tolist()) == set(range(103))
    assert sum(len(g) for g in got) == 105
    # Without padding (evaluation): each window exactly once.
    ev = [
        WindowBatchSampler(103, 8, shuffle=False, rank=r, world_size=3, even=False)
        for r in range(3)
    ]
    assert sorted(np.concatenate([np.concatenate(list(x)) for x in ev]).tolist()) == list(
        range(103)
    )
    with pytest.raises(BrainpipeError):
        WindowBatchSampler(10, 2, rank=2, world_size=2)


def test_class_balanced_sampling():
    labels = np.array([0] * 950 + [1] * 50)
    s = WindowBatchSampler(1000, 100, weights=class_balanced_weights(labels), seed=0)
    drawn = labels[np.concatenate(list(s))]
    assert len(drawn) == 1000
    assert 0.4 < drawn.mean() < 0.6
    s2 = WindowBatchSampler(
        1000, 100, weights=class_balanced_weights(labels), seed=0, rank=1, world_size=2
    )
    assert len(np.concatenate(list(s2))) == 500


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------


class Aug:
    random_crop = True
    amplitude_scale = 0.2
    channel_dropout = 0.3


def test_augmentation_is_off_by_default_and_keyed_by_batch(reader):
    plain = CacheWindowDataset(reader, "train")
    assert not plain.augmenting and len(plain.__getitems__([0, 1])) == 2
    ds = CacheWindowDataset(reader, "train", augment=Aug(), seed=4)
    idx = np.arange(0, 64)
    x, y, gain = ds.__getitems__(idx)
    x2, _, gain2 = ds.__getitems__(idx)
    np.testing.assert_array_equal(x, x2)  # a pure function of (seed, indices)
    np.testing.assert_array_equal(gain, gain2)
    assert gain.shape == (64, reader.n_channels) and gain.dtype == np.float32
    dropped = gain == 0
    assert 0.1 < dropped.mean() < 0.5
    kept = gain[~dropped]
    assert kept.min() >= 0.8 - 1e-6 and kept.max() <= 1.2 + 1e-6
    # rows of one window share the scale
    for row, d in zip(gain, dropped, strict=True):
        if (~d).sum() > 1:
            assert np.ptp(row[~d]) < 1e-6
    # crops move windows by less than a stride and stay in the recording
    moved = [not np.array_equal(x[k], plain.__getitems__([k])[0][0]) for k in range(64)]
    assert any(moved)
    r = reader.recordings
    for k in range(64):
        rec = ds.recording[k]
        lo, hi = r["offset"][rec], r["offset"][rec] + r["length"][rec]
        found = [
            s
            for s in range(max(lo, ds.start[k] - 50), min(hi - 100, ds.start[k] + 50) + 1)
            if np.array_equal(reader.read(s, 100), x[k])
        ]
        assert found, k
    other = CacheWindowDataset(reader, "train", augment=Aug(), seed=5).__getitems__(idx)
    assert not np.array_equal(other[2], gain)
    with pytest.raises(BrainpipeError):
        bad = Aug()
        bad.channel_dropout = 1.5
        CacheWindowDataset(reader, augment=bad)


# ---------------------------------------------------------------------------------------------
# Subject pairs
# ---------------------------------------------------------------------------------------------


def test_subject_pairs_hit_the_target_ratio(reader):
    ds = CacheWindowDataset(reader, "train")
    pairs = SubjectPairDataset(ds)
    sampler = SubjectPairSampler(pairs, 64, n_batches=20, same_fraction=0.25, seed=0)
    subj = ds.subjects()
    same_count = 0
    for p in sampler:
        assert p.shape == (64, 2)
        same = subj[p[:, 0]] == subj[p[:, 1]]
        assert same.sum() == 16
        assert (p[same, 0] != p[same, 1]).all()  # two different windows
        same_count += same.sum()
    xa, xb, same = pairs.__getitems__(p)
    assert xa.shape == xb.shape == (64, ds.window_samples, ds.n_channels)
    np.testing.assert_array_equal(same, (subj[p[:, 0]] == subj[p[:, 1]]).astype(np.int64))
    np.testing.assert_array_equal(xb[3], ds[int(p[3, 1])][0])
    # every subject gets drawn (uniform over subjects)
    drawn = np.concatenate([subj[q.ravel()] for q in sampler])
    assert set(drawn) == set(subj)
    # ranks draw different streams; the same epoch replays
    other = SubjectPairSampler(pairs, 64, 20, same_fraction=0.25, seed=0, rank=1, world_size=2)
    assert not np.array_equal(next(iter(other)), next(iter(sampler)))
    np.testing.assert_array_equal(next(iter(sampler)), next(iter(sampler)))
    single = SubjectPairDataset(CacheWindowDataset(reader, "train", subjects=["s00"]))
    with pytest.raises(BrainpipeError):
        SubjectPairSampler(single, 8, 1, same_fraction=0.5)
    assert next(iter(SubjectPairSampler(single, 8, 1, same_fraction=1.0))).shape == (8, 2)


# ---------------------------------------------------------------------------------------------
# Real DataLoaders: pickling, workers, every start method
# ---------------------------------------------------------------------------------------------


def test_dataset_pickles_without_handles(reader):
    ds = CacheWindowDataset(reader, "train", augment=Aug())
    ds.__getitems__([0])  # opens the memmap
    blob = pickle.dumps(ds)
    assert len(blob) < 200_000
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.__getitems__([3, 4])[0], ds.__getitems__([3, 4])[0])


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_dataloader_with_workers(cache, method):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} not available here")
    ds = CacheWindowDataset(cache, "train", augment=Aug(), seed=2)
    sampler = WindowBatchSampler(len(ds), 16, seed=0)
    loader = DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=collate_batch,
        num_workers=2,
        multiprocessing_context=method,
        persistent_workers=True,
    )
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(sampler)
        for b, idx in zip(batches, sampler, strict=True):
            x, y, gain = b
            assert x.dtype == torch.float16 and tuple(x.shape[1:]) == (100, ds.n_channels)
            ref = ds.__getitems__(idx)
            np.testing.assert_array_equal(x.numpy(), ref[0])  # same as in-process
            np.testing.assert_array_equal(y.numpy(), ref[1])
            np.testing.assert_array_equal(gain.numpy(), ref[2])


def test_dataloader_with_plain_batch_size(cache):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    ds = CacheWindowDataset(cache, "eval")
    loader = DataLoader(ds, batch_size=32, collate_fn=collate_batch, num_workers=0)
    xs = [x for x, _ in loader]
    assert sum(len(x) for x in xs) == len(ds)
    assert xs[0].dtype == torch.float16


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_dataloader_through_a_batch_ring(cache, method):
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    ds = CacheWindowDataset(cache, "train", augment=Aug(), seed=2)
    workers, prefetch = 2, 2
    n_slots = BatchRing.slots_for(workers, prefetch)
    ring = BatchRing(n_slots, (16, ds.window_samples, ds.n_channels), ds.reader.dtype)
    ds.ring = ring
    sampler = WindowBatchSampler(len(ds), 16, seed=0)
    loader = DataLoader(
        ds,
        batch_sampler=RingBatchSampler(sampler, n_slots),
        collate_fn=collate_batch,
        num_workers=workers,
        prefetch_factor=prefetch,
        multiprocessing_context=method,
        persistent_workers=True,
    )
    try:
        # Epoch 0 stops early (as with train.max_steps_per_epoch); epoch 1 must not see its
        # leftovers in the ring.
        for epoch, stop in ((0, 3), (1, None)):
            sampler.set_epoch(epoch)
            expected = list(sampler)
            seen = 0
            for k, batch in enumerate(loader):
                token, y, gain = batch
                assert isinstance(token, RingSlot) and token.slot == k % n_slots
                ref = ds.__getitems__(expected[k])
                np.testing.assert_array_equal(token.array(), ref[0])
                np.testing.assert_array_equal(y.numpy(), ref[1])
                np.testing.assert_array_equal(gain.numpy(), ref[2])
                seen += 1
                if stop is not None and seen == stop:
                    break
            assert seen == (stop or len(sampler))
    finally:
        del loader
        ring.close()
    assert not Path("/dev/shm", ring.name).exists()


def test_batch_ring_pickles_by_name():
    ring = BatchRing(3, (2, 5, 4), np.float16)
    ring.array[1] = 7
    clone = pickle.loads(pickle.dumps(ring))
    try:
        assert clone.name == ring.name and clone.array.shape == (3, 2, 5, 4)
        np.testing.assert_array_equal(clone.array[1], 7)
        clone.array[2] = 3  # the same memory
        np.testing.assert_array_equal(ring.array[2], 3)
        assert RingSlot(ring.name, 2, 1).array().shape == (1, 5, 4)
        assert len(pickle.dumps(ring)) < 500
    finally:
        clone.close()
        ring.close()
