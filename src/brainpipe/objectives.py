"""Training objectives: what the loop does with a batch and how it scores a split, by name.

Owns `OBJECTIVES` and the one objective today, `classify` (window -> class: TUAB abnormal, TUSZ
seizure): `train_step` (one optimizer step, cross-entropy) and `evaluate_classifier` (class
probabilities of every window, gathered over DDP ranks, then `metrics.compute_metrics` with the
cache's task). Also the device side of the data path both use: `to_model_input` (float16
time-major from the loader -> float32 (B, C, T) on the device) and bf16 `autocast`.

Subject-pair objectives (MEG subject identification, contrastive; `SubjectPairDataset` and
`SubjectPairSampler` feed them) join `OBJECTIVES` here with their own step and scoring.

    objective = OBJECTIVES["classify"]
    loss, n_correct = objective.step(model, optimizer, scheduler, batch, device, amp, grad_clip)
    metrics = objective.evaluate(model, loader, device, amp, world_size)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from brainpipe.errors import BrainpipeError
from brainpipe.metrics import compute_metrics
from brainpipe.ring import host_batch


def to_model_input(
    x: torch.Tensor, gain: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """float16 (B, T, C) from the loader -> float32 (B, C, T) on the device.

    The copy moves float16 (half the bytes of float32) and the transpose and conversion run on
    the device in one kernel, not on the CPU, where float16 -> float32 alone caps a core at
    ~15k windows/s (21 x 2,000).
    """
    x = x.to(device, non_blocking=True)
    x = x.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    if gain is not None:
        x = x * gain.to(device, non_blocking=True)[:, :, None]
    return x


def autocast(device: torch.device, amp: bool):
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def class_weights(
    pos_weight: float, label_names: tuple[str, ...], device: torch.device
) -> torch.Tensor | None:
    """Cross-entropy class weights for `train.pos_weight`: (1, pos_weight); None when it is 1."""
    if pos_weight == 1:
        return None
    if len(label_names) != 2:
        raise BrainpipeError(
            f"train.pos_weight={pos_weight} weights the positive class of a two-class task; "
            f"this cache has classes {list(label_names)}; leave it at 1"
        )
    return torch.tensor([1.0, pos_weight], device=device)


def train_step(
    model, optimizer, scheduler, batch, device, amp: bool, grad_clip: float | None,
    class_weight: torch.Tensor | None = None,
):  # fmt: skip
    """One optimizer step on a loader batch; returns (loss, n correct) as device tensors.

    class_weight: per-class cross-entropy weights (`class_weights`), None for none."""
    x, y, gain = batch[0], batch[1], (batch[2] if len(batch) > 2 else None)
    x = to_model_input(x, gain, device)
    y = y.to(device, non_blocking=True)
    with autocast(device, amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, weight=class_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.detach(), (logits.detach().argmax(1) == y).sum()


@torch.no_grad()
def predict(model, loader, device, amp: bool, world_size: int = 1) -> np.ndarray:
    """Class probabilities for every window of the loader's dataset, all ranks' shards gathered.

    The loader's batch sampler must be a `WindowBatchSampler` without shuffling; with
    `world_size` > 1 (DDP, the process group initialized) each rank scored its shard.
    """
    ds, sampler = loader.dataset, loader.batch_sampler
    model.eval()
    parts = []
    for batch in loader:
        x = to_model_input(host_batch(batch)[0], None, device)
        with autocast(device, amp):
            logits = model(x)
        parts.append(torch.softmax(logits.float(), 1).cpu().numpy())
    model.train()
    probs = np.concatenate(parts) if parts else np.zeros((0, len(ds.label_names)), np.float32)
    idx = sampler.indices()
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(gathered, (idx, probs))
        idx = np.concatenate([g[0] for g in gathered])
        probs = np.concatenate([g[1] for g in gathered])
    out = np.empty((len(ds), probs.shape[1]), np.float64)
    out[idx] = probs
    return out


def evaluate_classifier(model, loader, device, amp: bool, world_size: int = 1) -> dict[str, Any]:
    """Metrics of the model on every window of the loader's dataset (see `compute_metrics`)."""
    ds = loader.dataset
    probs = predict(model, loader, device, amp, world_size)
    return compute_metrics(probs, ds.label, ds.recording, ds.reader.task)


@dataclass(frozen=True)
class Objective:
    """What the loop does with a training batch and with a split it scores."""

    step: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # like train_step: (loss, n correct)
    evaluate: Callable[..., dict[str, Any]]  # like evaluate_classifier: metrics of a split


OBJECTIVES = {"classify": Objective(step=train_step, evaluate=evaluate_classifier)}
