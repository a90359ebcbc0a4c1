"""The `predict` stage: a trained seizure detector's window probabilities and events for a split.

Reads a seizure cache (`brainpipe build-cache` with cache.task: seizure) and a checkpoint
written by `brainpipe train`; writes into the output directory:

    windows.npz         every window of the split: recording (row in the cache), name,
                        start_s (seconds of its recording), prob (seizure probability), and
                        window_s; written atomically
    hyp/<path>.csv_bi   one hypothesis per recording of the split, in TUSZ's own format
                        (TERM rows, `seiz` events with their mean probability as confidence,
                        `# duration`), mirroring the corpus tree; any NEDC or SzCORE scorer
                        reads them, and so does `brainpipe score`
    postprocess.json    the post-processing used and where it came from (the config, or
                        `--tune-on`'s grid search with its scores)
    predict.json        what was predicted, with the throughput

    brainpipe predict --cache data/tusz.h5 --checkpoint runs/tusz/best.pt --split eval \\
        --out runs/tusz/pred --tune-on dev
    brainpipe score --ref data/tusz.h5 --hyp runs/tusz/pred/hyp --sweep

Configuration: the checkpoint's own (the window and preprocessing it was trained with), then
`--config FILE` in its place if given, then `--set` overrides (e.g. `--set
postprocess.threshold=0.7`, `--set train.device=cuda`). Batches come through the same loader as
training's (`runtime.make_loader`: the dataset, batch sampler and worker settings), every
window once, in order, in one process on one device (`train.device`; no DDP: inference of a
TUSZ split takes minutes, not hours).

Post-processing (`detection.detect_events`): the config's `postprocess` section; with
`--tune-on SPLIT` its values are instead chosen on that split (a validation split: TUSZ's
`dev`, or `val`, the validation set `train` used: its `train.val_split`, else the subjects it
carved out of the train split) by a grid search that
keeps the settings with the highest NEDC OVLP sensitivity at no more than
`postprocess.tune_fa_per_24h` false alarms per 24 h (ties: the setting nearest the config's
own). Never tune on the split you report.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainpipe.annotations import Event, write_hypothesis
from brainpipe.cachefile import STATUS_DONE, CacheReader
from brainpipe.config import (
    Config,
    PostprocessConfig,
    config_from_dict,
    load_config,
    parse_override,
)
from brainpipe.datasets import CacheWindowDataset
from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output, check_writable_dir
from brainpipe.metrics import detect_recordings, seizure_column, window_starts_s
from brainpipe.protocols import plan_splits
from brainpipe.samplers import WindowBatchSampler
from brainpipe.scoring import CacheReferences, LabelScore, cache_references, score
from brainpipe.training.models import load_checkpoint_model
from brainpipe.training.objectives import class_probabilities
from brainpipe.training.rundir import load_checkpoint, write_json
from brainpipe.training.runtime import make_loader, open_checked_cache, resolve_device

# The grid `--tune-on` searches (the detection threshold runs over metrics.SWEEP_THRESHOLDS)
TUNE_SMOOTH_WINDOWS = (1, 3, 5, 9)
TUNE_MIN_DURATION_WINDOWS = (0.0, 1.0, 2.0)  # in window lengths
TUNE_MERGE_GAP_S = (0.0, 10.0, 30.0)
TUNE_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass
class WindowProbs:
    """Seizure probabilities of every window of one split, with where each window lies."""

    recording: np.ndarray  # row in the cache's recordings table
    start_s: np.ndarray  # seconds of its recording
    prob: np.ndarray
    window_s: float
    seconds: float  # wall time of the inference


def resolve_config(
    ckpt: dict[str, Any], config: str | os.PathLike | None, overrides: list[str] | tuple = ()
) -> Config:
    """The checkpoint's config (or `config`'s in its place) with `--set` overrides applied."""
    if config is not None:
        return load_config(config, list(overrides))
    data = json.loads(json.dumps(ckpt["config"]))  # a deep copy
    for item in overrides:
        key, value = parse_override(item)
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise BrainpipeError(f"--set {key}: {p!r} is not a section")
        node[last] = value
    return config_from_dict(data)


def open_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    ckpt = load_checkpoint(path)
    missing = [k for k in ("model", "model_args", "config") if k not in ckpt]
    if missing:
        raise BrainpipeError(
            f"{path}: a checkpoint written by `brainpipe train` holds {missing}; this one does not"
        )
    return ckpt


def split_dataset(reader: CacheReader, cfg: Config, split: str) -> CacheWindowDataset:
    """Every window of a split (`val`: the validation set `train` used: the corpus's split
    `train.val_split` when the run named one, else the subjects it carved from 'train')."""
    w = cfg.window
    kw: dict[str, Any] = dict(
        window_s=w.seconds, stride_s=w.stride_seconds, label_overlap=w.label_overlap
    )
    if split == "val":
        val = plan_splits(reader, cfg).val
        if val is None:
            raise BrainpipeError(
                f"{reader.path}: train.val_fraction={cfg.train.val_fraction} leaves no "
                "validation subjects to predict; pass a split of the cache instead"
            )
        return CacheWindowDataset(
            reader, val.split, subjects=val.subjects, labelled_only=False, **kw
        )
    r = reader.recordings
    splits = sorted(set(r["split"][r["status"] == STATUS_DONE].tolist()))
    if split not in splits:
        raise BrainpipeError(
            f"{reader.path}: no recordings in split {split!r}; the cache has "
            f"{', '.join(map(repr, splits)) or 'none'} (or 'val': the validation subjects)"
        )
    return CacheWindowDataset(reader, split, labelled_only=False, **kw)


def window_probabilities(
    model: torch.nn.Module, ds: CacheWindowDataset, cfg: Config, device: torch.device
) -> WindowProbs:
    """Batch inference over every window of `ds`, through the training loader."""
    t = cfg.train
    sampler = WindowBatchSampler(len(ds), t.batch_size, shuffle=False, even=False)
    loader, _ = make_loader(ds, sampler, device, t.num_workers, t.prefetch_factor)
    started = time.perf_counter()
    probs = (
        class_probabilities(model, loader, device, t.amp)
        if len(ds)
        else np.zeros((0, len(ds.label_names)))
    )
    seconds = time.perf_counter() - started
    del loader  # stops its workers
    return WindowProbs(
        ds.recording.copy(),
        window_starts_s(ds.reader, ds.recording, ds.start),
        probs[:, seizure_column(ds.label_names)].astype(np.float32),
        ds.window_samples / ds.sfreq,
        seconds,
    )


def split_rows(reader: CacheReader, ds: CacheWindowDataset, split: str) -> np.ndarray:
    """The recordings a split's hypotheses cover: every finished one, windows or not."""
    r = reader.recordings
    if split == "val":
        return np.unique(ds.recording)
    return np.flatnonzero((r["status"] == STATUS_DONE) & (r["split"] == split))


