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
(`compute_windows`, also used by train-time re-windowing in `datasets`), the task rule
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
) -> dict[str, np.ndarray]:
    """The window table for recordings laid out at `offsets` with `lengths` rows.

    Vectorized: no Python loop over windows. With `events` (recording, onset_s, offset_s), a
    window's label is 1 when at least `label_overlap` of it overlaps an event, else 0; without,
    it is its recording's label. With a fourth array, each event's class (cache.task=events), a
    window takes the class of the event overlapping it most among those covering at least
    `label_overlap` of it, and -1 (unlabelled) when none does.
    """
    n_rec = len(offsets)
    keep = np.ones(n_rec, bool) if keep is None else keep
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
