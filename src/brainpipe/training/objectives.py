"""Training objectives: what the loop does with a batch and how it scores a split, by name.

Owns `OBJECTIVES` and the one objective today, `classify` (window -> class: TUAB abnormal, TUSZ
seizure): `train_step` (one optimizer step, cross-entropy) and `evaluate_classifier` (class
probabilities of every window, gathered over DDP ranks, then `metrics.compute_metrics` with the
cache's task). Also the device side of the data path both use: `to_model_input` (float16
time-major from the loader -> float32 (B, C, T) on the device) and bf16 `autocast`.

The subject tasks (MEG subject identification; no labels, y is the window's subject):
`pairs` (`pairs_step`: a `SubjectEncoder`'s similarity head, binary cross-entropy on
`PairBatchSampler` batches) and `contrastive` (`contrastive_step`: `supcon_loss` on
`SubjectBatchSampler` batches), both scored by `evaluate_subjects` (pair AUROC, EER,
identification top-1 of held-out subjects; best.pt by validation EER). `model_outputs` gives
every window's output (embeddings), also for `brainpipe embed`. `objective_for(task, temperature, select_by)`.

    objective = OBJECTIVES["classify"]
    loss, n_correct = objective.step(model, optimizer, scheduler, batch, device, amp, grad_clip)
    metrics = objective.evaluate(model, loader, device, amp, world_size)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from brainpipe.errors import BrainpipeError
from brainpipe.metrics import (
    check_select_by,
    compute_metrics,
    selection_score,
    subject_metrics,
    subject_selection_score,
)
from brainpipe.ring import host_batch
from brainpipe.training.fastconv import conv_context


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


def _optimize(model, optimizer, scheduler, loss, grad_clip: float | None) -> None:
    """One optimizer step of every objective: backward, clip, step, schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()


def train_step(
    model, optimizer, scheduler, batch, device, amp: bool, grad_clip: float | None,
    class_weight: torch.Tensor | None = None,
):  # fmt: skip
    """One optimizer step on a loader batch; returns (loss, n correct) as device tensors.

    class_weight: per-class cross-entropy weights (`class_weights`), None for none."""
    x, y, gain = batch[0], batch[1], (batch[2] if len(batch) > 2 else None)
    x = to_model_input(x, gain, device)
    y = y.to(device, non_blocking=True)
    with autocast(device, amp), conv_context(model, device):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, weight=class_weight)
    _optimize(model, optimizer, scheduler, loss, grad_clip)
    return loss.detach(), (logits.detach().argmax(1) == y).sum()


def class_probabilities(model, loader, device, amp: bool, world_size: int = 1) -> np.ndarray:
    """Class probabilities for every window of the loader's dataset, all ranks' shards gathered.

    The loader's batch sampler must be a `WindowBatchSampler` without shuffling; with
    `world_size` > 1 (DDP, the process group initialized) each rank scored its shard.
    """
    width = len(loader.dataset.label_names)
    return _gathered(model, loader, device, amp, world_size, _softmax, width, np.float64)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, 1)


@torch.no_grad()
def _gathered(model, loader, device, amp, world_size, post, width: int, dtype) -> np.ndarray:
    """`post(model output)` for every window of the loader's dataset, in dataset order, each
    rank's shard gathered (DDP); `width` is the row size when there is no window at all."""
    ds, sampler = loader.dataset, loader.batch_sampler
    model.eval()
    parts = []
    for batch in loader:
        x = to_model_input(host_batch(batch)[0], None, device)
        with autocast(device, amp), conv_context(model, device):
            y = model(x)
        parts.append(post(y.float()).cpu().numpy())
    model.train()
    out = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
    idx = sampler.indices()
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(gathered, (idx, out))
        idx = np.concatenate([g[0] for g in gathered])
        out = np.concatenate([g[1] for g in gathered])
    full = np.zeros((len(ds), out.shape[1] if out.ndim == 2 else 0), dtype)
    full[idx] = out
    return full


def evaluate_classifier(model, loader, device, amp: bool, world_size: int = 1) -> dict[str, Any]:
    """Metrics of the model on every window of the loader's dataset (see `compute_metrics`)."""
    ds = loader.dataset
    probs = class_probabilities(model, loader, device, amp, world_size)
    return compute_metrics(probs, ds.label, ds.recording, ds.reader.task)


