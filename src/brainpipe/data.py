"""Datasets and samplers, free of torch so every stage can import them.

They are map-style datasets by duck typing (`__len__`, `__getitem__`, `__getitems__`), which is
all `torch.utils.data.DataLoader` needs, and they pickle (no open file handles in their state), so
they work with `num_workers > 0` under the fork, spawn and forkserver start methods.

No start-up path builds per-window Python objects: windows are computed with vectorized numpy
from per-recording lengths, and `__getitem__` maps an index to (recording, offset) with
`np.searchsorted`.

    ds = EdfWindowDataset("data/index.npz", window_s=10.0, stride_s=5.0, channels=STANDARD_1020)
    x, y = ds[123]          # float32 (19, 10 * sfreq) in Volts, recording label (or -1)

From the cache, whole batches at a time (the DataLoader hands `__getitems__` the sampler's list of
indices, so Python overhead is per batch, not per window):

    reader = CacheReader("data/cache.h5")
    train_subjects, val_subjects = carve_validation(reader, fraction=0.2, seed=0)
    ds = CacheWindowDataset(reader, "train", subjects=train_subjects, window_s=4.0)
    sampler = WindowBatchSampler(len(ds), batch_size=256, seed=0, rank=0, world_size=1)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_batch, num_workers=4)
    for x, y in loader:     # x: float16 (B, n_samples, n_channels), time-major as stored
        ...                 # move to the GPU, then transpose and convert there

    pairs = SubjectPairDataset(ds)
    loader = DataLoader(pairs, batch_sampler=SubjectPairSampler(pairs, 256, n_batches=1000),
                        collate_fn=collate_batch)   # (xa, xb, same_subject)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from brainpipe.cachefile import STATUS_DONE, CacheReader, compute_windows
from brainpipe.corpus import TUSZ_LABELS
from brainpipe.errors import BrainpipeError


def window_counts(
    n_samples: np.ndarray, window: np.ndarray | int, stride: np.ndarray | int
) -> np.ndarray:
    """Windows per recording: floor((n - window) / stride) + 1, or 0 when n < window."""
    n_samples = np.asarray(n_samples, dtype=np.int64)
    counts = (n_samples - window) // stride + 1
    return np.where(n_samples >= window, counts, 0).astype(np.int64)


class EdfWindowDataset:
    """Windows straight from raw EDF/BDF files through an index: no cache needed.

    For quick experiments. Init is O(recordings) numpy; `ds[i]` reads one header per recording
    (cached per process) and then only the bytes of that window.

    Recordings whose rate differs from `sfreq` (default: the index's most common rate) are left
    out, so every window has the same shape. Recordings lacking any of `channels` are left out too
    (`excluded` lists both with reasons).
    """

    def __init__(
        self,
        index,
        window_s: float,
        stride_s: float | None = None,
        channels: Sequence[str] | None = None,
        sfreq: float | None = None,
        split: str | None = None,
        raw_root: str | os.PathLike | None = None,
        label_names: Sequence[str] | None = None,
    ):
        from brainpipe.indexfile import Index

        if not isinstance(index, Index):
            index = Index.load(index)
        if window_s <= 0 or (stride_s is not None and stride_s <= 0):
            raise BrainpipeError(f"window_s={window_s}, stride_s={stride_s}: both must be > 0")
        a = index.arrays
        n = len(index)
        rates = a["sfreq"]
        if sfreq is None:
            vals, counts = (
                np.unique(rates, return_counts=True) if n else (np.array([0.0]), np.array([1]))
            )
            sfreq = float(vals[np.argmax(counts)])
        self.sfreq = float(sfreq)
        self.window = int(round(window_s * self.sfreq))
        self.stride = int(round((stride_s or window_s) * self.sfreq))
        self.raw_root = str(raw_root or index.raw_root)

        keep = np.isclose(rates, self.sfreq)
        self.excluded: list[tuple[str, str]] = [
            (str(p), f"sample rate {r:g} Hz != {self.sfreq:g} Hz")
            for p, r in zip(a["path"][~keep], rates[~keep], strict=True)
        ]
        if split is not None:
            keep &= a["split"] == split

        chansets = a["chanset"]
        wanted = list(channels) if channels is not None else None
        set_picks, set_ok = (
            index.channel_picks(wanted, self.sfreq)
            if wanted is not None
            else (np.zeros((0, 0), np.int64), None)
        )
        if wanted is not None:
            lacking = keep & ~set_ok[chansets]
            self.excluded += [(str(p), "missing channels") for p in a["path"][lacking]]
            keep &= set_ok[chansets]

        self.recordings = np.flatnonzero(keep)
        self.paths = a["path"][self.recordings]
        self.picks_by_set = set_picks
        self.chanset = chansets[self.recordings]
        self.channels = tuple(channels) if channels is not None else None
        counts = window_counts(a["n_samples"][self.recordings], self.window, self.stride)
        self.cum = np.cumsum(counts)
        labels = a["label"][self.recordings]
        self.label_names = (
            tuple(label_names)
            if label_names is not None
            else tuple(sorted(set(labels.tolist()) - {""}))
        )
        lookup = {name: k for k, name in enumerate(self.label_names)}
        self.labels = (
            np.array([lookup.get(x, -1) for x in labels.tolist()], dtype=np.int64)
            if len(labels)
            else np.zeros(0, np.int64)
        )
        self._headers: dict[int, object] = {}

    def __len__(self) -> int:
        return int(self.cum[-1]) if len(self.cum) else 0

    def locate(self, i: int) -> tuple[int, int]:
        """Window i as (position among kept recordings, start sample)."""
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        r = int(np.searchsorted(self.cum, i, side="right"))
        first = int(self.cum[r - 1]) if r else 0
        return r, (i - first) * self.stride

    def _header(self, r: int):
        h = self._headers.get(r)
        if h is None:
            from brainpipe.edf import read_header

            h = read_header(Path(self.raw_root) / str(self.paths[r]))
            self._headers[r] = h
        return h

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from brainpipe.edf import read_signals

        r, start = self.locate(int(i))
        h = self._header(r)
        if self.channels is None:
            rate_of = [h.sfreq(j) for j in h.signal_indices]
            picks = [
                j
                for j, s in zip(h.signal_indices, rate_of, strict=True)
                if np.isclose(s, self.sfreq)
            ]
        else:
            # index picks count non-annotation signals; map them to the file's signal numbers
            sig = h.signal_indices
            picks = [sig[j] for j in self.picks_by_set[self.chanset[r]]]
        x = read_signals(h, picks, start, start + self.window)
        return x.astype(np.float32, copy=False), int(self.labels[r])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_headers"] = {}
        return state


# ---------------------------------------------------------------------------------------------
# Windows from the cache
# ---------------------------------------------------------------------------------------------


def _open(cache: str | os.PathLike | CacheReader) -> CacheReader:
    return cache if isinstance(cache, CacheReader) else CacheReader(cache)


def seconds_to_samples(seconds: float, sfreq: float, key: str) -> int:
    n = int(round(seconds * sfreq))
    if n < 1:
        raise BrainpipeError(f"{key}={seconds} s is less than one sample at {sfreq:g} Hz")
    return n


def window_table(
    reader: CacheReader,
    window_s: float | None = None,
    stride_s: float | None = None,
    label_overlap: float | None = None,
) -> dict[str, Any]:
    """The window table (`recording`, `start`, `label`) for a window length and stride in seconds.

    The cache's own table when they match the build; otherwise recomputed from the recordings
    table (finished recordings only, TUSZ labels from the events), which needs no rebuild because
    the cache stores continuous signal. O(windows) numpy.
    """
    n = (
        reader.window_samples
        if window_s is None
        else seconds_to_samples(window_s, reader.sfreq, "window.seconds")
    )
    stride = (
        reader.stride_samples
        if stride_s is None
        else seconds_to_samples(stride_s, reader.sfreq, "window.stride_seconds")
    )
    built_overlap = float(reader.attrs.get("label_overlap", 0.5))
    overlap = built_overlap if label_overlap is None else float(label_overlap)
    tusz = tuple(reader.label_names) == TUSZ_LABELS
    same = n == reader.window_samples and stride == reader.stride_samples
    if same and (not tusz or math.isclose(overlap, built_overlap)):
        w = reader.windows
        rec, start, label = w["recording"], w["start"], w["label"]
    else:
        r, ev = reader.recordings, reader.events
        events = (ev["recording"], ev["onset_s"], ev["offset_s"]) if tusz else None
        win = compute_windows(
            r["offset"],
            r["length"],
            n,
            stride,
            r["label"],
            events,
            reader.sfreq,
            r["t0_s"],
            overlap,
            keep=r["status"] == STATUS_DONE,
        )
        rec, start, label = win["recording"], win["start"], win["label"]
    return {
        "recording": np.asarray(rec, dtype=np.int64),
        "start": np.asarray(start, dtype=np.int64),
        "label": np.asarray(label, dtype=np.int64),
        "window_samples": n,
        "stride_samples": stride,
    }


def subject_keys(reader: CacheReader) -> np.ndarray:
    """The subject of each recording; a recording without one counts as its own subject."""
    r = reader.recordings
    subject = r["subject"].astype(str)
    return np.where(subject == "", np.char.add("recording:", r["path"].astype(str)), subject)


def _subject_order(names: Sequence[str], seed: int) -> list[str]:
    # A keyed hash, not a seeded permutation: the same subject lands on the same side for a
    # seed on any machine and whatever other subjects the corpus holds.
    return sorted(names, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())


def carve_validation(
    reader: CacheReader, fraction: float, seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Divide the subjects of `split` into (train, validation) subjects: no subject on both sides.

    Stratified by class (a subject's class is the highest label among its windows and
    recordings, so a TUSZ subject with any seizure counts as a seizure subject): each class gives
    round(fraction * its subjects) to validation, at least one when it has two or more and
    `fraction > 0`, never all of them. Deterministic for `seed` on any machine.
    """
    if not 0 <= fraction < 1:
        raise BrainpipeError(f"validation fraction {fraction}: must be in [0, 1)")
    r = reader.recordings
    keys = subject_keys(reader)
    in_split = (r["split"] == split) & (r["status"] == STATUS_DONE)
    rec_class = r["label"].astype(np.int64).copy()
    w = reader.windows
    if len(w["recording"]):
        np.maximum.at(rec_class, w["recording"].astype(np.int64), w["label"].astype(np.int64))
    names, inverse = np.unique(keys[in_split], return_inverse=True)
    subject_class = np.full(len(names), -1, np.int64)
    np.maximum.at(subject_class, inverse, rec_class[in_split])
    val: list[str] = []
    for c in np.unique(subject_class).tolist():
        group = names[subject_class == c].tolist()
        k = int(round(fraction * len(group)))
        if fraction > 0 and len(group) >= 2:
            k = min(max(k, 1), len(group) - 1)
        elif len(group) < 2:
            k = 0
        val += _subject_order(group, seed)[:k]
    val_set = np.array(sorted(val), dtype=names.dtype)
    train = names[~np.isin(names, val_set)]
    return train, val_set


class CacheWindowDataset:
    """Windows of a brainpipe cache, read a whole batch at a time.

    `ds.__getitems__(indices)` returns `(x, y)`: x float16 `(B, window_samples, n_channels)` —
    time-major, as stored, one memcpy per window from a memmap — and y int64 `(B,)`. Keep x
    float16 up to the device and transpose/convert it there: float16 -> float32 on the CPU runs
    at a fraction of the read speed. `ds[i]` is one row of that.

    Selection: `split` (the corpus's own, e.g. "train"/"eval"; None for all), `subjects` (keep
    only these, see `carve_validation`), labelled windows only unless `labelled_only=False`.
    `window_s`/`stride_s` other than the build's recompute the windows (see `window_table`).

    Augmentation (`augment`: an `AugmentConfig` or anything with `random_crop`,
    `amplitude_scale`, `channel_dropout`; off by default):
      - random_crop: each window start jitters by up to half a stride, within its recording;
      - amplitude_scale a: a per-window gain ~ U(1 - a, 1 + a);
      - channel_dropout p: each channel of each window zeroed with probability p.
    The last two come back as a third element, `gain` float32 `(B, n_channels)`, to multiply
    into x after converting it on the device (float16 arithmetic in numpy runs at ~2k windows/s).
    A batch's augmentation is a pure function of `seed` and its indices, so it is the same with
    any number of workers and after a resume.
    """

    def __init__(
        self,
        cache: str | os.PathLike | CacheReader,
        split: str | None = None,
        *,
        subjects: Collection[str] | None = None,
        window_s: float | None = None,
        stride_s: float | None = None,
        label_overlap: float | None = None,
        labelled_only: bool = True,
        augment: Any = None,
        seed: int = 0,
    ):
        self.reader = _open(cache)
        r = self.reader.recordings
        table = window_table(self.reader, window_s, stride_s, label_overlap)
        self.window_samples = int(table["window_samples"])
        self.stride_samples = int(table["stride_samples"])
        keep_rec = r["status"] == STATUS_DONE
        if split is not None:
            keep_rec &= r["split"] == split
        if subjects is not None:
            keep_rec &= np.isin(subject_keys(self.reader), np.asarray(list(subjects), dtype=str))
        keep = keep_rec[table["recording"]]
        if labelled_only:
            keep &= table["label"] >= 0
        self.split = split
        self.recording = table["recording"][keep]
        self.start = table["start"][keep]
        self.label = table["label"][keep]
        self.seed = int(seed)
        self.random_crop = bool(getattr(augment, "random_crop", False))
        self.amplitude_scale = float(getattr(augment, "amplitude_scale", 0.0) or 0.0)
        self.channel_dropout = float(getattr(augment, "channel_dropout", 0.0) or 0.0)
        if not 0 <= self.amplitude_scale < 1 or not 0 <= self.channel_dropout < 1:
            raise BrainpipeError(
                f"augment.amplitude_scale={self.amplitude_scale} and augment.channel_dropout="
                f"{self.channel_dropout}: both must be in [0, 1)"
            )
        self.ring: BatchRing | None = None  # see BatchRing; set before the DataLoader starts

    # metadata ---------------------------------------------------------------------------------
    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.reader.label_names)

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.reader.channels)

    @property
    def n_channels(self) -> int:
        return int(self.reader.n_channels)

    @property
    def sfreq(self) -> float:
        return float(self.reader.sfreq)

    @property
    def augmenting(self) -> bool:
        return self.random_crop or self.amplitude_scale > 0 or self.channel_dropout > 0

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.label, minlength=len(self.label_names))

    def subjects(self) -> np.ndarray:
        """The subject of each window."""
        return subject_keys(self.reader)[self.recording]

    # reads ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.label)

    def _rng(self, idx: np.ndarray) -> np.random.Generator:
        digest = hashlib.blake2b(idx.tobytes(), digest_size=8).digest()
        return np.random.default_rng([self.seed, int.from_bytes(digest, "little")])

    def __getitems__(self, indices: Sequence[int] | np.ndarray | SlotBatch) -> tuple[Any, ...]:
        if isinstance(indices, SlotBatch):
            # Read straight into a slot of the shared ring and return only the slot's number.
            if self.ring is None:
                raise BrainpipeError("a SlotBatch needs a dataset with a BatchRing (ds.ring)")
            slot, idx = indices.slot, np.asarray(indices.indices, dtype=np.int64)
            out = self.ring.array[slot, : len(idx)]
            x, *rest = self._read(idx, out)
            return (RingSlot(self.ring.name, slot, len(idx)), *rest)
        return self._read(np.asarray(indices, dtype=np.int64), None)

    def _read(self, idx: np.ndarray, out: np.ndarray | None) -> tuple[Any, ...]:
        starts = self.start[idx]
        gain = None
        if self.augmenting:
            rng = self._rng(idx)
            if self.random_crop:
                s = self.stride_samples
                r = self.reader.recordings
                rec = self.recording[idx]
                lo = r["offset"][rec]
                hi = lo + r["length"][rec] - self.window_samples
                starts = np.clip(starts + rng.integers(-(s // 2), s - s // 2, len(idx)), lo, hi)
            if self.amplitude_scale > 0 or self.channel_dropout > 0:
                gain = np.ones((len(idx), self.n_channels), np.float32)
                if self.amplitude_scale > 0:
                    a = self.amplitude_scale
                    gain *= rng.uniform(1 - a, 1 + a, (len(idx), 1)).astype(np.float32)
                if self.channel_dropout > 0:
                    gain *= rng.random(gain.shape) >= self.channel_dropout
        x = self.reader.read_windows(starts, self.window_samples, out=out)
        y = self.label[idx]
        return (x, y) if gain is None else (x, y, gain)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        if not -len(self) <= int(i) < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        batch = self._read(np.array([int(i) % len(self)]), None)
        return tuple(a[0] for a in batch)


# ---------------------------------------------------------------------------------------------
# A shared-memory ring for worker -> main process batches
# ---------------------------------------------------------------------------------------------


class SlotBatch(NamedTuple):
    """What `RingBatchSampler` yields: read these window indices into this slot of the ring."""

    slot: int
    indices: np.ndarray


class RingSlot(NamedTuple):
    """What a dataset returns in place of x when it read into a ring: `ring.array[slot, :n]`."""

    ring: str
    slot: int
    n: int

    def array(self) -> np.ndarray:
        return _RINGS[self.ring].take(self)

    def pin_memory(self, device: Any = None) -> Any:
        """Called by the DataLoader's pin-memory thread: copy the slot into page-locked memory.

        So the copy out of the ring happens in the background, and the slot is free again
        before the batch reaches the training loop.
        """
        import torch

        return torch.from_numpy(self.array()).pin_memory()


# The rings this process has mapped, by name, so a RingSlot can find its memory.
_RINGS: dict[str, BatchRing] = {}


class BatchRing:
    """Slots of shared memory that DataLoader workers read batches into, reused round-robin.

    torch's DataLoader moves every batch a worker returns through a fresh shared-memory segment:
    an allocation and a page fault per 4 KiB page each time, measured here at ~40 ms for a batch of
    256 x 2,000 x 21 float16 against ~5 ms to read it from the cache, which caps a worker at ~6k
    windows/s. With a ring, a worker reads the windows straight into a slot that every process
    has mapped since start-up and returns only `RingSlot(slot, n)`; the consumer takes
    `token.array()`, or, with `pin_memory=True`, gets it already copied into page-locked memory by
    the DataLoader's pin-memory thread (`RingSlot.pin_memory`), ready for an asynchronous copy to
    the GPU.

    Slot k of an epoch is reused by batch k + n_slots. A DataLoader has at most
    `num_workers * prefetch_factor` batches in flight, so with `n_slots` two above that
    (`slots_for`) a batch stays intact while the consumer takes the next one: use it (or copy
    it) before then. Pinned batches are copies and have no such limit.
    Pickles by name (spawn/forkserver workers attach; fork workers inherit the mapping).
    """

    def __init__(self, n_slots: int, shape: Sequence[int], dtype: Any = np.float16):
        from multiprocessing import shared_memory

        self.n_slots, self.shape, self.dtype = (
            int(n_slots),
            tuple(int(v) for v in shape),
            np.dtype(dtype),
        )
        self.nbytes = self.n_slots * int(np.prod(self.shape)) * self.dtype.itemsize
        self._shm = shared_memory.SharedMemory(create=True, size=max(self.nbytes, 1))
        self._owner = True
        self.name = self._shm.name
        self.array = np.ndarray((self.n_slots, *self.shape), self.dtype, buffer=self._shm.buf)
        _RINGS[self.name] = self

    @staticmethod
    def slots_for(num_workers: int, prefetch_factor: int) -> int:
        return num_workers * prefetch_factor + 2

    def __getstate__(self) -> dict[str, Any]:
        return {
            "name": self._shm.name,
            "n_slots": self.n_slots,
            "shape": self.shape,
            "dtype": self.dtype.str,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        import sys
        from multiprocessing import resource_tracker, shared_memory

        self.n_slots, self.shape, self.dtype = (
            state["n_slots"],
            tuple(state["shape"]),
            np.dtype(state["dtype"]),
        )
        self.nbytes = self.n_slots * int(np.prod(self.shape)) * self.dtype.itemsize
        if sys.version_info >= (3, 13):
            self._shm = shared_memory.SharedMemory(name=state["name"], track=False)
        else:
            self._shm = shared_memory.SharedMemory(name=state["name"])
            # Before 3.13 attaching registers the segment for removal when this process's
            # tracker shuts down, as if this process owned it.
            resource_tracker.unregister(self._shm._name, "shared_memory")  # type: ignore[attr-defined]
        self._owner = False
        self.name = self._shm.name
        self.array = np.ndarray((self.n_slots, *self.shape), self.dtype, buffer=self._shm.buf)
        _RINGS[self.name] = self

    def take(self, token: RingSlot) -> np.ndarray:
        return self.array[token.slot, : token.n]

    def close(self) -> None:
        """Unmap (once no view is left) and, in the creating process, remove the segment."""
        _RINGS.pop(self.name, None)
        self.array = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):  # a live view keeps the mapping; unlink anyway
            self._shm.close()
        if self._owner:
            self._owner = False
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()


class RingBatchSampler:
    """Wrap a batch sampler so each batch of indices comes with its ring slot (see BatchRing)."""

    def __init__(self, batch_sampler: Any, n_slots: int):
        self.batch_sampler, self.n_slots = batch_sampler, n_slots

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[SlotBatch]:
        for k, idx in enumerate(self.batch_sampler):
            yield SlotBatch(k % self.n_slots, np.asarray(idx, dtype=np.int64))


def apply_gain(x: np.ndarray, gain: np.ndarray | None) -> np.ndarray:
    """Host-side version of what the trainer does on the device: float32 x, gain applied."""
    x = x.astype(np.float32)
    return x if gain is None else x * gain[:, None, :]


def collate_batch(batch: tuple[Any, ...]) -> tuple[Any, ...]:
    """DataLoader `collate_fn` for batches `__getitems__` already assembled.

    Only wraps the numpy arrays as tensors (no copy), so the DataLoader can move them through
    shared memory and `pin_memory`; the default collate would split them into samples again.
    """
    import torch

    return tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in batch)


# ---------------------------------------------------------------------------------------------
# Samplers: plain iterables of index arrays, for DataLoader(batch_sampler=...)
# ---------------------------------------------------------------------------------------------


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Sampling probabilities that give every present class the same expected share."""
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return np.zeros(0)
    counts = np.bincount(labels)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[labels])


class _EpochSeeded:
    """A sampler whose order is a function of (seed, epoch): resumable from its state_dict."""

    seed: int
    epoch: int

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])


class WindowBatchSampler(_EpochSeeded):
    """Batches of window indices: shuffled per epoch, optionally class-balanced, sharded for DDP.

    Like torch's DistributedSampler + BatchSampler, without torch: every rank permutes the
    same way (seeded by `seed` and the epoch set with `set_epoch`) and takes every
    `world_size`-th index from `rank`; with `even=True` the permutation is padded by wrapping
    around so all ranks get the same number of batches (DDP needs it for training). With
    `weights` (see `class_balanced_weights`) each rank draws its share with replacement instead.

    The state is (seed, epoch): restoring both replays an epoch exactly.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        weights: np.ndarray | None = None,
        even: bool = True,
    ):
        if batch_size < 1:
            raise BrainpipeError(f"batch_size={batch_size}: must be >= 1")
        if not 0 <= rank < world_size:
            raise BrainpipeError(f"rank {rank} is not in [0, world_size={world_size})")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if len(weights) != n or (n and not weights.sum() > 0):
                raise BrainpipeError(f"sampling weights: need {n} non-negative weights, not all 0")
            weights = weights / weights.sum()
        self.n, self.batch_size, self.shuffle, self.drop_last = (
            int(n),
            batch_size,
            shuffle,
            drop_last,
        )
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.weights, self.even = weights, even
        self.epoch = 0

    def num_indices(self) -> int:
        """Indices this rank sees per epoch."""
        if self.weights is not None or self.even:
            return -(-self.n // self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def indices(self) -> np.ndarray:
        if self.weights is not None:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank])
            return rng.choice(self.n, size=self.num_indices(), p=self.weights)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n, dtype=np.int64)
        if self.world_size > 1:
            if self.even and self.n:
                order = np.resize(order, self.num_indices() * self.world_size)
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        k = self.num_indices()
        return k // self.batch_size if self.drop_last else -(-k // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        idx = self.indices()
        for b in range(len(self)):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size]


