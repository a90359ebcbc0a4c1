"""Benchmark event scoring and post-processing for 1,000 recordings, in one run.

    python scripts/bench_predict.py [--n-recordings 1000] [--keep DIR]

On TUSZ-like recordings (5-60 min, seizures in one in three; an imperfect detector's window
probabilities at 4 s windows, 1 s stride: a fifth of the seizures missed, artifact bursts):
(a) post-processing: window probabilities -> events (`detection.detect_events`), all recordings;
(b) scoring those events with each method (`scoring.score`, arrays in memory);
(c) the `brainpipe score` path: hypothesis `.csv_bi` files written, both trees read and paired,
    scored with NEDC OVLP (`scoring.score_trees`), then once with `--sweep` (about 100
    thresholds).
Prints seconds and recordings/s for each (best of 3). Prediction throughput (windows/s through
the model) is measured by `predict`'s own benchmark when that command lands.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from brainpipe.annotations import Event, write_hypothesis
from brainpipe.detection import detect_events
from brainpipe.scoring import METHODS, score, score_trees

WINDOW_S, STRIDE_S = 4.0, 1.0


def corpus(n: int, seed: int = 0):
    """(durations, reference intervals, window probabilities) for n recordings."""
    rng = np.random.default_rng(seed)
    durations, refs, probs = [], [], []
    for _ in range(n):
        d = float(rng.uniform(300, 3600))
        seiz = []
        if rng.random() < 1 / 3:
            for _ in range(rng.integers(1, 4)):
                on = float(rng.uniform(0, d - 120))
                seiz.append((on, on + float(rng.uniform(10, 110))))
        starts = np.arange(0, d - WINDOW_S + 1e-9, STRIDE_S)
        p = rng.beta(1, 12, len(starts))  # mostly quiet
        for _ in range(rng.poisson(d / 1800)):  # artifacts the detector mistakes for seizures
            k = int(rng.integers(0, len(starts)))
            p[k : k + int(rng.integers(5, 20))] = rng.uniform(0.4, 0.9)
        for on, off in seiz:
            if rng.random() < 0.2:  # seizures it misses
                continue
            inside = (starts + WINDOW_S > on) & (starts < off)
            p[inside] = np.clip(rng.normal(0.75, 0.15, inside.sum()), 0, 1)
        durations.append(d)
        refs.append(np.array(sorted(seiz)).reshape(-1, 2))
        probs.append((starts, p))
    return durations, refs, probs


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def write_trees(root: Path, names, durations, refs, hyps) -> None:
    for name, d, r, h in zip(names, durations, refs, hyps, strict=True):
        write_hypothesis(root / "ref" / f"{name}.csv_bi", [Event(a, b, "seiz") for a, b in r], d)
        write_hypothesis(root / "hyp" / f"{name}.csv_bi", h.events(), d)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-recordings", type=int, default=1000)
    ap.add_argument("--keep", metavar="DIR", help="write the trees here and keep them")
    args = ap.parse_args()
    n = args.n_recordings
    durations, refs, probs = corpus(n)
    n_windows = sum(len(s) for s, _ in probs)
    hours = sum(durations) / 3600
    print(f"{n} recordings, {hours:.1f} h, {n_windows} windows")

    def post():
        return [
            detect_events(p, s, WINDOW_S, threshold=0.5, smooth_windows=5, min_duration_s=2.0,
                          merge_gap_s=5.0, duration_s=d)
            for (s, p), d in zip(probs, durations, strict=True)
        ]  # fmt: skip

    t = best_of(post)
    hyps = post()
    n_events = sum(len(h.onset_s) for h in hyps)
    print(f"post-processing: {t:.3f} s ({n_windows / t:,.0f} windows/s), {n_events} events")
    hyp_arrays = [np.column_stack([h.onset_s, h.offset_s]) for h in hyps]
    for m in METHODS:
        t = best_of(lambda m=m: score(refs, hyp_arrays, durations, m))
        s = score(refs, hyp_arrays, durations, m).labels["seiz"]
        print(
            f"score {m:<10}: {t:.3f} s ({n / t:,.0f} recordings/s); "
            f"sensitivity {s.sensitivity:.3f} at {s.fa_per_24h:.1f} FA/24h"
        )
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        names = [f"r{i:05d}_s001_t000" for i in range(n)]
        write_trees(root, names, durations, refs, hyps)
        t = best_of(lambda: score_trees(root / "ref", root / "hyp", ["nedc-ovlp"]))
        print(f"brainpipe score (read 2 x {n} files, pair, OVLP): {t:.3f} s")
        t = time.perf_counter()
        (res,) = score_trees(root / "ref", root / "hyp", ["nedc-ovlp"], sweep_curve=True)
        ops = ", ".join(
            f"{p['sensitivity']:.3f} at {p['fa_per_24h']:g}" for p in res["operating_points"]
        )
        print(
            f"brainpipe score --sweep (OVLP): {time.perf_counter() - t:.1f} s; sensitivity {ops} FA/24h"
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
