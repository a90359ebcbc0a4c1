"""Seeds and subject-wise folds from one command: the grid of sub-runs of one parent run dir.

    brainpipe train --cache c.h5 --run-dir runs/x --config cfg.yaml --seeds 0,1,2,3,4
    brainpipe train ... --folds 5                       # runs/x/fold-0 ... fold-4
    brainpipe train ... --seeds 0,1,2 --folds 5         # runs/x/seed-0-fold-0 ... (15 runs)
    brainpipe train ... --seeds 0,1,2 --folds 5 --cell 7 --resume   # one Slurm array task
    brainpipe train ... --seeds 0,1,2 --folds 5 --aggregate         # the step after the array

Each cell is an ordinary `train` run in `RUN_DIR/<cell>/` (resumable: `--resume` continues
unfinished cells and keeps finished ones) with `train.seed` and `train.fold` set; the parent
holds `protocol.json` (the grid and, with folds, every subject's fold) and, once every cell is
done, the aggregate `summary.json` (`protocols.aggregate`: mean and std over the cells).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from brainpipe import cacheset
from brainpipe.config import Config
from brainpipe.errors import BrainpipeError
from brainpipe.protocols import Cell, aggregate, assign_folds, grid
from brainpipe.runfiles import read_summary
from brainpipe.training.rundir import write_json
from brainpipe.training.train import train


def cell_config(cfg: Config, cell: Cell, folds: int) -> Config:
    """The config of one cell: its seed, and with folds its fold."""
    t = dataclasses.replace(cfg.train, seed=cell.seed, folds=folds, fold=cell.fold or 0)
    return dataclasses.replace(cfg, train=t)


def protocol_plan(cache: str | os.PathLike, cfg: Config, seeds: list[int] | None, folds: int):
    """protocol.json's content: the grid, and with folds every subject's fold."""
    from brainpipe.samplers import subject_classes

    t = cfg.train
    plan: dict[str, Any] = {
        "seeds": seeds,
        "folds": folds,
        "cells": [c.name for c in grid(seeds, folds, t.seed)],
    }
    if folds:
        with cacheset.open_cache(cache) as reader:
            pool = None if t.fold_splits == "all" else "train"
            names, classes = subject_classes(reader, pool)
        plan["fold_seed"], plan["fold_splits"] = t.fold_seed, t.fold_splits
        plan["fold_of_subject"] = assign_folds(names, folds, t.fold_seed, classes)
    return plan


def _check_plan(root: Path, plan: dict[str, Any], resume: bool) -> None:
    """A parent run dir holds one protocol: the same grid, or --resume refuses."""
    path = root / "protocol.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    if old != json.loads(json.dumps(plan)):
        changed = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
        raise BrainpipeError(
            f"{root} holds another protocol (differs in {', '.join(changed)}); keep --seeds, "
            "--folds and train.fold_* as they were, or choose another --run-dir"
        )
    if not resume and any((root / c / "last.pt").exists() for c in plan["cells"]):
        raise BrainpipeError(
            f"{root} already holds runs of this protocol; pass --resume to continue them (finished "
            "ones are kept), or choose another --run-dir"
        )


def finished(run_dir: Path, epochs: int) -> bool:
    s = read_summary(run_dir)
    return s is not None and (run_dir / "last.pt").exists() and s.get("epochs", 0) >= epochs


def run_protocol(
    cache: str | os.PathLike,
    run_dir: str | os.PathLike,
    cfg: Config,
    seeds: list[int] | None,
    folds: int = 0,
    resume: bool = False,
    cell: int | None = None,
    aggregate_only: bool = False,
) -> dict[str, Any]:
    """Train the grid's cells (only cell `cell` when given) and write the aggregate summary.

    Returns the parent's summary; with `cell` (a Slurm array task) that cell's own summary.
    """
    root = Path(run_dir)
    if seeds is None and not folds:
        raise BrainpipeError(
            "--cell and --aggregate belong to a protocol: give --seeds and/or --folds"
        )
    cells = grid(seeds, folds, cfg.train.seed)
    if cell is not None and not 0 <= cell < len(cells):
        raise BrainpipeError(f"--cell {cell}: the grid has cells 0 .. {len(cells) - 1}")
    main = int(os.environ.get("RANK", "0")) == 0
    plan = protocol_plan(cache, cfg, seeds, folds)
    if not aggregate_only:
        _check_plan(root, plan, resume)
        if main:
            root.mkdir(parents=True, exist_ok=True)
            write_json(root / "protocol.json", plan)
        for c in cells if cell is None else [cells[cell]]:
            sub = root / c.name
            if finished(sub, cfg.train.epochs):
                print(f"{c.name}: finished, kept", flush=True)
                s = read_summary(sub) or {}
                continue
            print(f"{c.name}: training", flush=True)
            s = train(cache, sub, cell_config(cfg, c, folds), resume=(sub / "last.pt").exists())
        if cell is not None:
            return s
    return write_aggregate(root, cells, plan, cfg.train.epochs, main)


def write_aggregate(
    root: Path, cells: list[Cell], plan: dict[str, Any], epochs: int, main: bool = True
) -> dict[str, Any]:
    """The parent's summary.json from its finished cells; one line naming any unfinished."""
    missing = [c.name for c in cells if not finished(root / c.name, epochs)]
    if missing:
        raise BrainpipeError(
            f"{root}: {len(missing)} of {len(cells)} runs are not finished ({', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''}); run them (--resume, or resubmit their array "
            "tasks), then aggregate"
        )
    summaries = {}
    for c in cells:
        s = read_summary(root / c.name) or {}
        if c.fold is not None:
            of = plan.get("fold_of_subject", {})
            s["fold_subjects"] = sorted(k for k, f in of.items() if f == c.fold)
        summaries[c.name] = s
    extra = {k: plan[k] for k in ("fold_seed", "fold_splits") if k in plan}
    summary = aggregate(summaries, plan["seeds"], plan["folds"], extra={"protocol_plan": extra})
    summary["run_dir"] = str(root)
    if main:
        write_json(root / "summary.json", summary)
    return summary
