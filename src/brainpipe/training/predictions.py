"""best.pt's class probabilities on the scored splits, saved at the end of a classification run.

`brainpipe report` draws ROC and precision-recall curves, confusion matrices and per-subject
scores from them (`runfiles.predictions.npz`); one more inference pass over val and eval with
best.pt's weights (the last epoch's without validation), every rank taking part under DDP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from brainpipe.datasets import subject_keys
from brainpipe.runfiles import write_predictions
from brainpipe.training.objectives import class_probabilities as predict_probs


def save_best_predictions(s: Any, model: torch.nn.Module, loaders: Any) -> Path | None:
    """Write `predictions.npz` into the run dir from best.pt (or the model as it is when there
    is no best.pt); None for the subject tasks, which have no class probabilities."""
    t = s.cfg.train
    if t.task != "classify" or not loaders.evaluated:
        return None
    best = s.run_dir / "best.pt"
    if s.env.enabled:
        torch.distributed.barrier()  # rank 0 wrote best.pt
    epoch = -1
    if best.exists():
        ckpt = torch.load(best, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        epoch = int(ckpt["epoch"])
    keys = subject_keys(s.reader)
    splits = {}
    for name, loader in loaders.evaluated.items():
        ds = loader.dataset
        probs = predict_probs(model, loader, s.device, t.amp, s.env.world_size)
        splits[name] = {
            "probs": probs,
            "label": ds.label,
            "recording": ds.recording,
            "subject": keys[ds.recording],
        }
    if not s.env.is_main:
        return None
    return write_predictions(s.run_dir, splits, s.reader.label_names, epoch)
