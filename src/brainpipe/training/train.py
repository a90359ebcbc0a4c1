"""The `train` stage: a braindecode model trained from the cache, with a loader the GPU never waits for.

Reads a cache written by `brainpipe build-cache`; writes into the run dir:

    last.pt, best.pt        checkpoints each epoch, plain dicts written atomically (best: by the
                            validation balanced accuracy, or EER for the subject tasks, on
                            a seizure cache first by the mean NEDC OVLP sensitivity at
                            1/2.5/5/10 FA/24h, see `metrics.selection_score`; the last epoch
                            without validation)
    metrics.jsonl           one line per epoch: train loss, val/eval metrics, samples/s, data wait
    events.out.tfevents.*   TensorBoard (`tensorboard --logdir runs/`)
    summary.json            at the end: eval metrics of best.pt, epochs, samples/s, data wait

One CPU or GPU:

    brainpipe train --cache data/cache.h5 --run-dir runs/smoke --config configs/smoke.yaml
    brainpipe train --cache data/cache.h5 --run-dir runs/smoke --config configs/smoke.yaml --resume

All GPUs of one node, then two nodes (DDP; the run dir must be on a shared filesystem):

    torchrun --standalone --nproc_per_node 8 -m brainpipe train --cache data/cache.h5 \\
        --run-dir runs/tuab --config configs/tuab.yaml
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint node0:29500 -m brainpipe train ...      # node_rank 1 on the other node

The data path, and why: a batch sampler hands whole index arrays to
`CacheWindowDataset.__getitems__`, which copies each window out of a memmap of the cache (one
memcpy per window, float16, time-major as stored). Workers pass the batch through shared memory,
the pin-memory thread into page-locked memory, and one non-blocking copy takes it to the GPU,
still float16 (half the bytes); the transpose to (batch, channels, time) and the conversion to
float32 happen there, in one kernel. The CPU never touches a float32 sample.

This module is the stage's order of operations: `train` -> `fit`, which reads top to bottom:
loaders, model and optimizer, resume or seed, and the loop of train / evaluate / checkpoint.
`train.task` picks what a step does: `classify` (labels), or the subject tasks `pairs` and
`contrastive` (MEG subject identification: splits by subject, metrics pair AUROC / EER /
identification top-1 of held-out subjects; see `objectives.py`). Its
pieces live beside it: `runtime.py` (DDP place, device, the cache checked against the config,
splits and the DataLoader, shared with the inference stages), `models.py` (which model, its
arguments), `objectives.py` (what a step does and how a split is scored), `metrics.py` (scores of
predictions), `rundir.py` (checkpoints, RNG state, logs, summary.json), `datasets.py`,
`samplers.py` and `ring.py` (the data).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from brainpipe import __version__
from brainpipe.cachefile import CacheReader
from brainpipe.config import Config
from brainpipe.datasets import subject_keys
from brainpipe.metrics import (
    compute_metrics,
    default_select_by,
    event_metrics,
    seizure_column,
    window_starts_s,
)
from brainpipe.reporting import (
    epoch_line,
    lost_best_note,
    resume_line,
    shared_subjects_note,
    train_start_line,
)
from brainpipe.ring import host_batch, remove_stale_rings
from brainpipe.samplers import WindowBatchSampler
from brainpipe.scoring import cache_references
from brainpipe.splits import check_cache_subjects
from brainpipe.training.adapt import adapter_summary, foundation_args, needs_adapter, setup_finetune
from brainpipe.training.models import build_model, model_args, upgrade_args
from brainpipe.training.objectives import class_probabilities, class_weights, objective_for
from brainpipe.training.predictions import save_best_predictions
from brainpipe.training.rundir import (
    RunLog,
    all_rng_states,
    check_run_dir,
    check_wandb,
    restore_best,
    save_checkpoint,
    seed_all,
    set_rng_state,
    steady_throughput,
    write_json,
)
from brainpipe.training.runtime import (
    DistEnv,
    Loaders,
    Splits,
    make_datasets,
    make_loaders,
    open_checked_cache,
    progress_bar_disabled,
    resolve_device,
)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then a cosine down to 0 at `total_steps` (per optimizer step)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything `train` checked before any work."""

    cfg: Config
    run_dir: Path
    env: DistEnv
    device: torch.device
    reader: CacheReader
    data: Splits
    ckpt: dict[str, Any] | None  # the checkpoint resumed from
    margs: dict[str, Any]  # model arguments: the checkpoint's on resume, else from the config
    model: torch.nn.Module
    started: float  # time.perf_counter() at the start