# ---------------------------------------------------------------------------------------------
# Subject pairs (e.g. MEG subject-identification / contrastive training)
# ---------------------------------------------------------------------------------------------


class SubjectPairDataset:
    """Pairs of windows of a `CacheWindowDataset`, from the same or from different subjects.

    `__getitems__(pairs)` takes an int array `(B, 2)` of window indices (as `SubjectPairSampler`
    yields) and returns `(xa, xb, same)`: two float16 batches shaped like the windows dataset's
    and `same` int64 `(B,)`, 1 where both windows come from one subject. The per-subject table
    (first, count over windows ordered by subject) makes drawing a pair O(1).
    """

    def __init__(self, windows: CacheWindowDataset):
        self.windows = windows
        names, code = np.unique(windows.subjects(), return_inverse=True)
        self.subject_names = names
        self.subject = code.astype(np.int64)
        self.order = np.argsort(self.subject, kind="stable")
        self.count = np.bincount(self.subject, minlength=len(names)).astype(np.int64)
        self.first = np.concatenate([[0], np.cumsum(self.count)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.windows)

    def sample(self, rng: np.random.Generator, n: int, same_fraction: float) -> np.ndarray:
        """`n` pairs, round(n * same_fraction) of them same-subject, in random order."""
        n_same = int(round(n * same_fraction))
        same = np.zeros(n, bool)
        same[:n_same] = True
        rng.shuffle(same)
        n_sub, n_diff = len(self.count), n - n_same
        s1 = np.zeros(n, np.int64)
        if n_same:
            multi = np.flatnonzero(self.count >= 2)  # a same-subject pair needs two windows
            s1[same] = multi[rng.integers(0, len(multi), n_same)]
        if n_diff:
            s1[~same] = rng.integers(0, n_sub, n_diff)
        k1 = (rng.random(n) * self.count[s1]).astype(np.int64)
        # Same subject: one of its other windows. Different: a uniformly drawn other subject.
        s2, k2 = s1.copy(), np.zeros(n, np.int64)
        if n_same:
            c = self.count[s1[same]]
            k2[same] = (k1[same] + 1 + (rng.random(n_same) * (c - 1)).astype(np.int64)) % c
        if n_diff:
            s2[~same] = (s1[~same] + 1 + rng.integers(0, n_sub - 1, n_diff)) % n_sub
            k2[~same] = (rng.random(n_diff) * self.count[s2[~same]]).astype(np.int64)
        a = self.order[self.first[s1] + k1]
        b = self.order[self.first[s2] + k2]
        return np.stack([a, b], axis=1)

    def __getitems__(self, pairs: Sequence[Sequence[int]] | np.ndarray) -> tuple[np.ndarray, ...]:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        n = len(pairs)
        batch = self.windows.__getitems__(np.concatenate([pairs[:, 0], pairs[:, 1]]))
        x, rest = batch[0], batch[2:]  # labels of the windows are not the target here
        same = (self.subject[pairs[:, 0]] == self.subject[pairs[:, 1]]).astype(np.int64)
        return (x[:n], x[n:], same, *(g[:n] for g in rest), *(g[n:] for g in rest))

    def __getitem__(self, pair: Sequence[int]) -> tuple[Any, ...]:
        return tuple(a[0] for a in self.__getitems__([pair]))


class SubjectPairSampler(_EpochSeeded):
    """Batches of window pairs with a target share of same-subject pairs, for DDP too.

    Subjects are drawn uniformly (not windows), so subjects with many windows do not dominate.
    Each rank draws its own stream (seeded by seed, epoch and rank): the pair equivalent of
    sharding. `n_batches` per epoch and rank.
    """

    def __init__(
        self,
        pairs: SubjectPairDataset,
        batch_size: int,
        n_batches: int,
        *,
        same_fraction: float = 0.5,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= same_fraction <= 1:
            raise BrainpipeError(f"same_fraction={same_fraction}: must be in [0, 1]")
        if same_fraction > 0 and not (pairs.count >= 2).any():
            raise BrainpipeError("same-subject pairs need a subject with at least two windows")
        if same_fraction < 1 and len(pairs.count) < 2:
            raise BrainpipeError(
                f"different-subject pairs need two subjects; the windows hold {len(pairs.count)}"
            )
        if not 0 <= rank < world_size:
            raise BrainpipeError(f"rank {rank} is not in [0, world_size={world_size})")
        self.pairs, self.batch_size, self.n_batches = pairs, batch_size, n_batches
        self.same_fraction, self.seed, self.rank = same_fraction, int(seed), rank
        self.world_size = world_size
        self.epoch = 0

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        for _ in range(self.n_batches):
            yield self.pairs.sample(rng, self.batch_size, self.same_fraction)
