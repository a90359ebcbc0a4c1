"""Window probabilities to seizure events: smoothing, threshold, gap merging, minimum duration.

Pure numpy over one recording's windows, so `predict` (hypothesis files) and `train`
(validation event metrics) share the same post-processing:

    from brainpipe.detection import detect_events
    onset_s, offset_s, confidence = detect_events(
        probs, starts_s, window_s=4.0, threshold=0.8, smooth_windows=5,
        min_duration_s=2.0, merge_gap_s=10.0, duration_s=rec_duration_s,
    )

The steps, in order:
1. smoothing: a centred moving average of the probabilities over `smooth_windows` windows
   (near the ends, the mean of the windows that exist; an even k has one more window before
   the centre than after);
2. threshold: a window is positive when its smoothed probability is >= `threshold`;
3. events: the union of the positive windows' spans [start, start + window_s], so overlapping or
   touching positive windows make one event;
4. merging: events separated by a gap shorter than `merge_gap_s` seconds become one;
5. minimum duration: events shorter than `min_duration_s` seconds are dropped;
6. clipping to [0, duration_s] when the recording's length is given.

An event's confidence is the mean smoothed probability of the windows lying inside it (the gap
windows of merged events included), taken before clipping.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from brainpipe.annotations import Event
from brainpipe.errors import BrainpipeError


class Detections(NamedTuple):
    """Events of one recording: parallel float64 arrays, seconds from the recording's start."""

    onset_s: np.ndarray
    offset_s: np.ndarray
    confidence: np.ndarray

    def events(self, label: str = "seiz") -> list[Event]:
        return [
            Event(float(a), float(b), label, "TERM", float(c))
            for a, b, c in zip(self.onset_s, self.offset_s, self.confidence, strict=True)
        ]


def smooth(probs: np.ndarray, k: int) -> np.ndarray:
    """Centred moving average over `k` windows; at the ends, the mean of the windows present."""
    p = np.asarray(probs, dtype=np.float64)
    if k < 1:
        raise BrainpipeError(f"smoothing over {k} windows: need at least 1")
    if k == 1 or len(p) == 0:
        return p.copy()
    kernel = np.ones(k)
    total = np.convolve(p, kernel, mode="full")
    count = np.convolve(np.ones(len(p)), kernel, mode="full")
    # `full` output j sums windows j-k+1..j: window i's average, with (k-1)//2 windows after
    # it and k//2 before, sits at j = i + (k-1)//2
    lo = (k - 1) // 2
    return total[lo : lo + len(p)] / count[lo : lo + len(p)]


def _merge(on: np.ndarray, off: np.ndarray, gap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Union of sorted intervals, joining those whose gap is below `gap_s` (touching: gap 0)."""
    if len(on) == 0:
        return on, off
    reach = np.maximum.accumulate(off)
    # a new event starts where the gap to everything before reaches gap_s (or is positive, at 0)
    new = np.empty(len(on), bool)
    new[0] = True
    gaps = on[1:] - reach[:-1]
    new[1:] = gaps >= gap_s if gap_s > 0 else gaps > 0
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(on)) - 1
    return on[first], reach[last]


def detect_events(
    probs: np.ndarray,
    starts_s: np.ndarray,
    window_s: float,
    threshold: float = 0.5,
    smooth_windows: int = 1,
    min_duration_s: float = 0.0,
    merge_gap_s: float = 0.0,
    duration_s: float | None = None,
) -> Detections:
    """Seizure events from one recording's window probabilities (see the module docstring).

    probs: (n_windows,) seizure probabilities in [0, 1]; starts_s: each window's start in seconds,
    ascending; window_s: the window length in seconds.
    """
    p = np.asarray(probs, dtype=np.float64)
    starts = np.asarray(starts_s, dtype=np.float64)
    if p.shape != starts.shape or p.ndim != 1:
        raise BrainpipeError(f"probabilities {p.shape} and window starts {starts.shape} differ")
    if len(starts) > 1 and np.any(np.diff(starts) < 0):
        raise BrainpipeError("window starts must be in ascending time order")
    if not window_s > 0:
        raise BrainpipeError(f"window length {window_s} s must be positive")
    sp = smooth(p, smooth_windows)
    pos = np.flatnonzero(sp >= threshold)
    on, off = _merge(starts[pos], starts[pos] + window_s, merge_gap_s)
    keep = off - on >= min_duration_s
    on, off = on[keep], off[keep]
    conf = _mean_inside(sp, starts, window_s, on, off)
    if duration_s is not None:
        on, off = np.clip(on, 0, duration_s), np.clip(off, 0, duration_s)
        keep = off > on
        on, off, conf = on[keep], off[keep], conf[keep]
    return Detections(on, off, conf)


def _mean_inside(
    sp: np.ndarray, starts: np.ndarray, window_s: float, on: np.ndarray, off: np.ndarray
) -> np.ndarray:
    # every event is a union of whole windows, so at least one window lies inside it
    csum = np.concatenate([[0.0], np.cumsum(sp)])
    lo = np.searchsorted(starts, on, side="left")  # first window starting at/after the onset
    hi = np.searchsorted(starts + window_s, off, side="right")  # past the last ending by offset
    return (csum[hi] - csum[lo]) / np.maximum(hi - lo, 1)