def detect_split(
    w: WindowProbs, refs: CacheReferences, rows: np.ndarray, pp: PostprocessConfig
) -> dict[int, np.ndarray]:
    """Each recording of `rows`: its events (n, 3) onset_s, offset_s, confidence."""
    pos = {int(r): i for i, r in enumerate(refs.rows.tolist())}
    durations = {int(r): refs.durations_s[pos[int(r)]] for r in rows.tolist()}
    return detect_recordings(w.prob, w.recording, w.start_s, w.window_s, durations, pp)


def score_split(refs: CacheReferences, hyp: dict[int, np.ndarray]) -> LabelScore:
    """NEDC OVLP seizure scores of detected events against the cache's references."""
    pos = {int(r): i for i, r in enumerate(refs.rows.tolist())}
    keys = sorted(hyp)
    s = score(
        [refs.events[pos[k]] for k in keys],
        [hyp[k][:, :2] for k in keys],
        [refs.durations_s[pos[k]] for k in keys],
    )
    return s.labels["seiz"]


def tune_postprocess(
    w: WindowProbs, refs: CacheReferences, rows: np.ndarray, base: PostprocessConfig
) -> tuple[PostprocessConfig, dict[str, Any]]:
    """The grid's settings with the highest OVLP sensitivity within `base.tune_fa_per_24h`
    false alarms per 24 h (ties: fewer false alarms, then the nearest to `base`: threshold,
    smoothing, minimum duration, merge gap); when none is within the budget, the fewest false
    alarms. Returns them and a record of the search."""
    grid = list(
        itertools.product(
            TUNE_SMOOTH_WINDOWS, TUNE_MIN_DURATION_WINDOWS, TUNE_MERGE_GAP_S, TUNE_THRESHOLDS
        )
    )
    best_key, best, best_scores = None, base, {}
    for k, m, gap, th in grid:
        pp = replace(
            base, smooth_windows=k, threshold=th, min_duration_s=m * w.window_s, merge_gap_s=gap
        )
        s = score_split(refs, detect_split(w, refs, rows, pp))
        within = s.fa_per_24h <= base.tune_fa_per_24h
        # ties go to the setting nearest the config's own: on a small validation split many
        # settings tie, and the first of the grid (no smoothing, lowest threshold) overfits it
        near = (
            -abs(th - base.threshold),
            -abs(k - base.smooth_windows),
            -abs(pp.min_duration_s - base.min_duration_s),
            -abs(gap - base.merge_gap_s),
        )
        key = (
            (True, s.sensitivity, -s.fa_per_24h, *near)
            if within
            else (False, -s.fa_per_24h, s.sensitivity, *near)
        )
        if best_key is None or key > best_key:
            best_key, best = key, pp
            best_scores = {
                "sensitivity": s.sensitivity,
                "precision": s.precision,
                "f1": s.f1,
                "fa_per_24h": s.fa_per_24h,
                "within_budget": within,
            }
    return best, {"settings_tried": len(grid), "scores": best_scores}


