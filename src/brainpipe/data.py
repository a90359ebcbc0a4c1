"""Datasets and samplers, free of torch so every stage can import them.

They are map-style datasets by duck typing (`__len__`, `__getitem__`, `__getitems__`), which is
all `torch.utils.data.DataLoader` needs, and they pickle (no open file handles in their state), so
they work with `num_workers > 0` under the fork, spawn and forkserver start methods.

No start-up path builds per-window Python objects: windows are computed with vectorized numpy
from per-recording lengths, and `__getitem__` maps an index to (recording, offset) with
`np.searchsorted`.

    ds = EdfWindowDataset("data/index.npz", window_s=10.0, stride_s=5.0, channels=STANDARD_1020)
    x, y = ds[123]          # float32 (19, 10 * sfreq) in Volts, recording label (or -1)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainpipe.errors import BrainpipeError


def window_counts(n_samples: np.ndarray, window: np.ndarray | int, stride: np.ndarray | int) -> np.ndarray:
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
        from brainpipe.index import Index
        from brainpipe.preprocess import canonical_name

        if not isinstance(index, Index):
            index = Index.load(index)
        if window_s <= 0 or (stride_s is not None and stride_s <= 0):
            raise BrainpipeError(f"window_s={window_s}, stride_s={stride_s}: both must be > 0")
        a = index.arrays
        n = len(index)
        rates = a["sfreq"]
        if sfreq is None:
            vals, counts = np.unique(rates, return_counts=True) if n else (np.array([0.0]), np.array([1]))
            sfreq = float(vals[np.argmax(counts)])
        self.sfreq = float(sfreq)
        self.window = int(round(window_s * self.sfreq))
        self.stride = int(round((stride_s or window_s) * self.sfreq))
        self.raw_root = str(raw_root or index.raw_root)

        keep = np.isclose(rates, self.sfreq)
        self.excluded: list[tuple[str, str]] = [(str(p), f"sample rate {r:g} Hz != {self.sfreq:g} Hz") for p, r in zip(a["path"][~keep], rates[~keep], strict=True)]
        if split is not None:
            keep &= a["split"] == split

        # Channel picks are resolved once per distinct channel set (a corpus has a handful), then
        # broadcast to recordings: O(recordings) numpy, not a loop over recordings.
        chansets = a["chanset"]
        n_sets = len(a["chanset_offsets"]) - 1
        wanted = [canonical_name(c) for c in channels] if channels is not None else None
        set_picks = np.full((n_sets, len(wanted) if wanted else 0), -1, dtype=np.int64)
        set_ok = np.ones(n_sets, dtype=bool)
        for s in range(n_sets):
            lo, hi = a["chanset_offsets"][s], a["chanset_offsets"][s + 1]
            labels = a["chanset_labels"][lo:hi].tolist()
            srates = a["chanset_sfreqs"][lo:hi]
            if wanted is None:
                continue
            names = {}
            for j, lab in enumerate(labels):
                if np.isclose(srates[j], self.sfreq):
                    names.setdefault(canonical_name(lab), j)
            picks = [names.get(w, -1) for w in wanted]
            set_picks[s] = picks
            set_ok[s] = min(picks) >= 0
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
        self.label_names = tuple(label_names) if label_names is not None else tuple(sorted(set(labels.tolist()) - {""}))
        lookup = {name: k for k, name in enumerate(self.label_names)}
        self.labels = np.array([lookup.get(x, -1) for x in labels.tolist()], dtype=np.int64) if len(labels) else np.zeros(0, np.int64)
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
            picks = [j for j, s in zip(h.signal_indices, rate_of, strict=True) if np.isclose(s, self.sfreq)]
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
