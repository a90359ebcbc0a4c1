"""Benchmark prediction throughput, post-processing and event scoring for 1,000 recordings.

    python scripts/bench_predict.py [--n-recordings 1000] [--keep DIR]
    python scripts/bench_predict.py --cache data/tusz.h5 --checkpoint runs/tusz/best.pt \
        [--split eval] [--set train.device=cuda ...]

Prediction (first, when torch is installed): the windows/s of `predict`'s batch inference
(`predict.window_probabilities`: the training loader, the model, softmax, every window of the
split once) beside the training read rate (the training loader alone, shuffled batches through
the batch ring, no model): the first is bounded by the second plus the model's forward pass.
Without --cache/--checkpoint it builds a synthetic TUSZ cache (configs/tusz_smoke.yaml, 24
subjects) and an untrained checkpoint in a temporary directory; the model's weights do not
change its speed.

On TUSZ-like recordings (5-60 min, seizures in one in three; an imperfect detector's window
probabilities at 4 s windows, 1 s stride: a fifth of the seizures missed, artifact bursts):
(a) post-processing: window probabilities -> events (`detection.detect_events`), all recordings;
(b) scoring those events with each method (`scoring.score`, arrays in memory);
(c) the `brainpipe score` path: hypothesis `.csv_bi` files written, both trees read and paired,
    scored with NEDC OVLP (`score.score_trees`), then once with `--sweep` (about 100
    thresholds).
Prints seconds and recordings/s for each (best of 3).
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
from brainpipe.score import score_trees
from brainpipe.scoring import METHODS, score

WINDOW_S, STRIDE_S = 4.0, 1.0
REPO = Path(__file__).resolve().parents[1]


def synthetic_checkpoint(tmp: Path) -> tuple[Path, Path]:
    """A synthetic TUSZ cache and an untrained checkpoint of tusz_smoke.yaml's model."""
    from brainpipe.cache import build_cache
    from brainpipe.cachefile import CacheReader
    from brainpipe.config import load_config
    from brainpipe.index import build_index
    from brainpipe.synthetic import make_corpus
    from brainpipe.training.models import build_model, model_args
    from brainpipe.training.rundir import save_checkpoint

    cfg = load_config(REPO / "configs" / "tusz_smoke.yaml")
    make_corpus(tmp / "raw", "tusz", n_subjects=24, seed=0)
    build_index(tmp / "raw", tmp / "index.npz", cfg, progress=False)
    build_cache(tmp / "index.npz", tmp / "cache.h5", cfg, progress=False)
    with CacheReader(tmp / "cache.h5") as r:
        n_times = int(round(cfg.window.seconds * r.sfreq))
        margs = model_args(cfg.train.model, cfg.train.model_kwargs, r.n_channels, n_times,
                           len(r.label_names), r.sfreq)  # fmt: skip
    model = build_model(margs)
    ckpt = {"model": model.state_dict(), "model_args": margs, "config": cfg.to_dict()}
    save_checkpoint(ckpt, tmp / "best.pt")
    return tmp / "cache.h5", tmp / "best.pt"


def bench_prediction(cache: Path, checkpoint: Path, split: str, overrides: list[str]) -> None:
    from brainpipe.ring import host_batch
    from brainpipe.training.models import build_model
    from brainpipe.training.predict import (
        open_checkpoint,
        resolve_config,
        split_dataset,
        window_probabilities,
    )
    from brainpipe.training.runtime import (
        DistEnv,
        make_datasets,
        make_loaders,
        open_checked_cache,
        resolve_device,
    )

    ckpt = open_checkpoint(checkpoint)
    cfg = resolve_config(ckpt, None, overrides)
    reader = open_checked_cache(cache, cfg)
    device = resolve_device(cfg.train.device)
    data = make_datasets(reader, cfg)
    loaders = make_loaders(data, cfg, DistEnv(), device)
    try:
        batches, n, t = iter(loaders.train), 0, time.perf_counter()
        for _ in range(loaders.steps_per_epoch):
            n += len(host_batch(next(batches))[1])
        read_s = time.perf_counter() - t
    finally:
        if loaders.ring is not None:
            loaders.ring.close()
    print(
        f"training read rate ({cfg.train.num_workers} workers, no model): {n / read_s:,.0f} windows/s"
    )
    model = build_model(ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    model.to(device)
    ds = split_dataset(reader, cfg, split)
    window_probabilities(model, ds, cfg, device)  # warm-up: workers, kernels, page cache
    w = min(
        (window_probabilities(model, ds, cfg, device) for _ in range(3)), key=lambda w: w.seconds
    )
    print(
        f"predict {split!r}: {len(w.prob):,} windows of {len(set(w.recording.tolist()))} recordings "
        f"in {w.seconds:.2f} s: {len(w.prob) / w.seconds:,.0f} windows/s on {device} "
        f"({ckpt['model_args']['name']}, batch {cfg.train.batch_size})"
    )


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
    ap.add_argument("--cache", help="seizure cache for the prediction benchmark")
    ap.add_argument("--checkpoint", help="checkpoint for the prediction benchmark")
    ap.add_argument("--split", default="eval", help="split to predict (default: eval)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-predict", action="store_true", help="scoring benchmarks only")
    args = ap.parse_args()
    if not args.no_predict:
        with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
            if args.cache and args.checkpoint:
                cache, ckpt = Path(args.cache), Path(args.checkpoint)
            else:
                print("building a synthetic TUSZ cache and an untrained checkpoint ...")
                cache, ckpt = synthetic_checkpoint(Path(tmp))
            bench_prediction(cache, ckpt, args.split, args.overrides)
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