@dataclass
class Progress:
    """What carries over from epoch to epoch, and through a checkpoint."""

    epoch: int = 0  # epochs done
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    best: list[float] | None = None  # selection_score of best.pt; None without validation
    best_epoch: int = -1  # 0-based


@dataclass
class Trainee:
    """The model and what steps it: the parts of a checkpoint that change with each step."""

    model: torch.nn.Module  # unwrapped: no torch.compile, no DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: WindowBatchSampler  # or a subject task's sampler: anything with a state_dict

    def state_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k).state_dict() for k in ("model", "optimizer", "scheduler", "sampler")
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        for k in ("model", "optimizer", "scheduler", "sampler"):
            getattr(self, k).load_state_dict(ckpt[k])


def prepare(cache_path: str | os.PathLike, run_dir: Path, cfg: Config, resume: bool) -> Setup:
    """Check everything before any work: each problem is one BrainpipeError."""
    started = time.perf_counter()
    t = cfg.train
    env = DistEnv.from_environ()
    remove_stale_rings()  # batch rings in /dev/shm of trainers killed with -9
    device = resolve_device(t.device, env.local_rank)
    reader = open_checked_cache(cache_path, cfg)
    n_out = len(reader.label_names) if t.task == "classify" else t.embedding_dim
    # A foundation model's contract, and its weights, are checked before any other work.
    fm_args = foundation_args(cfg, reader, n_out) if needs_adapter(t) and not resume else None
    check_cache_subjects(reader, t)
    data = make_datasets(reader, cfg)
    ckpt = check_run_dir(run_dir, cfg, resume)
    margs = (
        upgrade_args(ckpt["model_args"])  # on resume the checkpoint's architecture, not today's
        if ckpt
        else fm_args
        or model_args(
            t.model,
            t.model_kwargs,
            data.train.n_channels,
            data.train.window_samples,
            n_out,
            reader.sfreq,
        )  # fmt: skip
    ) | ({"head": t.task} if t.task != "classify" and not ckpt else {})
    torch.manual_seed(t.seed)
    model = build_model(margs, load=ckpt is None)
    check_wandb(cfg)
    if env.is_main and data.eval is not None and t.task == "classify" and not t.folds:
        names = set(subject_keys(reader)[reader.recordings["split"] == "train"].tolist())
        shared = names & set(data.eval.subjects().tolist())
        if shared:
            print(shared_subjects_note(len(shared), t.eval_split))
    return Setup(cfg, run_dir, env, device, reader, data, ckpt, margs, model, started)


def train(
    cache_path: str | os.PathLike, run_dir: str | os.PathLike, cfg: Config, resume: bool = False
) -> dict[str, Any]:
    """Train `cfg.train.model` on the cache; return the summary also written to summary.json."""
    s = prepare(cache_path, Path(run_dir), cfg, resume)
    # DDP: CPU (gloo) and GPU (nccl) alike; one process per device, rank 0 writes.
    if s.env.enabled:
        if s.device.type == "cuda":
            torch.cuda.set_device(s.device)
        torch.distributed.init_process_group(backend="nccl" if s.device.type == "cuda" else "gloo")
    try:
        with contextlib.ExitStack() as cleanup:
            return fit(s, cleanup)
    finally:
        if s.env.enabled:
            torch.distributed.destroy_process_group()


