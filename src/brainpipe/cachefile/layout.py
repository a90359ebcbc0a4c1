"""The cache format's contract, shared by its writer and its reader (docs/cache-format.md).

    /signals            (total_samples, n_channels) float16, contiguous, time-major: one
                        recording after another, each grouped by subject; a window is a
                        contiguous block of rows, read with one memcpy through np.memmap.
    /recordings/*       one row per planned recording: path, subject, session, split, label,
                        sfreq_orig, offset, length, status, mask, t0_s, n_windows, first_window
    /subjects/*         name, first_window, n_windows, first_recording, n_recordings
    /windows/*          recording, start (row in /signals), label
    /events/*           recording, onset_s, offset_s, label (seconds in the original recording)
    /skipped/*          path, reason
    attrs               format_version, complete, config (JSON), config_hash, index_hash, ...

Owns what both halves must agree on: `FORMAT_VERSION`, the recording status codes, the
compression names, `Layout` (what is known before any signal is read), the window table
(`compute_windows`, with `event_windows` for window.anchor=events; also used by train-time
re-windowing in `datasets`), the task rule
(`task_of`: the `task` attribute records cache.task, label names only for caches written
before it; `task_events`), `plan_hash` (which partial file a layout may resume) and the string
tables' encoding. Writing is `writer.py`, reading `reader.py`; neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainpipe.corpus import TASK_LABELS

FORMAT_VERSION = 1
STATUS_PENDING, STATUS_DONE, STATUS_SKIPPED = 0, 1, 2
COMPRESSION = {"none": None, "lzf": "lzf", "gzip": "gzip"}


def str_array(values) -> np.ndarray:
    """A string table as HDF5 stores it (variable-length UTF-8)."""
    import h5py  # lazy: h5py costs ~0.3 s and `index` reads STATUS_* without it

    return (
        np.array([str(v).encode() for v in values], dtype=h5py.string_dtype("utf-8", None))
        if len(values)
        else np.zeros(0, dtype=h5py.string_dtype())
    )


def decode_strings(arr: np.ndarray) -> np.ndarray:
    """A string table read back from HDF5 (bytes or str) as a numpy str array."""
    return (
        np.array([v.decode() if isinstance(v, bytes) else str(v) for v in arr.tolist()], dtype=str)
        if len(arr)
        else np.zeros(0, dtype="U1")
    )


# Window tables: pure functions on arrays, shared by the writer and by train-time re-windowing.


def compute_windows(
    offsets: np.ndarray,
    lengths: np.ndarray,
    window: int,
    stride: int,
    rec_labels: np.ndarray,
    events: tuple[np.ndarray, ...] | None = None,
    sfreq: float = 1.0,
    t0_s: np.ndarray | None = None,
    label_overlap: float = 0.5,
    keep: np.ndarray | None = None,
    anchor: str = "grid",
) -> dict[str, np.ndarray]:
    """The window table for recordings laid out at `offsets` with `lengths` rows.

    Vectorized: no Python loop over windows. With `events` (recording, onset_s, offset_s), a
    window's label is 1 when at least `label_overlap` of it overlaps an event, else 0; without,
    it is its recording's label. With a fourth array, each event's class (cache.task=events), a
    window takes the class of the event overlapping it most among those covering at least
    `label_overlap` of it, and -1 (unlabelled) when none does.

    anchor="events" (window.anchor): one window per event instead of a grid, centred on it and
    labelled with its class (see `event_windows`); `stride` and `label_overlap` are not used.
    """
    n_rec = len(offsets)
    keep = np.ones(n_rec, bool) if keep is None else keep
    if anchor == "events":
        if events is None or len(events) < 4:
            raise ValueError("anchor='events' needs events with classes (cache.task=events)")
        return event_windows(offsets, lengths, window, events, sfreq, t0_s, keep)
    counts = np.where(keep & (lengths >= window), (lengths - window) // stride + 1, 0).astype(
        np.int64
    )
    total = int(counts.sum())
    rec = np.repeat(np.arange(n_rec, dtype=np.int32), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    k = np.arange(total, dtype=np.int64) - np.repeat(first, counts)
    local = k * stride
    start = offsets[rec] + local
    label = rec_labels[rec].astype(np.int8)
    if events is not None:
        ev_rec, ev_on, ev_off = events[:3]
        classes = events[3].tolist() if len(events) > 3 else None
        label = np.zeros(total, np.int8) if classes is None else np.full(total, -1, np.int8)
        best = np.zeros(total if classes is not None else 0)  # the overlap behind a class
        t0 = np.zeros(n_rec) if t0_s is None else t0_s
        # Per event, the windows of its recording it covers: events are few, windows many.
        for j, (r, on, off) in enumerate(
            zip(ev_rec.tolist(), ev_on.tolist(), ev_off.tolist(), strict=True)
        ):
            if r >= n_rec or counts[r] == 0:
                continue
            lo, hi = first[r], first[r] + counts[r]
            w_on = local[lo:hi] / sfreq + t0[r]
            w_off = w_on + window / sfreq
            overlap = np.clip(np.minimum(w_off, off) - np.maximum(w_on, on), 0, None)
            hit = overlap >= label_overlap * window / sfreq - 1e-9
            if classes is None:
                label[lo:hi] |= hit.astype(np.int8)
                continue
            hit &= overlap > best[lo:hi]  # ties: the event listed first keeps the window
            label[lo:hi][hit] = classes[j]
            best[lo:hi][hit] = overlap[hit]
    return {
        "recording": rec,
        "start": start.astype(np.int64),
        "label": label,
        "counts": counts,
        "first": first,
    }


@dataclass(frozen=True)
class Layout:
    """What is known before any data is read: the file can be laid out up front."""

    channels: tuple[str, ...]
    sfreq: float
    dtype: str
    recordings: dict[
        str, np.ndarray
    ]  # path, subject, session, split, label, sfreq_orig, length, t0_s, mask
    events: dict[str, np.ndarray]  # recording, onset_s, offset_s, label
    label_names: tuple[str, ...]
    attrs: dict[str, Any]
    task: str = ""  # "abnormal", "seizure", "events" or "" (cache.task none): the `task` attribute


def task_of(attrs: dict[str, Any], label_names: tuple[str, ...]) -> str:
    """The task a cache serves ("abnormal", "seizure", or "" for an unlabelled/custom cache).

    Caches record it in the `task` attribute; caches written before that attribute existed are
    read by the one rule they were built under: the label names of a task.
    """
    task = str(attrs.get("task", ""))
    if task:
        return task
    return next((t for t, names in TASK_LABELS.items() if tuple(label_names) == names), "")


def event_windows(
    offsets: np.ndarray,
    lengths: np.ndarray,
    window: int,
    events: tuple[np.ndarray, ...],
    sfreq: float,
    t0_s: np.ndarray | None,
    keep: np.ndarray,
) -> dict[str, np.ndarray]:
    """One window per event, centred on the event and labelled with its class: the event-window
    protocol of TUEV (BIOT, LaBraM, CBraMod: 2 s either side of each 1-s event, a 5-s window).

    A window that would cross the recording's start or end is moved inside it (the reference
    scripts wrap the signal around instead); events of recordings shorter than a window, or
    not kept, give none. Windows are ordered by recording, then start."""
    ev_rec, ev_on, ev_off, cls = (np.asarray(a) for a in events[:4])
    n_rec = len(offsets)
    t0 = np.zeros(n_rec) if t0_s is None else np.asarray(t0_s, float)
    ok = (ev_rec < n_rec) & (ev_rec >= 0)
    ev_rec, ev_on, ev_off, cls = ev_rec[ok], ev_on[ok], ev_off[ok], cls[ok]
    ok = keep[ev_rec] & (lengths[ev_rec] >= window)
    rec = ev_rec[ok].astype(np.int32)
    centre = ((ev_on[ok] + ev_off[ok]) / 2 - t0[rec]) * sfreq
    local = np.clip(np.round(centre - window / 2), 0, lengths[rec] - window).astype(np.int64)
    order = np.lexsort((local, rec))
    rec, local, label = rec[order], local[order], cls[ok][order].astype(np.int8)
    counts = np.bincount(rec, minlength=n_rec).astype(np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return {
        "recording": rec,
        "start": (offsets[rec] + local).astype(np.int64),
        "label": label,
        "counts": counts,
        "first": first,
    }


def task_events(
    task: str, label_names: tuple[str, ...], events: dict[str, np.ndarray]
) -> tuple[np.ndarray, ...] | None:
    """The `events` argument of `compute_windows` for a cache's task and its /events table:
    seizure caches label windows by overlap with their events, events caches by overlap with
    the events of their classes (a fourth array: each event's class), others by recording."""
    if task == "seizure":
        return events["recording"], events["onset_s"], events["offset_s"]
    if task != "events":
        return None
    lookup = {n: k for k, n in enumerate(label_names)}
    cls = np.array([lookup.get(x, -1) for x in decode_strings(events["label"]).tolist()], np.int64)
    keep = cls >= 0
    return events["recording"][keep], events["onset_s"][keep], events["offset_s"][keep], cls[keep]


def plan_hash(layout: Layout) -> str:
    """Identifies the planned rows of a layout: a partial file resumes only under the same one."""
    h = hashlib.sha256()
    for k in ("path", "length"):
        h.update(np.ascontiguousarray(layout.recordings[k]).tobytes())
    h.update(json.dumps(list(layout.channels)).encode())
    return h.hexdigest()[:16]


# A partial file is resumed only when these attributes match the new build's.
RESUME_KEYS = ("config_hash", "index_hash", "plan_hash")