# ---------------------------------------------------------------------------------------------
# Subject tasks (no labels: y is the window's subject code, see CacheWindowDataset target=)
# ---------------------------------------------------------------------------------------------


def pairs_step(model, optimizer, scheduler, batch, device, amp: bool, grad_clip: float | None):
    """One step on a `PairBatchSampler` batch (2B windows: firsts, then partners): binary
    cross-entropy of the similarity head's same-subject logits. Returns (loss, n correct) with
    n correct counted per window (twice per pair), so loss and accuracy average over pairs."""
    x, subject = to_model_input(batch[0], None, device), batch[1].to(device, non_blocking=True)
    n = len(x) // 2
    same = (subject[:n] == subject[n:]).float()
    with autocast(device, amp), conv_context(model, device):
        logits = model(x[:n], x[n:])
    loss = F.binary_cross_entropy_with_logits(logits.float(), same)
    _optimize(model, optimizer, scheduler, loss, grad_clip)
    return loss.detach(), 2 * ((logits.detach() > 0).float() == same).sum()


def supcon_loss(z: torch.Tensor, subject: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020): the other windows of a window's
    subject in the batch are its positives, every other window a negative."""
    z = F.normalize(z.float(), dim=1)
    sim = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, -torch.inf)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (subject[:, None] == subject[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    per_window = -(log_prob.masked_fill(~pos, 0).sum(1)[has] / n_pos[has])
    return per_window.mean()


def contrastive_step(
    model, optimizer, scheduler, batch, device, amp: bool, grad_clip: float | None, temperature
):
    """One step on a `SubjectBatchSampler` batch; n correct: windows whose nearest other window
    in the batch is of their subject."""
    x, subject = to_model_input(batch[0], None, device), batch[1].to(device, non_blocking=True)
    with autocast(device, amp), conv_context(model, device):
        z = model(x)
    loss = supcon_loss(z, subject, temperature)
    _optimize(model, optimizer, scheduler, loss, grad_clip)
    with torch.no_grad():
        zn = F.normalize(z.detach().float(), dim=1)
        sim = (zn @ zn.T).fill_diagonal_(-2)
        correct = (subject[sim.argmax(1)] == subject).sum()
    return loss.detach(), correct


def model_outputs(model, loader, device, amp: bool, world_size: int = 1) -> np.ndarray:
    """The model's output (e.g. embeddings) for every window of the loader's dataset, in dataset
    order, all ranks' shards gathered; float32. Sampler as for `class_probabilities`."""
    return _gathered(model, loader, device, amp, world_size, lambda y: y, 0, np.float32)


def evaluate_subjects(model, loader, device, amp: bool, world_size: int = 1) -> dict[str, Any]:
    """Pair AUROC, EER and identification top-1 of the split's subjects (`subject_metrics`)."""
    ds = loader.dataset
    return subject_metrics(model_outputs(model, loader, device, amp, world_size), ds.label)


@dataclass(frozen=True)
class Objective:
    """What the loop does with a training batch and with a split it scores."""

    step: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # like train_step: (loss, n correct)
    evaluate: Callable[..., dict[str, Any]]  # like evaluate_classifier: metrics of a split
    score: Callable[[dict[str, Any]], list[float]] = selection_score  # best.pt maximizes it


def objective_for(task: str, temperature: float = 0.1, select_by: str = "") -> Objective:
    """The objective of `train.task`; best.pt by `train.select_by` (see `metrics.selection_score`;
    unset: the task's default)."""
    check_select_by(select_by, task)
    if task == "contrastive":
        base = Objective(
            step=functools.partial(contrastive_step, temperature=temperature),
            evaluate=evaluate_subjects,
            score=subject_selection_score,
        )
    else:
        base = OBJECTIVES[task]
    if not select_by:
        return base
    return replace(base, score=functools.partial(base.score, select_by=select_by))


OBJECTIVES = {
    "classify": Objective(step=train_step, evaluate=evaluate_classifier),
    "pairs": Objective(pairs_step, evaluate_subjects, subject_selection_score),
    "contrastive": Objective(
        functools.partial(contrastive_step, temperature=0.1),
        evaluate_subjects,
        subject_selection_score,
    ),
}
