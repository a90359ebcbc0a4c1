"""Evaluation protocols, torch-free: subject-wise folds, the seeds x folds grid, aggregation.

A protocol is several runs of one config whose numbers are reported together:

- **seeds**: the same run with `train.seed` = each of the seeds (`--seeds 0,1,2,3,4`);
- **folds**: subject-wise K-fold cross-validation (MOABB's CrossSubject evaluation): the
  subjects of `train` (or of every split) are assigned to K folds (`assign_folds`), run F
  holds out fold F as its eval set and trains on the rest; a subject is never in two folds;
- both: the grid of every seed with every fold.

Each run of the grid is a sub-run of one parent run dir (`Cell.name`: `seed-0`, `fold-1`,
`seed-0-fold-1`); `aggregate` turns their summary.json files into the parent's: every metric
as mean and std over the runs, per split, at window and recording level.

    cells = grid([0, 1, 2], folds=5)               # 15 cells, seed-0-fold-0 ... seed-2-fold-4
    fold_of = assign_folds(subjects, 5, seed=0)    # subject -> fold
    summary = aggregate({c.name: json.load(...) for c in cells}, seeds=[0, 1, 2], folds=5)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from brainpipe.errors import BrainpipeError

if TYPE_CHECKING:
    from brainpipe.cachefile import CacheReader
    from brainpipe.config import Config

# The splits of a run's summary.json that are aggregated (val: best.pt's validation scores).
AGGREGATED = ("eval", "val", "eval_last")


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` (or a range `0-4`) -> [0, 1, 2]; one BrainpipeError when malformed."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, sep, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if sep and lo else [int(part)]
    except ValueError as e:
        raise BrainpipeError(f"--seeds {text!r}: expected integers, e.g. --seeds 0,1,2,3,4") from e
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise BrainpipeError(f"--seeds {text!r}: expected distinct seeds >= 0, e.g. 0,1,2,3,4")
    return seeds


@dataclass(frozen=True)
class Cell:
    """One run of a protocol's grid: its seed and its fold (None without folds)."""

    seed: int
    fold: int | None
    seeded: bool  # a --seeds grid: the seed is part of the name

    @property
    def name(self) -> str:
        parts = ([f"seed-{self.seed}"] if self.seeded else []) + (
            [f"fold-{self.fold}"] if self.fold is not None else []
        )
        return "-".join(parts)


def grid(seeds: Sequence[int] | None, folds: int = 0, base_seed: int = 0) -> list[Cell]:
    """The runs of a protocol, seed-major (`--cell I` of a Slurm array is the I-th)."""
    if folds == 1 or folds < 0:
        raise BrainpipeError(f"--folds {folds}: cross-validation needs at least 2 folds")
    fold_ids: list[int | None] = list(range(folds)) if folds else [None]
    return [
        Cell(s, f, seeds is not None)
        for s in (seeds if seeds is not None else [base_seed])
        for f in fold_ids
    ]


def _order(names: Sequence[str], seed: int) -> list[str]:
    # A keyed hash, as samplers' validation carve: a subject's fold for a seed is the same on
    # any machine, whatever else is in the corpus.
    return sorted(names, key=lambda s: hashlib.sha256(f"fold:{seed}:{s}".encode()).hexdigest())


def assign_folds(
    subjects: Sequence[str] | np.ndarray,
    k: int,
    seed: int = 0,
    classes: Sequence[int] | np.ndarray | None = None,
) -> dict[str, int]:
    """Subject -> fold in 0..k-1: deterministic from `seed`, fold sizes differ by at most one.

    Subjects are dealt round-robin in the order of a keyed hash; with `classes` (one per
    subject, e.g. its recordings' label) class by class, continuing the deal, so each fold also
    gets its share of every class. Fails in one line with fewer subjects than folds.
    """
    names = [str(s) for s in subjects]
    if len(set(names)) != len(names):
        raise BrainpipeError("assign_folds: each subject must be named once")
    if k < 2 or len(names) < k:
        raise BrainpipeError(
            f"--folds {k}: needs at least 2 folds and at least one subject per fold "
            f"({len(names)} subjects); lower --folds"
        )
    cls = np.zeros(len(names), np.int64) if classes is None else np.asarray(classes, np.int64)
    out: dict[str, int] = {}
    position = 0
    for c in np.unique(cls).tolist():
        for name in _order([n for n, x in zip(names, cls.tolist(), strict=True) if x == c], seed):
            out[name] = position % k
            position += 1
    return out