def fit(s: Setup, cleanup: contextlib.ExitStack) -> dict[str, Any]:
    """The loop: epochs of training, scoring and checkpoints; returns the summary."""
    cfg, t, env, device, data = s.cfg, s.cfg.train, s.env, s.device, s.data
    objective = objective_for(t.task, t.temperature, t.select_by)

    # -------- loaders --------
    loaders = make_loaders(data, cfg, env, device)
    if loaders.ring is not None:
        cleanup.callback(loaders.ring.close)
    steps_per_epoch = loaders.steps_per_epoch
    total_steps = steps_per_epoch * t.epochs
    warmup_steps = int(round(t.warmup_epochs * steps_per_epoch))
    weight = class_weights(t.pos_weight, s.reader.label_names, device)
    step_kw = {} if weight is None else {"class_weight": weight}  # train.pos_weight

    # -------- model, optimizer, schedule --------
    raw_model = s.model.to(device)
    if t.channels_last:
        raw_model.to(memory_format=torch.channels_last)
    groups = setup_finetune(raw_model, t, env.is_main)  # train.finetune / layer_decay
    optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, total_steps)
    )
    trainee = Trainee(raw_model, optimizer, scheduler, loaders.sampler)

    # -------- resume, or seed a new run --------
    done = Progress()
    if s.ckpt:
        done = resume(s, trainee)
    else:
        seed_all(t.seed + env.rank)  # same weights everywhere, own dropout per rank
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = torch.compile(raw_model) if t.compile else raw_model
    if env.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    log = RunLog(s.run_dir, cfg, done.history, enabled=env.is_main)
    n_params = sum(p.numel() for p in raw_model.parameters())
    if env.is_main:
        print(train_start_line(s, n_params, steps_per_epoch), flush=True)

    for epoch in range(done.epoch, t.epochs):
        # -------- train one epoch --------
        loaders.sampler.set_epoch(epoch)
        stats = train_epoch(s, model, trainee, objective, loaders, epoch, step_kw)

        # -------- evaluate --------
        row = epoch_row(epoch, steps_per_epoch, optimizer, stats, env.world_size)
        for name, loader in loaders.evaluated.items():
            row[name] = evaluate_split(s, objective, raw_model, loader)
        done.epoch = epoch + 1
        done.history.append(row)
        score = objective.score(row["val"]) if data.val is not None else None
        improved = score is None or done.best is None or score > done.best
        if improved:
            done.best, done.best_epoch = score, epoch

        # -------- checkpoint: rank 0 writes, with every rank's RNG state --------
        rngs = all_rng_states(env.world_size)
        if env.is_main:
            ckpt = make_checkpoint(s, trainee, done, rngs)
            # best.pt first: last.pt must never record a best epoch whose weights are not on disk.
            if improved:
                save_checkpoint(ckpt, s.run_dir / "best.pt")
            save_checkpoint(ckpt, s.run_dir / "last.pt")
            log.epoch(row)
            print(epoch_line(row, t.epochs), flush=True)

    # -------- summary --------
    log.close()
    save_best_predictions(s, raw_model, loaders)  # predictions.npz, for `brainpipe report`
    summary = make_summary(s, done, n_params)
    if env.is_main:
        write_json(s.run_dir / "summary.json", summary)
    return summary


def train_epoch(
    s: Setup,
    model: torch.nn.Module,
    trainee: Trainee,
    objective: Any,
    loaders: Loaders,
    epoch: int,
    step_kw: dict[str, Any],
) -> dict[str, float]:
    """One pass over the training batches; loss and accuracy summed over every rank."""
    t, env, device = s.cfg.train, s.env, s.device
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n_seen, wait_s, busy_s = 0, 0.0, 0.0
    batches = iter(loaders.train)
    bar = tqdm(
        total=loaders.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{t.epochs}",
        leave=False,
        disable=progress_bar_disabled(env.is_main),
    )
    for _ in range(loaders.steps_per_epoch):
        t0 = time.perf_counter()
        batch = host_batch(next(batches))
        t1 = time.perf_counter()
        loss, n_correct = objective.step(
            model, trainee.optimizer, trainee.scheduler, batch, device, t.amp, t.grad_clip,
            **step_kw,
        )  # fmt: skip
        loss_sum += loss * len(batch[1])
        correct += n_correct
        # Waiting on the step's result makes its time real (CUDA runs asynchronously): the
        # GPU is idle exactly while the next batch is awaited, so `wait` is GPU idle time.
        loss_value = loss.item()
        t2 = time.perf_counter()
        n_seen += len(batch[1])
        wait_s += t1 - t0
        busy_s += t2 - t0
        bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        bar.update()
    bar.close()
    del batches
    f64 = dict(device=device, dtype=torch.float64)
    totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(n_seen, **f64)])
    if env.enabled:
        torch.distributed.all_reduce(totals)
    n_total = max(float(totals[2]), 1.0)
    return {
        "loss": float(totals[0]) / n_total,
        "accuracy": float(totals[1]) / n_total,
        "n_seen": n_seen,
        "wait_s": wait_s,
        "busy_s": busy_s,
    }


def epoch_row(
    epoch: int, steps_per_epoch: int, optimizer: Any, stats: dict[str, float], world_size: int
) -> dict[str, Any]:
    """The epoch's line of metrics.jsonl before its splits are scored."""
    busy = max(stats["busy_s"], 1e-9)
    return {
        "epoch": epoch + 1,
        "step": (epoch + 1) * steps_per_epoch,
        "lr": optimizer.param_groups[0]["lr"],
        "train": {"loss": stats["loss"], "accuracy": stats["accuracy"]},
        "samples_per_s": stats["n_seen"] * world_size / busy,
        "data_wait_fraction": stats["wait_s"] / busy,
        "epoch_time_s": stats["busy_s"],
        "val": None,
        "eval": None,
    }


