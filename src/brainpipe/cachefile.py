"""The brainpipe cache format (HDF5): a writer and a reader sharing only the constants below.

See docs/cache-format.md for the layout with a literal example. In short:

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

The build writes signal bytes straight into the dataset's reserved, contiguous storage and keeps
HDF5's own metadata untouched until the end, so a killed build leaves a file that reopens. The
`complete` attribute is written last; a reader refuses a file without it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.errors import BrainpipeError

FORMAT_VERSION = 1
STATUS_PENDING, STATUS_DONE, STATUS_SKIPPED = 0, 1, 2
COMPRESSION = {"none": None, "lzf": "lzf", "gzip": "gzip"}


def _str_array(values) -> np.ndarray:
    import h5py

    return (
        np.array([str(v).encode() for v in values], dtype=h5py.string_dtype("utf-8", None))
        if len(values)
        else np.zeros(0, dtype=h5py.string_dtype())
    )


def _decode(arr: np.ndarray) -> np.ndarray:
    return (
        np.array([v.decode() if isinstance(v, bytes) else str(v) for v in arr.tolist()], dtype=str)
        if len(arr)
        else np.zeros(0, dtype="U1")
    )


# ---------------------------------------------------------------------------------------------
# Window tables: pure functions on arrays, shared by the writer and by train-time re-windowing
# ---------------------------------------------------------------------------------------------


def compute_windows(
    offsets: np.ndarray,
    lengths: np.ndarray,
    window: int,
    stride: int,
    rec_labels: np.ndarray,
    events: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    sfreq: float = 1.0,
    t0_s: np.ndarray | None = None,
    label_overlap: float = 0.5,
    keep: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The window table for recordings laid out at `offsets` with `lengths` rows.

    Vectorized: no Python loop over windows. With `events` (recording, onset_s, offset_s), a
    window's label is 1 when at least `label_overlap` of it overlaps an event, else 0; without,
    it is its recording's label.
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
        ev_rec, ev_on, ev_off = events
        label = np.zeros(total, np.int8)
        t0 = np.zeros(n_rec) if t0_s is None else t0_s
        # Per event, the windows of its recording it covers: events are few, windows many.
        for r, on, off in zip(ev_rec.tolist(), ev_on.tolist(), ev_off.tolist(), strict=True):
            if r >= n_rec or counts[r] == 0:
                continue
            lo, hi = first[r], first[r] + counts[r]
            w_on = local[lo:hi] / sfreq + t0[r]
            w_off = w_on + window / sfreq
            overlap = np.clip(np.minimum(w_off, off) - np.maximum(w_on, on), 0, None)
            hit = overlap >= label_overlap * window / sfreq - 1e-9
            label[lo:hi] |= hit.astype(np.int8)
    return {
        "recording": rec,
        "start": start.astype(np.int64),
        "label": label,
        "counts": counts,
        "first": first,
    }


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------


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


def task_of(attrs: dict[str, Any], label_names: tuple[str, ...]) -> str:
    """The task a cache serves ("abnormal", "seizure", or "" for an unlabelled/custom cache).

    Caches record it in the `task` attribute; caches written before that attribute existed are
    read by the one rule they were built under: the label names of a task.
    """
    task = str(attrs.get("task", ""))
    if task:
        return task
    from brainpipe.corpus import TASK_LABELS

    return next((t for t, names in TASK_LABELS.items() if tuple(label_names) == names), "")


def create_layout(path: Path, layout: Layout) -> None:
    """Create the partial file: tables of the plan and a contiguous, pre-allocated /signals."""
    import h5py

    r = layout.recordings
    lengths = r["length"].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    total = int(lengths.sum())
    n_ch = len(layout.channels)
    with h5py.File(path, "w", libver="latest") as f:
        space = h5py.h5s.create_simple((max(total, 1), n_ch))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.CONTIGUOUS)
        # Early allocation gives the dataset its final file offset now, so the build can write
        # rows with plain pwrite/memmap and never touch HDF5 metadata again until the end.
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        h5py.h5d.create(
            f.id, b"signals", h5py.h5t.py_create(np.dtype(layout.dtype)), space, dcpl=dcpl
        )
        g = f.create_group("recordings")
        for k in ("path", "subject", "session", "split"):
            g.create_dataset(k, data=_str_array(r[k]))
        g.create_dataset("label", data=r["label"].astype(np.int8))
        g.create_dataset("sfreq_orig", data=r["sfreq_orig"].astype(np.float64))
        g.create_dataset("offset", data=offsets)
        g.create_dataset("length", data=lengths)
        g.create_dataset("t0_s", data=r["t0_s"].astype(np.float64))
        g.create_dataset("mask", data=r["mask"].astype(bool).reshape(len(lengths), n_ch))
        g.create_dataset("status", data=np.zeros(len(lengths), np.uint8))
        e = f.create_group("events")
        e.create_dataset("recording", data=layout.events["recording"].astype(np.int64))
        e.create_dataset("onset_s", data=layout.events["onset_s"].astype(np.float64))
        e.create_dataset("offset_s", data=layout.events["offset_s"].astype(np.float64))
        e.create_dataset("label", data=_str_array(layout.events["label"]))
        for k, v in layout.attrs.items():
            f.attrs[k] = v
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["channels"] = json.dumps(list(layout.channels))
        f.attrs["sfreq"] = float(layout.sfreq)
        f.attrs["dtype"] = layout.dtype
        f.attrs["label_names"] = json.dumps(list(layout.label_names))
        f.attrs["complete"] = False


def signals_offset(path: Path) -> tuple[int, tuple[int, int], np.dtype]:
    """File offset, shape and dtype of a contiguous /signals (for memmap reads and writes)."""
    import h5py

    with h5py.File(path, "r") as f:
        d = f["signals"]
        off = d.id.get_offset()
        if off is None:
            raise BrainpipeError(f"{path}: /signals has no contiguous storage (compressed cache?)")
        return int(off), tuple(d.shape), d.dtype


def finalize(
    partial: Path,
    status: np.ndarray,
    skipped: list[tuple[str, str]],
    window: int,
    stride: int,
    label_overlap: float,
    extra_attrs: dict[str, Any],
) -> None:
    """Write the window/subject tables and, last, `complete`."""
    import h5py

    with h5py.File(partial, "r+") as f:
        # A finalize killed half-way is simply redone: drop what it had written.
        for name in (
            "windows",
            "subjects",
            "skipped",
            "signals_c",
            "recordings/n_windows",
            "recordings/first_window",
        ):
            if name in f:
                del f[name]
        g = f["recordings"]
        g["status"][...] = status
        offsets, lengths = g["offset"][()], g["length"][()]
        labels = g["label"][()]
        subjects = _decode(g["subject"][()])
        sfreq = float(f.attrs["sfreq"])
        ev = f["events"]
        tusz = json.loads(f.attrs["label_names"]) == ["bckg", "seiz"]
        events = (ev["recording"][()], ev["onset_s"][()], ev["offset_s"][()]) if tusz else None
        win = compute_windows(
            offsets,
            lengths,
            window,
            stride,
            labels,
            events,
            sfreq,
            g["t0_s"][()],
            label_overlap,
            keep=status == STATUS_DONE,
        )
        g.create_dataset("n_windows", data=win["counts"])
        g.create_dataset("first_window", data=win["first"])
        w = f.create_group("windows")
        w.create_dataset("recording", data=win["recording"])
        w.create_dataset("start", data=win["start"])
        w.create_dataset("label", data=win["label"])
        # Recordings are laid out grouped by subject, so each subject's windows are one run.
        names, first_rec = (
            np.unique(subjects, return_index=True)
            if len(subjects)
            else (np.zeros(0, str), np.zeros(0, np.int64))
        )
        order = np.argsort(first_rec)
        names, first_rec = names[order], first_rec[order]
        n_recs = np.diff(np.concatenate([first_rec, [len(subjects)]]))
        cum = np.concatenate([[0], np.cumsum(win["counts"])])
        s = f.create_group("subjects")
        s.create_dataset("name", data=_str_array(names))
        s.create_dataset("first_recording", data=first_rec.astype(np.int64))
        s.create_dataset("n_recordings", data=n_recs.astype(np.int64))
        s.create_dataset("first_window", data=cum[first_rec].astype(np.int64))
        s.create_dataset(
            "n_windows", data=(cum[first_rec + n_recs] - cum[first_rec]).astype(np.int64)
        )
        k = f.create_group("skipped")
        k.create_dataset("path", data=_str_array([p for p, _ in skipped]))
        k.create_dataset("reason", data=_str_array([r for _, r in skipped]))
        f.attrs["window_samples"] = int(window)
        f.attrs["stride_samples"] = int(stride)
        f.attrs["label_overlap"] = float(label_overlap)
        for key, v in extra_attrs.items():
            f.attrs[key] = v
        f.attrs["complete"] = True
        f.flush()


def repack(src: Path, dst: Path, compression: str) -> None:
    """Copy a finished cache to `dst` with a chunked, compressed /signals (slower reads).

    A new file, because HDF5 never gives back the space of a deleted dataset.
    """
    import h5py

    with h5py.File(src, "r") as fin, h5py.File(dst, "w", libver="latest") as fout:
        sig = fin["signals"]
        n, c = sig.shape
        chunk_rows = max(1, min(n, int(fin.attrs["window_samples"])))
        if compression == "blosc":
            try:
                import hdf5plugin
            except ImportError as e:
                raise BrainpipeError(
                    "cache.compression=blosc needs hdf5plugin: pip install 'brainpipe[blosc]'"
                ) from e
            kwargs: dict[str, Any] = dict(
                hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)
            )
        else:
            kwargs = {"compression": COMPRESSION[compression]}
        dst_sig = fout.create_dataset(
            "signals", shape=(n, c), dtype=sig.dtype, chunks=(chunk_rows, c), **kwargs
        )
        step = chunk_rows * max(1, 8_000_000 // max(1, chunk_rows * c * sig.dtype.itemsize))
        for lo in range(0, n, step):
            dst_sig[lo : lo + step] = sig[lo : lo + step]
        for name in fin:
            if name != "signals":
                fin.copy(fin[name], fout, name=name)
        for k, v in fin.attrs.items():
            if k != "complete":
                fout.attrs[k] = v
        fout.attrs["compression"] = compression
        fout.attrs["complete"] = True  # last, as in finalize


# ---------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------


class CacheReader:
    """Read a finished cache: tables as numpy arrays, windows through a memmap.

    Holds no open handle in its pickled state: each DataLoader worker reopens the file lazily,
    which is what makes `num_workers > 0` work with HDF5.
    """

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = Path(path)
        try:
            f = h5py.File(self.path, "r")
        except FileNotFoundError as e:
            raise BrainpipeError(
                f"{self.path}: cache not found; build it with `brainpipe build-cache`"
            ) from e
        except OSError as e:
            raise BrainpipeError(f"{self.path}: not a readable HDF5 cache ({e})") from e
        with f:
            a = f.attrs
            version = int(a.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise BrainpipeError(
                    f"{self.path}: cache format version {version}, this brainpipe reads version {FORMAT_VERSION}; rebuild with `brainpipe build-cache --force`"
                )
            if not bool(a.get("complete", False)):
                raise BrainpipeError(
                    f"{self.path}: cache build did not finish; run `brainpipe build-cache` again to resume it"
                )
            self.attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in a.items()}
            self.channels = tuple(json.loads(a["channels"]))
            self.label_names = tuple(json.loads(a["label_names"]))
            self.task = task_of(self.attrs, self.label_names)
            self.sfreq = float(a["sfreq"])
            self.window_samples = int(a["window_samples"])
            self.stride_samples = int(a["stride_samples"])
            self.config = json.loads(a["config"]) if "config" in a else {}
            g = f["recordings"]
            self.recordings = {k: g[k][()] for k in g}
            for k in ("path", "subject", "session", "split"):
                self.recordings[k] = _decode(self.recordings[k])
            self.windows = {k: f["windows"][k][()] for k in f["windows"]}
            self.subjects = {k: f["subjects"][k][()] for k in f["subjects"]}
            self.subjects["name"] = _decode(self.subjects["name"])
            self.events = {k: f["events"][k][()] for k in f["events"]}
            self.events["label"] = _decode(self.events["label"])
            self.skipped = [
                {"path": p, "reason": r}
                for p, r in zip(
                    _decode(f["skipped"]["path"][()]),
                    _decode(f["skipped"]["reason"][()]),
                    strict=True,
                )
            ]
            d = f["signals"]
            self.shape = tuple(d.shape)
            self.dtype = d.dtype
            off = d.id.get_offset()
            self._offset = None if off is None else int(off)
        self._mm: np.memmap | None = None
        self._h5 = None

    # context manager and pickling ------------------------------------------------------------
    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._mm = None
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_mm"] = None
        state["_h5"] = None
        return state

    # signal access --------------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return self.shape[1]

    def _signals(self):
        if self._offset is not None:
            if self._mm is None:
                self._mm = np.memmap(
                    self.path, dtype=self.dtype, mode="r", offset=self._offset, shape=self.shape
                )
            return self._mm
        if self._h5 is None:
            import h5py

            self._h5 = h5py.File(self.path, "r")
        return self._h5["signals"]

    def read(self, start: int, n: int) -> np.ndarray:
        """Rows [start, start + n) of /signals: (n, n_channels) in the stored dtype."""
        return np.asarray(self._signals()[start : start + n])

    def read_windows(self, starts: np.ndarray, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """A batch of windows, (len(starts), n, n_channels) in the stored dtype (time-major).

        One contiguous copy per window from the memmap; h5py fancy indexing would be ~50x slower.
        """
        starts = np.asarray(starts, dtype=np.int64)
        if out is None:
            out = np.empty((len(starts), n, self.shape[1]), dtype=self.dtype)
        sig = self._signals()
        for k, s in enumerate(starts.tolist()):
            out[k] = sig[s : s + n]
        return out

    # summaries ------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        r, w = self.recordings, self.windows
        done = r["status"] == STATUS_DONE
        labels = w["label"]
        splits_of_windows = r["split"][w["recording"]] if len(w["recording"]) else np.zeros(0, str)
        by_label = {
            self._label_name(int(v)): int(c)
            for v, c in zip(*np.unique(labels, return_counts=True), strict=True)
        }
        by_split = {
            str(s): int(c)
            for s, c in zip(*np.unique(splits_of_windows, return_counts=True), strict=True)
        }
        by_split_label: dict[str, dict[str, int]] = {}
        for s in by_split:
            m = splits_of_windows == s
            by_split_label[s] = {
                self._label_name(int(v)): int(c)
                for v, c in zip(*np.unique(labels[m], return_counts=True), strict=True)
            }
        return {
            "kind": "cache",
            "path": str(self.path),
            "format_version": int(self.attrs["format_version"]),
            "n_recordings": int(done.sum()),
            "n_windows": int(len(labels)),
            "n_subjects": int(len(np.unique(r["subject"][done]))),
            "channels": list(self.channels),
            "sfreq": self.sfreq,
            "window_samples": self.window_samples,
            "stride_samples": self.stride_samples,
            "dtype": str(self.dtype),
            "hours": float(r["length"][done].sum() / self.sfreq / 3600),
            "labels": by_label,
            "splits": by_split,
            "windows_by_split_label": by_split_label,
            "bytes": int(self.path.stat().st_size),
            "config_hash": str(self.attrs.get("config_hash", "")),
            "index_hash": str(self.attrs.get("index_hash", "")),
            "brainpipe_version": str(self.attrs.get("brainpipe_version", "")),
            "created": str(self.attrs.get("created", "")),
            "skipped": self.skipped,
        }

    def _label_name(self, v: int) -> str:
        return self.label_names[v] if 0 <= v < len(self.label_names) else "none"


def format_cache_table(s: dict[str, Any]) -> str:
    lines = [
        f"cache {s['path']}  format v{s['format_version']}  {s['bytes'] / 1e6:.1f} MB  {s['dtype']}",
        f"{s['n_recordings']} recordings, {s['n_subjects']} subjects, {s['hours']:.2f} h, {s['n_windows']} windows "
        f"of {s['window_samples']} samples (stride {s['stride_samples']}) at {s['sfreq']:g} Hz",
        f"channels ({len(s['channels'])}): {' '.join(s['channels'])}",
        "",
        f"{'split':<8} " + " ".join(f"{k:>10}" for k in sorted(s["labels"])),
    ]
    for split, counts in sorted(s["windows_by_split_label"].items()):
        lines.append(
            f"{split or '-':<8} " + " ".join(f"{counts.get(k, 0):>10}" for k in sorted(s["labels"]))
        )
    lines.append(f"skipped: {len(s['skipped'])}")
    for e in s["skipped"][:20]:
        lines.append(f"  {e['path']}: {e['reason']}")
    if "verify" in s:
        lines.append(s["verify"].get("text", ""))
    return "\n".join(lines)