# ---------------------------------------------------------------------------------------------
# Which windows a run trains, validates and is scored on
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """Windows of one role: recordings of `split` (None: every split), only `subjects` if set."""

    split: str | None
    subjects: np.ndarray | None = None


@dataclass(frozen=True)
class SplitPlan:
    """The train / validation / eval windows of a classification run (val, eval None: none)."""

    train: Part
    val: Part | None
    eval: Part | None
    how: str  # for people: where validation and eval come from


def cache_splits(reader: CacheReader) -> list[str]:
    from brainpipe.cachefile import STATUS_DONE

    r = reader.recordings
    return sorted(set(r["split"][r["status"] == STATUS_DONE].tolist()))


def _need_split(reader: CacheReader, name: str, key: str) -> None:
    splits = cache_splits(reader)
    if name not in splits:
        raise BrainpipeError(
            f"{reader.path}: no recordings in split {name!r} ({key}); the cache has "
            f"{', '.join(map(repr, splits)) or 'none'}"
        )


def plan_splits(reader: CacheReader, cfg: Config) -> SplitPlan:
    """Where a classification run's train, validation and eval windows come from.

    - validation: the corpus's own split `train.val_split` when set, else subjects carved
      from the training subjects (`samplers.carve_validation`, `train.val_fraction`);
    - eval: `train.eval_split`; with `train.folds` the held-out fold instead: the subjects of
      `train` (or of every split, `fold_splits: all`) in fold `train.fold` of
      `assign_folds(..., train.fold_seed)`, stratified by subject class.
    """
    from brainpipe.samplers import carve_validation, subject_classes

    t = cfg.train
    _need_split(reader, "train", "the training split")
    if t.val_split:
        _need_split(reader, t.val_split, "train.val_split")
        if t.val_split in ("train", t.eval_split if not t.folds else None):
            raise BrainpipeError(
                f"train.val_split={t.val_split!r} is also the {t.val_split!r} split trained on or "
                "reported; name a validation split of its own (e.g. dev or val)"
            )
        if t.folds and t.fold_splits == "all":
            raise BrainpipeError(
                "train.val_split with train.fold_splits=all: the validation split would also be "
                "folded; use fold_splits=train, or carve validation (train.val_split='')"
            )
    pool = None if t.folds and t.fold_splits == "all" else "train"
    train_subjects, eval_part = None, (Part(t.eval_split) if t.eval_split else None)
    how = f"eval: {t.eval_split!r}" if t.eval_split else "no eval split"
    if t.folds:
        names, classes = subject_classes(reader, pool)
        fold_of = assign_folds(names, t.folds, t.fold_seed, classes)
        held = np.array(sorted(n for n, f in fold_of.items() if f == t.fold), dtype=str)
        train_subjects = np.array(sorted(n for n, f in fold_of.items() if f != t.fold), dtype=str)
        eval_part = Part(pool, held)
        how = (
            f"eval: fold {t.fold} of {t.folds} ({len(held)} subjects of "
            f"{'every split' if pool is None else repr(pool)}, fold seed {t.fold_seed})"
        )
    if t.val_split:
        return SplitPlan(
            Part(pool, train_subjects), Part(t.val_split), eval_part,
            f"validation: split {t.val_split!r}; {how}",
        )  # fmt: skip
    train_s, val_s = carve_validation(reader, t.val_fraction, t.seed, pool, train_subjects)
    if t.val_fraction > 0 and len(val_s) == 0:
        raise BrainpipeError(
            f"train.val_fraction={t.val_fraction} leaves no validation subject: split 'train' "
            f"has {len(train_s)} subjects and each class needs two; set "
            "train.val_fraction=0, name the corpus's validation split (train.val_split) or "
            "add subjects"
        )
    val = Part(pool, val_s) if len(val_s) else None
    carved = f"validation: {len(val_s)} subjects carved from train" if val else "no validation"
    return SplitPlan(Part(pool, train_s), val, eval_part, f"{carved}; {how}")


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