def evaluate_split(s: Setup, objective: Any, model: torch.nn.Module, loader: Any) -> dict:
    """A scored split: the objective's own scores; on a seizure cache the window metrics and
    the OVLP events from one inference pass."""
    if s.reader.task == "seizure":
        return evaluate_seizures(s, model, loader)
    return objective.evaluate(model, loader, s.device, s.cfg.train.amp, s.env.world_size)


def resume(s: Setup, trainee: Trainee) -> Progress:
    """Restore the trainee, this rank's RNG state and the progress from the checkpoint."""
    ckpt, env = s.ckpt, s.env
    assert ckpt is not None
    trainee.load_state_dict(ckpt)
    rngs = ckpt["rng"]
    set_rng_state(rngs[env.rank] if len(rngs) == env.world_size else rngs[0])
    best = ckpt["best"]
    done = Progress(ckpt["epoch"], list(ckpt["history"]), best["score"], best["epoch"])
    if env.is_main:
        print(resume_line(s.run_dir, done.epoch, s.cfg.train.epochs), flush=True)
        if not restore_best(s.run_dir, ckpt):
            print(lost_best_note(best["epoch"]), flush=True)
    return done


def evaluate_seizures(s: Setup, model: torch.nn.Module, loader: Any) -> dict[str, Any]:
    """A scored split of a seizure cache: the window metrics `evaluate_classifier` gives, plus
    `events`, NEDC OVLP event metrics after the config's `postprocess` (see
    `metrics.event_metrics`), from one inference pass."""
    ds, t = loader.dataset, s.cfg.train
    probs = class_probabilities(model, loader, s.device, t.amp, s.env.world_size)
    m = compute_metrics(probs, ds.label, ds.recording, s.reader.task)
    m["events"] = event_metrics(
        probs[:, seizure_column(ds.label_names)],
        ds.recording,
        window_starts_s(s.reader, ds.recording, ds.start),
        ds.window_samples / ds.sfreq,
        cache_references(s.reader),
        s.cfg.postprocess,
    )
    return m


def make_checkpoint(s: Setup, trainee: Trainee, done: Progress, rngs: list[Any]) -> dict[str, Any]:
    """A checkpoint: a plain dict of tensors and plain types (loads with weights_only=True)."""
    return {
        **trainee.state_dict(),  # model, optimizer, scheduler, sampler
        "epoch": done.epoch,
        "best": {"epoch": done.best_epoch, "score": done.best},
        "history": done.history,
        "rng": rngs,  # one per rank
        "config": s.cfg.to_dict(),
        "model_args": s.margs,  # what a resume builds, whatever today's config says
        "cache": {
            "path": str(s.reader.path),
            "config_hash": str(s.reader.attrs.get("config_hash", "")),
            "index_hash": str(s.reader.attrs.get("index_hash", "")),
        },
        "world_size": s.env.world_size,
        "brainpipe_version": __version__,
    }


def make_summary(s: Setup, done: Progress, n_params: int) -> dict[str, Any]:
    """summary.json: the scores of best.pt's epoch (the last epoch without validation) and
    steady throughput, with what was trained on what."""
    history = done.history
    best = history[done.best_epoch] if history and done.best_epoch >= 0 else (history or [{}])[-1]
    return {
        "eval": best.get("eval") or {},
        "val": best.get("val") or {},
        "eval_last": (history[-1].get("eval") or {}) if history else {},
        "best_epoch": done.best_epoch + 1,
        "select_by": s.cfg.train.select_by or default_select_by(s.cfg.train.task, s.reader.task),
        "epochs": len(history),
        **steady_throughput(history),
        "model": s.margs,
        "n_params": n_params,
        **adapter_summary(s.model),  # foundation models: weights' sha256, fresh keys, trainable
        "device": str(s.device),
        "world_size": s.env.world_size,
        "windows": s.data.sizes(),
        "label_names": list(s.reader.label_names),
        "cache": str(s.reader.path),
        "run_dir": str(s.run_dir),
        "checkpoints": {
            name: str(s.run_dir / f"{name}.pt") if (s.run_dir / f"{name}.pt").exists() else None
            for name in ("last", "best")
        },
        "time_s": time.perf_counter() - s.started,
    }
