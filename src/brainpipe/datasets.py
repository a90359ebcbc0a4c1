"""Datasets: windows of raw recordings (through an index) or of the cache, and pairs of windows.

Owns `EdfWindowDataset`, `CacheWindowDataset` (with its augmentation), `SubjectPairDataset`,
`window_table` (a cache's windows for any window length and stride) and `subject_keys`. They
are map-style datasets by duck typing (`__len__`, `__getitem__`, `__getitems__`), which is all
`torch.utils.data.DataLoader` needs, free of torch, and they pickle (no open file handles in
their state), so they work with `num_workers > 0` under the fork, spawn and forkserver start
methods. Samplers are in `samplers.py`, the worker -> trainer hand-over in `ring.py`.

No start-up path builds per-window Python objects: windows are computed with vectorized numpy
from per-recording lengths, and `__getitem__` maps an index to (recording, offset) with
`np.searchsorted`.

Long because the three datasets share the window arithmetic (`window_counts`,
`locate`) and the pickling contract, and are read together; `EdfWindowDataset` is the piece to
move out if this grows further.

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

import hashlib
import math
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.cachefile import STATUS_DONE, CacheReader, compute_windows, task_events
from brainpipe.cacheset import open_cache
from brainpipe.channels import alias, canonical_name, channel_type, locate
from brainpipe.edf import read_header, read_signals
from brainpipe.errors import BrainpipeError
from brainpipe.readers import EDF_SUFFIXES, open_raw
from brainpipe.ring import BatchRing, RingSlot, SlotBatch


def window_counts(
    n_samples: np.ndarray, window: np.ndarray | int, stride: np.ndarray | int
) -> np.ndarray:
    """Windows per recording: floor((n - window) / stride) + 1, or 0 when n < window."""
    n_samples = np.asarray(n_samples, dtype=np.int64)
    counts = (n_samples - window) // stride + 1
    return np.where(n_samples >= window, counts, 0).astype(np.int64)


class EdfWindowDataset:
    """Windows straight from the raw recordings of an index: no cache needed.

    For quick experiments. Init is O(recordings) numpy plus one channel lookup per distinct
    channel set; `ds[i]` reads one header per recording (cached per process) and then only the
    bytes of that window. EDF/BDF rows go through our reader; rows of mne's formats (FIF, KIT,
    BrainVision, ...) through `mne.io.read_raw(preload=False)`, opened lazily in the worker that
    reads them, with the index's `corpus.reader_options` (`read_other_formats=False` leaves them
    out instead). Values are Volts (Tesla for MEG) either way.

    `channels` are found by `brainpipe.channels.locate`, the normalization build-cache uses
    (case, `EEG `/`-REF` decorations, PhysioNet's dots, T3 <-> T7 aliases, EEG-typed channels
    only), so a recording gives the same channels here as in the cache; default: the channels
    at `sfreq` of the most common channel set, so every window has one shape. Recordings whose
    rate differs from `sfreq` (default: the index's most common rate), lacking any of
    `channels`, or naming one of them twice are left out: `excluded` lists them with reasons
    and `excluded_line()` sums them up in one line. A window holding NaN or Inf raises
    BrainpipeError naming the file.
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
        read_other_formats: bool = True,
        reader_options: dict | None = None,
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
        self.reader_options = dict(
            reader_options
            if reader_options is not None
            else index.meta.get("corpus_config", {}).get("reader_options", {})
        )

        keep = np.isclose(rates, self.sfreq)
        self.excluded: list[tuple[str, str]] = [
            (str(p), f"sample rate {r:g} Hz != {self.sfreq:g} Hz")
            for p, r in zip(a["path"][~keep], rates[~keep], strict=True)
        ]
        is_edf = np.array(
            [p.lower().endswith(EDF_SUFFIXES) for p in a["path"].tolist()], dtype=bool
        ).reshape(n)
        if not read_other_formats:
            self.excluded += [
                (str(p), "not EDF/BDF (read_other_formats=False)")
                for p in a["path"][keep & ~is_edf]
            ]
            keep &= is_edf
        if split is not None:
            keep &= a["split"] == split

        chansets = a["chanset"]
        set_picks, keep = self._pick_channels(index, channels, keep)
        self.recordings = np.flatnonzero(keep)
        self.paths = a["path"][self.recordings]
        self.is_edf = is_edf[self.recordings]
        self.picks_by_set = set_picks
        self.chanset = chansets[self.recordings]
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

    def _pick_channels(
        self, index: Any, channels: Sequence[str] | None, keep: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sets `self.channels` (default: those at `sfreq` of the most common channel set, so
        every window has one shape); returns the picks of each channel set and `keep` without
        the recordings that lack a channel or name one twice (added to `excluded`)."""
        a, chansets = index.arrays, index.arrays["chanset"]
        wanted = list(channels) if channels is not None else None
        wanted_types = None  # from the names, unless the channels come from a recording
        if wanted is None and keep.any():
            sets, n_of = np.unique(chansets[keep], return_counts=True)
            first = int(np.flatnonzero(keep & (chansets == sets[np.argmax(n_of)]))[0])
            at_rate = np.isclose(index.channel_sfreqs(first), self.sfreq)
            wanted = [c for c, ok in zip(index.channels(first), at_rate, strict=True) if ok]
            wanted_types = [
                t for t, ok in zip(index.channel_types(first), at_rate, strict=True) if ok
            ]
        self.channels = tuple(wanted) if wanted is not None else None
        if self.channels is None:
            return np.zeros((0, 0), np.int64), keep
        set_picks, set_why = _chanset_picks(index, self.channels, self.sfreq, wanted_types)
        bad = keep & (set_why[chansets] != "")
        self.excluded += [
            (str(p), str(why))
            for p, why in zip(a["path"][bad], set_why[chansets][bad], strict=True)
        ]
        return set_picks, keep & ~bad

    def excluded_line(self) -> str:
        """One line: how many recordings are left out, by reason kind."""
        from collections import Counter

        from brainpipe.errors import reason_kind

        kinds = Counter(reason_kind(why) for _, why in self.excluded)
        detail = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
        return f"{len(self.recordings)} recordings used, {len(self.excluded)} left out" + (
            f" ({detail})" if detail else ""
        )

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
        """EDF header, or the mne Raw (not preloaded) of another format; opened once per process."""
        h = self._headers.get(r)
        if h is None:
            path = str(Path(self.raw_root) / str(self.paths[r]))
            h = read_header(path) if self.is_edf[r] else open_raw(path, self.reader_options)
            self._headers[r] = h
        return h

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        r, start = self.locate(int(i))
        h = self._header(r)
        if not self.is_edf[r]:
            if self.channels is None:
                picks = list(range(len(h.ch_names)))
            else:
                picks = self.picks_by_set[self.chanset[r]].tolist()
            x = h.get_data(picks=picks, start=start, stop=start + self.window)
            return x.astype(np.float32, copy=False), int(self.labels[r])
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
        if not np.isfinite(x).all():
            # build-cache skips such a recording; a lazy read must not serve it silently either
            raise BrainpipeError(
                f"{Path(self.raw_root) / str(self.paths[r])}: non-finite samples (NaN/Inf) in "
                f"window {int(i)} (samples {start}..{start + self.window}); check the file's "
                "physical ranges, or leave it out of the index"
            )
        return x.astype(np.float32, copy=False), int(self.labels[r])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_headers"] = {}  # open files and mne Raws stay in the process that opened them
        return state


def _chanset_picks(
    index, wanted: Sequence[str], sfreq: float, wanted_types: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For every channel set of the index: where each wanted channel sits (-1: absent), and why
    the set cannot serve ("" when it can). Channels at another rate count as absent.

    `channels.locate`'s rule (type and canonical name or alias), vectorized over every channel
    of every set at once: a TUAB-sized index holds thousands of distinct channel sets, and one
    `locate` per set cost ~0.8 s of a dataset's start; distinct labels are few and normalized
    once each. A set naming one electrode twice is handed to `locate` for its message."""
    a = index.arrays
    off = a["chanset_offsets"]
    n_sets = len(off) - 1
    picks = np.full((n_sets, len(wanted)), -1, dtype=np.int64)
    why = np.full(n_sets, "", dtype=object)
    labels, types = a["chanset_labels"].astype(str), a["chanset_types"].astype(str)
    set_of = np.repeat(np.arange(n_sets), np.diff(off))
    names, inv = np.unique(labels, return_inverse=True)
    canon = np.array([canonical_name(x) for x in names] or [""])[inv]
    kind = np.where(types == "eeg", np.array([channel_type(x) for x in names] or [""])[inv], types)
    kind = np.where(np.isclose(a["chanset_sfreqs"], sfreq), kind, "other-rate")
    n_hits = np.zeros((n_sets, len(wanted)), dtype=np.int64)
    for j, w in enumerate(wanted):
        name = canonical_name(w)
        w_kind = wanted_types[j] if wanted_types is not None else "eeg"
        w_kind = channel_type(w) if w_kind == "eeg" else w_kind
        hit = np.flatnonzero(
            (kind == w_kind) & ((canon == name) | (canon == (alias(name) or name)))
        )
        n_hits[:, j] = np.bincount(set_of[hit], minlength=n_sets)
        first = hit[::-1]  # assigned last wins: each set's first hit
        picks[set_of[first], j] = first - off[set_of[first]]
    for s in np.flatnonzero((n_hits > 1).any(axis=1)).tolist():
        lo, hi = int(off[s]), int(off[s + 1])
        try:
            locate(labels[lo:hi].tolist(), wanted, kind[lo:hi].tolist(), wanted_types)
        except BrainpipeError as e:
            why[s] = f"ambiguous channels: {e}"
    absent = n_hits == 0
    for s in np.flatnonzero(absent.any(axis=1) & (why == "")).tolist():
        why[s] = "missing channels: " + ", ".join(
            w for w, x in zip(wanted, absent[s], strict=True) if x
        )
    picks[why != ""] = -1
    return picks, why


# ---------------------------------------------------------------------------------------------
# Windows from the cache
# ---------------------------------------------------------------------------------------------


def _open(cache: str | os.PathLike | CacheReader) -> CacheReader:
    return open_cache(cache) if isinstance(cache, str | os.PathLike) else cache


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
    table (finished recordings only; for the seizure and events tasks, labels from the events), which needs
    no rebuild because the cache stores continuous signal. O(windows) numpy.
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
    # Seizure and events windows take their labels from the events, so the overlap rule
    # matters there only.
    by_events = reader.task in ("seizure", "events")
    same = n == reader.window_samples and stride == reader.stride_samples
    if same and (not by_events or math.isclose(overlap, built_overlap)):
        w = reader.windows
        rec, start, label = w["recording"], w["start"], w["label"]
    else:
        r = reader.recordings
        events = task_events(reader.task, tuple(reader.label_names), reader.events)
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
            anchor=reader.window_anchor,
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


def check_inside_signals(
    reader: CacheReader, starts: np.ndarray, window_samples: int, recordings: np.ndarray
) -> None:
    """Fail at open, not mid-epoch, when a window or a recording lies outside /signals.

    A memmap read past the end returns a short window (a shape error in a worker, or a silent
    zero-padded read); a crafted or damaged table could name any row.
    """
    n_rows = int(reader.shape[0])
    r = reader.recordings
    end = r["offset"][recordings].astype(np.int64) + r["length"][recordings].astype(np.int64)
    bad_rec = (r["offset"][recordings] < 0) | (end > n_rows)
    bad_win = (starts < 0) | (starts.astype(np.int64) + window_samples > n_rows)
    if bad_rec.any() or bad_win.any():
        what = (
            f"{int(bad_win.sum())} windows" if bad_win.any() else f"{int(bad_rec.sum())} recordings"
        )
        raise BrainpipeError(
            f"{reader.path}: {what} reach past the end of /signals ({n_rows} rows); the cache "
            "is damaged or not brainpipe's: rebuild it (brainpipe build-cache --force)"
        )


class CacheWindowDataset:
    """Windows of a brainpipe cache, read a whole batch at a time.

    `ds.__getitems__(indices)` returns `(x, y)`: x float16 `(B, window_samples, n_channels)` —
    time-major, as stored, one memcpy per window from a memmap — and y int64 `(B,)`. Keep x
    float16 up to the device and transpose/convert it there: float16 -> float32 on the CPU runs
    at a fraction of the read speed. `ds[i]` is one row of that.

    Selection: `split` (the corpus's own, e.g. "train"/"eval"; None for all), `subjects` (keep
    only these, see `carve_validation`), labelled windows only unless `labelled_only=False`.
    `target="subject"` makes y the window's subject code (see `subject_names`) instead.
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
        target: str = "label",
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
        check_inside_signals(self.reader, table["start"][keep], self.window_samples, keep_rec)
        if labelled_only:
            keep &= table["label"] >= 0
        self.split = split
        self.recording = table["recording"][keep]
        self.start = table["start"][keep]
        self.label = table["label"][keep]
        # target="subject": y is the window's subject, a code into `subject_names` (all the
        # cache's subjects, so codes agree across splits), for the subject tasks.
        self.subject_names = np.unique(subject_keys(self.reader))
        if target == "subject":
            code = np.searchsorted(self.subject_names, subject_keys(self.reader))
            self.label = code[self.recording].astype(np.int64)
        elif target != "label":
            raise BrainpipeError(f"target={target!r}: must be 'label' or 'subject'")
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