def _stats(values: list[Any]) -> Any:
    """mean and std (numpy's, ddof=0) of numbers or same-shaped number lists; None values
    (NaN in JSON) are left out and counted in `n`."""
    arrays = [np.asarray(v, np.float64) for v in values if v is not None]
    shapes = {a.shape for a in arrays}
    if not arrays or len(shapes) != 1:
        return None
    stack = np.stack(arrays)
    finite = np.isfinite(stack).all(axis=tuple(range(1, stack.ndim)))
    stack = stack[finite]
    if not len(stack):
        return {"mean": None, "std": None, "n": 0}
    mean, std = stack.mean(0), stack.std(0)
    if stack.ndim == 1:
        return {"mean": float(mean), "std": float(std), "n": len(stack)}
    return {"mean": mean.tolist(), "std": std.tolist(), "n": len(stack)}


def _numeric(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int | float) or v is None:
        return True
    return isinstance(v, list) and bool(v) and all(_numeric(x) and x is not None for x in v)


def aggregate_metrics(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One split's metrics of several runs -> {metric: {mean, std, n}}, nested dicts kept
    (events), number lists (a confusion matrix) element-wise; lists of anything else dropped."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r if k not in keys]
    out: dict[str, Any] = {}
    for key in keys:
        values = [r.get(key) for r in runs]
        present = [v for v in values if v is not None]
        if present and all(isinstance(v, dict) for v in present):
            out[key] = aggregate_metrics(present)
        elif all(_numeric(v) for v in values) and (stats := _stats(values)) is not None:
            out[key] = stats
    return out


def aggregate(
    summaries: Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int] | None,
    folds: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The parent run dir's summary.json from its sub-runs' (by cell name).

    Per split of `AGGREGATED` (eval, val: best.pt's validation scores, eval_last) every metric
    as `{"mean", "std", "n"}` over the runs, at window and recording level as the runs report
    them; `runs` keeps each sub-run's eval and val metrics; `best_epoch` and `epochs` too.
    """
    if not summaries:
        raise BrainpipeError("nothing to aggregate: no finished sub-run")
    runs = list(summaries.values())
    out: dict[str, Any] = {
        "protocol": {
            "seeds": list(seeds) if seeds is not None else None,
            "folds": folds,
            "n_runs": len(runs),
            "runs": list(summaries),
        },
    }
    for split in AGGREGATED:
        out[split] = aggregate_metrics([r.get(split) or {} for r in runs])
    out["best_epoch"] = _stats([r.get("best_epoch") for r in runs])
    out["runs"] = {
        name: {k: r.get(k) for k in ("eval", "val", "best_epoch", "epochs", "fold_subjects")}
        for name, r in summaries.items()
    }
    first = runs[0]
    for key in ("label_names", "model", "cache", "select_by"):
        if key in first:
            out[key] = first[key]
    out.update(extra or {})
    return out


def mean_std_text(stats: Mapping[str, Any] | None, digits: int = 3) -> str:
    """`0.812 ± 0.021` of an aggregated metric; `n/a` when undefined."""
    if not stats or stats.get("mean") is None or isinstance(stats["mean"], list):
        return "n/a"
    m, s = stats["mean"], stats["std"]
    if not (math.isfinite(m) and math.isfinite(s)):
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}"