def predict(
    cache_path: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "eval",
    config: str | os.PathLike | None = None,
    overrides: list[str] | tuple = (),
    tune_on: str | None = None,
) -> dict[str, Any]:
    """Predict a split of a seizure cache; returns the summary also written to predict.json."""
    started = time.perf_counter()
    out = Path(out_dir)
    ckpt = open_checkpoint(checkpoint)
    cfg = resolve_config(ckpt, config, overrides)
    reader = open_checked_cache(cache_path, cfg)
    if reader.task != "seizure":
        raise BrainpipeError(
            f"{reader.path}: predict detects seizures and needs a seizure cache "
            f"(cache.task: seizure); this one's task is {reader.task or 'none'!r}"
        )
    if tune_on is not None and tune_on == split:
        raise BrainpipeError(
            f"--tune-on {tune_on} is the split being predicted; tune on a validation split "
            "(e.g. dev, or val) so the reported numbers stay honest"
        )
    check_writable_dir(out / "predict.json")
    device = resolve_device(cfg.train.device)
    model = load_checkpoint_model(ckpt, str(checkpoint))
    model.to(device)
    refs = cache_references(reader)

    pp, source = cfg.postprocess, {"from": "config"}
    if tune_on is not None:
        tune_ds = split_dataset(reader, cfg, tune_on)
        tw = window_probabilities(model, tune_ds, cfg, device)
        pp, search = tune_postprocess(tw, refs, split_rows(reader, tune_ds, tune_on), pp)
        source = {"from": f"--tune-on {tune_on}", **search}
    write_json(out / "postprocess.json", {**asdict(pp), "source": source})

    ds = split_dataset(reader, cfg, split)
    w = window_probabilities(model, ds, cfg, device)
    hyp = detect_split(w, refs, split_rows(reader, ds, split), pp)
    write_predictions(out, reader, refs, w, hyp)
    scored = score_split(refs, hyp)
    summary = {
        "cache": str(reader.path),
        "checkpoint": str(checkpoint),
        "split": split,
        "n_recordings": len(hyp),
        "n_windows": len(w.prob),
        "windows_per_s": len(w.prob) / w.seconds if w.seconds > 0 else None,
        "device": str(device),
        "postprocess": asdict(pp),
        "postprocess_source": source,
        "n_events": sum(len(e) for e in hyp.values()),
        # the cache's own references, for a first look; `brainpipe score` is the full report
        "nedc_ovlp": asdict(scored),
        "out": {"windows": str(out / "windows.npz"), "hyp": str(out / "hyp")},
        "time_s": time.perf_counter() - started,
    }
    write_json(out / "predict.json", summary)
    return summary


def write_predictions(
    out: Path, reader: CacheReader, refs: CacheReferences, w: WindowProbs, hyp: dict
) -> None:
    """windows.npz, and one hypothesis .csv_bi per recording of `hyp` (row -> its events)."""
    r = reader.recordings
    pos = {int(x): i for i, x in enumerate(refs.rows.tolist())}
    for row, events in hyp.items():
        rel = Path(str(r["path"][row])).with_suffix(".csv_bi")
        if rel.is_absolute():  # a generic corpus may index absolute paths
            rel = Path(*rel.parts[1:])
        # the mean of probabilities, clipped: float32 sums may land a hair outside [0, 1]
        evs = [
            Event(float(a), float(b), "seiz", "TERM", min(max(float(c), 0.0), 1.0))
            for a, b, c in events
        ]
        write_hypothesis(out / "hyp" / rel, evs, refs.durations_s[pos[row]])
    with atomic_output(out / "windows.npz") as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            recording=w.recording,
            name=np.array([refs.names[pos[int(x)]] for x in w.recording.tolist()], dtype=str),
            start_s=w.start_s,
            prob=w.prob,
            window_s=np.float64(w.window_s),
        )
