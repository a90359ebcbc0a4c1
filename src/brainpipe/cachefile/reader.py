"""Reading a finished cache: `CacheReader`, tables as numpy arrays and windows through a memmap.

A file is read only when it is this `FORMAT_VERSION` and `complete` (the writer sets it last),
every dataset's declared size fits the file (`_check_declared_sizes`, before any table is
read), and every window and recording lies inside /signals; anything else is one
`BrainpipeError` naming the file and the fix. h5py is imported inside functions because it
costs about 0.3 s and `brainpipe.cachefile` is imported on paths that never open a cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.cachefile.layout import FORMAT_VERSION, STATUS_DONE, decode_strings, task_of
from brainpipe.errors import BrainpipeError

# A compressed /signals stores EEG at 2-4x; a declared size this far beyond what is on disk is
# a crafted or torn file, not a cache (reading it would allocate terabytes or scan for hours).
MAX_COMPRESSION_RATIO = 1000


def _check_declared_sizes(f, file_size: int) -> None:
    """Refuse datasets whose declared size the file cannot hold, before reading any of them."""
    import h5py

    def check(name, d):
        if not isinstance(d, h5py.Dataset):
            return
        nbytes = int(np.prod(d.shape, dtype=object)) * d.id.get_type().get_size()
        if d.chunks is None:
            too_big = (d.id.get_offset() or 0) + nbytes > file_size
        else:  # chunked: compare with the bytes actually stored
            too_big = nbytes > max(file_size, d.id.get_storage_size()) * MAX_COMPRESSION_RATIO
        if too_big:
            raise ValueError(
                f"/{name} declares {d.shape} ({nbytes:,} bytes), the file has {file_size:,}"
            )

    f.visititems(check)


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
            try:
                self._load(f)
            except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
                why = (str(e).splitlines() or [type(e).__name__])[0]
                raise BrainpipeError(
                    f"{self.path}: corrupt cache ({why}); rebuild it with `brainpipe build-cache --force`"
                ) from None
        self._check_bounds()
        self._mm: np.memmap | None = None
        self._h5 = None

    def _load(self, f) -> None:
        """Attributes and tables, each size checked against the file before it is read."""
        _check_declared_sizes(f, self.path.stat().st_size)
        a = f.attrs
        self.attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in a.items()}
        self.channels = tuple(json.loads(a["channels"]))
        self.label_names = tuple(json.loads(a["label_names"]))
        self.task = task_of(self.attrs, self.label_names)
        self.sfreq = float(a["sfreq"])
        self.window_samples = int(a["window_samples"])
        self.stride_samples = int(a["stride_samples"])
        # "grid", or "events": one window per event (caches before the attribute: grid)
        self.window_anchor = str(a.get("window_anchor", "grid"))
        self.config = json.loads(a["config"]) if "config" in a else {}
        g = f["recordings"]
        self.recordings = {k: g[k][()] for k in g}
        for k in ("path", "subject", "session", "split"):
            self.recordings[k] = decode_strings(self.recordings[k])
        self.windows = {k: f["windows"][k][()] for k in f["windows"]}
        self.subjects = {k: f["subjects"][k][()] for k in f["subjects"]}
        self.subjects["name"] = decode_strings(self.subjects["name"])
        self.events = {k: f["events"][k][()] for k in f["events"]}
        self.events["label"] = decode_strings(self.events["label"])
        self.skipped = [
            {"path": p, "reason": r}
            for p, r in zip(
                decode_strings(f["skipped"]["path"][()]),
                decode_strings(f["skipped"]["reason"][()]),
                strict=True,
            )
        ]
        d = f["signals"]
        self.shape = tuple(d.shape)
        self.dtype = d.dtype
        off = d.id.get_offset()
        self._offset = None if off is None else int(off)

    def _check_bounds(self) -> None:
        """Every window and recording lies inside /signals (a crafted table must not read past it)."""
        n_rows = self.shape[0]
        ws, wr = self.windows["start"], self.windows["recording"]
        off, length = self.recordings["offset"], self.recordings["length"]
        bad = None
        if not 0 < self.window_samples <= n_rows:
            bad = f"window_samples={self.window_samples} but /signals has {n_rows} rows"
        elif len(off) and ((off < 0) | (length < 0) | (off + length > n_rows)).any():
            bad = f"recordings extend past the end of /signals ({n_rows} rows)"
        elif len(ws) and ((ws < 0) | (ws > n_rows - self.window_samples)).any():
            bad = f"windows extend past the end of /signals ({n_rows} rows)"
        elif len(wr) and ((wr < 0) | (wr >= len(off))).any():
            bad = "windows point at recordings that do not exist"
        if bad:
            raise BrainpipeError(
                f"{self.path}: corrupt cache ({bad}); rebuild it with `brainpipe build-cache --force`"
            )

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
