"""The run dir's files that need no torch to read: summary.json, metrics.jsonl, predictions.npz.

`training.rundir` writes checkpoints and logs (torch); this module owns `predictions.npz` (the
class probabilities of best.pt on each scored split, with what the report and any later
analysis need: labels, recordings, subjects) and reads a run dir back for `brainpipe report`
and the protocols' aggregation without importing torch.

    predictions.npz     label_names, epoch (best.pt's, 1-based), and per scored split S
                        (val, eval): S/probs (n, k) float32, S/label, S/recording (row in the
                        cache's recordings), S/subject (str); written atomically
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output

PREDICTIONS = "predictions.npz"
FIELDS = ("probs", "label", "recording", "subject")


def write_predictions(
    run_dir: str | os.PathLike,
    splits: dict[str, dict[str, np.ndarray]],
    label_names: tuple[str, ...] | list[str],
    epoch: int,
) -> Path:
    """`predictions.npz` of `splits` (name -> the FIELDS arrays), atomically."""
    arrays: dict[str, Any] = {"label_names": np.asarray(list(label_names), dtype=str)}
    arrays["epoch"] = np.asarray(epoch, np.int64)
    for name, d in splits.items():
        arrays[f"{name}/probs"] = np.asarray(d["probs"], np.float32)
        arrays[f"{name}/label"] = np.asarray(d["label"], np.int64)
        arrays[f"{name}/recording"] = np.asarray(d["recording"], np.int64)
        arrays[f"{name}/subject"] = np.asarray(d["subject"], dtype=str)
    path = Path(run_dir) / PREDICTIONS
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def read_predictions(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """{label_names, epoch, splits: {name: {probs, label, recording, subject}}}; None without
    the file (a subject-task run, or one from before it existed)."""
    path = Path(run_dir) / PREDICTIONS
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            splits: dict[str, dict[str, np.ndarray]] = {}
            for key in z.files:
                name, sep, field = key.partition("/")
                if sep:
                    splits.setdefault(name, {})[field] = z[key]
            return {
                "label_names": [str(x) for x in z["label_names"]],
                "epoch": int(z["epoch"]),
                "splits": splits,
            }
    except (OSError, ValueError, KeyError) as e:
        raise BrainpipeError(f"{path}: not a readable predictions file ({e})") from e


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """summary.json of a run (or a protocol's parent run dir); None when absent."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BrainpipeError(f"{path}: not readable JSON ({e}); rerun or remove it") from e


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """metrics.jsonl: one row per epoch (a torn last line, from a killed run, is left out)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows
