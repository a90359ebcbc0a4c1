"""The `train` stage: a braindecode model trained from the cache, with a loader the GPU never waits for.

Reads a cache written by `brainpipe build-cache`; writes into the run dir:

    last.pt, best.pt        checkpoints each epoch, plain dicts written atomically (best: by the
                            validation balanced accuracy; the last epoch when there is no
                            validation set)
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
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from brainpipe import __version__
from brainpipe.cachefile import CacheReader
from brainpipe.config import Config
from brainpipe.corpus import TUSZ_LABELS
from brainpipe.datasets import CacheWindowDataset, subject_keys
from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output, check_writable_dir
from brainpipe.ring import BatchRing, RingBatchSampler, RingSlot, collate_batch
from brainpipe.samplers import WindowBatchSampler, carve_validation, class_balanced_weights

# ---------------------------------------------------------------------------------------------
# Set-up pieces: each checks its input and fails with one BrainpipeError before any work
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistEnv:
    """What torchrun put in the environment (RANK, LOCAL_RANK, WORLD_SIZE); defaults: no DDP."""

    enabled: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environ(cls) -> DistEnv:
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(
            True,
            int(os.environ["RANK"]),
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ["WORLD_SIZE"]),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(setting: str, local_rank: int = 0) -> torch.device:
    cuda = torch.cuda.is_available()
    if setting == "cuda" and not cuda:
        raise BrainpipeError(
            f"train.device=cuda but torch {torch.__version__} sees no CUDA GPU; "
            "use --set train.device=cpu (or auto), or install a CUDA build of torch"
        )
    if setting == "cpu" or not cuda:
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise BrainpipeError(
            f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
            "lower torchrun --nproc_per_node"
        )
    return torch.device("cuda", local_rank)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def open_cache(cache_path: str | os.PathLike, cfg: Config) -> CacheReader:
    """Open the cache and check that it was built with this config's preprocessing.

    The window may differ (windows are recomputed from the continuous signal); the
    preprocessing may not: a model trained on other filters or another rate than the config
    says would silently be a different experiment.
    """
    reader = CacheReader(cache_path)  # refuses other format versions and unfinished builds
    built = reader.config.get("preprocess")
    if built is not None:
        want = cfg.to_dict()["preprocess"]
        diff = [k for k in sorted(set(built) | set(want)) if not _same(built.get(k), want.get(k))]
        if diff:
            shown = ", ".join(
                f"preprocess.{k}={built.get(k)!r} (config: {want.get(k)!r})" for k in diff[:4]
            )
            raise BrainpipeError(
                f"{reader.path}: built with {shown}{' ...' if len(diff) > 4 else ''}; train with "
                "the config the cache was built with (--config), or rebuild the cache with this "
                "one (brainpipe build-cache --force)"
            )
    return reader


def make_datasets(reader: CacheReader, cfg: Config) -> dict[str, CacheWindowDataset | None]:
    """train / val (carved from train by subject) / eval datasets, checked for emptiness."""
    t, w = cfg.train, cfg.window
    r = reader.recordings
    done = r["status"] == 1
    splits = sorted(set(r["split"][done].tolist()))
    for name in ["train"] + ([t.eval_split] if t.eval_split else []):
        if name not in splits:
            raise BrainpipeError(
                f"{reader.path}: no recordings in split {name!r}; the cache has "
                f"{', '.join(map(repr, splits)) or 'none'}"
                + ("" if name == "train" else "; set train.eval_split to one (or '' for none)")
            )
    train_subjects, val_subjects = carve_validation(reader, t.val_fraction, t.seed, "train")
    if t.val_fraction > 0 and len(val_subjects) == 0:
        raise BrainpipeError(
            f"train.val_fraction={t.val_fraction} leaves no validation subject: split 'train' "
            f"has {len(train_subjects)} subjects and each class needs two; set "
            "train.val_fraction=0 or add subjects"
        )
    kw: dict[str, Any] = dict(
        window_s=w.seconds, stride_s=w.stride_seconds, label_overlap=w.label_overlap
    )
    sets: dict[str, CacheWindowDataset | None] = {
        "train": CacheWindowDataset(
            reader, "train", subjects=train_subjects, augment=t.augment, seed=t.seed, **kw
        ),
        "val": CacheWindowDataset(reader, "train", subjects=val_subjects, **kw)
        if len(val_subjects)
        else None,
        "eval": CacheWindowDataset(reader, t.eval_split, **kw) if t.eval_split else None,
    }
    n = sets["train"].window_samples
    for name, ds in sets.items():
        if ds is not None and len(ds) == 0:
            raise BrainpipeError(
                f"{reader.path}: split {ds.split!r} ({name}) has no labelled windows of "
                f"{w.seconds:g} s ({n} samples); check window.seconds against the recordings' "
                "lengths and that the corpus has labels"
            )
    counts = sets["train"].class_counts()
    if (counts > 0).sum() < 2:
        present = [reader.label_names[i] for i in np.flatnonzero(counts)]
        raise BrainpipeError(
            f"{reader.path}: the training windows hold only class {present}; training needs "
            f"at least two of {list(reader.label_names)}"
        )
    return sets


def _model_classes() -> dict[str, type]:
    import braindecode.models as bm

    return {
        name: obj
        for name, obj in vars(bm).items()
        if inspect.isclass(obj)
        and issubclass(obj, torch.nn.Module)
        and not name.startswith("_")
        and name != "TimeDistributed"  # a wrapper, not a model
    }


def model_args(
    name: str, kwargs: dict[str, Any], n_chans: int, n_times: int, n_outputs: int, sfreq: float
) -> dict[str, Any]:
    """The full constructor arguments: the data's shape, sensible defaults, then the config's."""
    classes = _model_classes()
    if name not in classes:
        close = difflib.get_close_matches(name, classes, n=3)
        raise BrainpipeError(
            f"train.model={name!r} is not a braindecode model"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + f"; valid names include {', '.join(sorted(classes))}"
        )
    params = inspect.signature(classes[name]).parameters
    full: dict[str, Any] = {}
    shape = {"n_chans": n_chans, "n_outputs": n_outputs, "n_times": n_times, "sfreq": sfreq}
    full.update({k: v for k, v in shape.items() if k in params})
    # "auto" sizes the classifier to the window, which braindecode's fixed defaults (sized for
    # one dataset's window) would not fit; logits, not log-probabilities, for cross-entropy.
    if "final_conv_length" in params:
        full["final_conv_length"] = "auto"
    if "add_log_softmax" in params:
        full["add_log_softmax"] = False
    full.update(kwargs)
    return {"name": name, "kwargs": full}


def build_model(args: dict[str, Any]) -> torch.nn.Module:
    """Build a braindecode model and check, with one forward pass on zeros, that it fits the data."""
    name, kwargs = args["name"], args["kwargs"]
    cls = _model_classes().get(name)
    if cls is None:
        model_args(name, {}, 1, 1, 2, 1.0)  # raises the "not a braindecode model" error
    n_chans, n_times, n_outputs = (kwargs.get(k) for k in ("n_chans", "n_times", "n_outputs"))
    try:
        model = cls(**kwargs)
    except Exception as e:
        raise BrainpipeError(
            f"train.model={name} with {kwargs}: cannot build it for windows of {n_chans} "
            f"channels x {n_times} samples ({type(e).__name__}: {e}); adjust "
            "train.model_kwargs (or window.seconds)"
        ) from e
    if n_chans and n_times:
        model.eval()  # no batch-norm statistics change, no dropout randomness drawn
        try:
            with torch.no_grad():
                out = model(torch.zeros(2, n_chans, n_times))
        except Exception as e:
            raise BrainpipeError(
                f"train.model={name} cannot take windows of {n_chans} channels x {n_times} "
                f"samples ({type(e).__name__}: {e}); use longer windows (window.seconds) or "
                "smaller kernels/pools in train.model_kwargs"
            ) from e
        if tuple(out.shape) != (2, n_outputs):
            raise BrainpipeError(
                f"train.model={name} outputs shape {tuple(out.shape[1:])} per window, not "
                f"({n_outputs},); set final_conv_length or similar in train.model_kwargs"
            )
        model.train()
    return model


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then a cosine down to 0 at `total_steps` (per optimizer step)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------------------------
# Steps and metrics
# ---------------------------------------------------------------------------------------------


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


def train_step(model, optimizer, scheduler, batch, device, amp: bool, grad_clip: float | None):
    """One optimizer step on a loader batch; returns (loss, n correct) as device tensors."""
    x, y, gain = batch[0], batch[1], (batch[2] if len(batch) > 2 else None)
    x = to_model_input(x, gain, device)
    y = y.to(device, non_blocking=True)
    with autocast(device, amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.detach(), (logits.detach().argmax(1) == y).sum()


@torch.no_grad()
def predict(model, loader, device, amp: bool, dist_env: DistEnv) -> np.ndarray:
    """Class probabilities for every window of the loader's dataset, all ranks' shards gathered.

    The loader's batch sampler must be a `WindowBatchSampler` without shuffling.
    """
    ds, sampler = loader.dataset, loader.batch_sampler
    model.eval()
    parts = []
    for batch in loader:
        x = to_model_input(_host_batch(batch)[0], None, device)
        with autocast(device, amp):
            logits = model(x)
        parts.append(torch.softmax(logits.float(), 1).cpu().numpy())
    model.train()
    probs = np.concatenate(parts) if parts else np.zeros((0, len(ds.label_names)), np.float32)
    idx = sampler.indices()
    if dist_env.enabled and dist_env.world_size > 1:
        gathered: list[Any] = [None] * dist_env.world_size
        torch.distributed.all_gather_object(gathered, (idx, probs))
        idx = np.concatenate([g[0] for g in gathered])
        probs = np.concatenate([g[1] for g in gathered])
    out = np.empty((len(ds), probs.shape[1]), np.float64)
    out[idx] = probs
    return out


def compute_metrics(
    probs: np.ndarray, labels: np.ndarray, recordings: np.ndarray, label_names: tuple[str, ...]
) -> dict[str, Any]:
    """Window and recording metrics, as TUAB/TUSZ papers report them.

    Per window: loss, balanced accuracy (argmax), AUROC, AUPRC (of the last class for two
    classes; one-vs-rest macro averages otherwise); TUSZ adds sensitivity and specificity.
    Per recording: the mean of its windows' probabilities against its label (the highest of its
    windows' labels: the TUAB recording label, "has a seizure" for TUSZ). NaN where undefined
    (one class only).
    """

    labels = np.asarray(labels, dtype=np.int64)
    k = probs.shape[1]
    with warnings.catch_warnings():
        # one-class subsets (a TUSZ eval set where every recording has a seizure) are expected
        warnings.simplefilter("ignore", UserWarning)
        return _metrics(probs, labels, recordings, label_names, k)


def _metrics(probs, labels, recordings, label_names, k) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

    def scores(p: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
        if len(y) == 0:
            return math.nan, math.nan, math.nan
        bacc = float(balanced_accuracy_score(y, p.argmax(1)))
        if len(np.unique(y)) < 2:
            return bacc, math.nan, math.nan
        if k == 2:
            return (
                bacc,
                float(roc_auc_score(y, p[:, 1])),
                float(average_precision_score(y, p[:, 1])),
            )
        onehot = np.eye(k)[y]
        present = onehot.sum(0) > 0
        return (
            bacc,
            float(roc_auc_score(onehot[:, present], p[:, present], average="macro")),
            float(average_precision_score(onehot[:, present], p[:, present], average="macro")),
        )

    m: dict[str, Any] = {}
    p_true = probs[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
    m["loss"] = float(-np.log(np.clip(p_true, 1e-12, None)).mean()) if len(labels) else math.nan
    m["balanced_accuracy"], m["auroc"], m["auprc"] = scores(probs, labels)
    if tuple(label_names) == TUSZ_LABELS:
        pred = probs.argmax(1)
        pos, neg = labels == 1, labels == 0
        m["sensitivity"] = float((pred[pos] == 1).mean()) if pos.any() else math.nan
        m["specificity"] = float((pred[neg] == 0).mean()) if neg.any() else math.nan
    rec_ids, inverse = np.unique(recordings, return_inverse=True)
    rec_probs = np.zeros((len(rec_ids), k))
    np.add.at(rec_probs, inverse, probs)
    rec_probs /= np.maximum(np.bincount(inverse, minlength=len(rec_ids)), 1)[:, None]
    rec_labels = np.full(len(rec_ids), -1, np.int64)
    np.maximum.at(rec_labels, inverse, labels)
    (
        m["recording_balanced_accuracy"],
        m["recording_auroc"],
        m["recording_auprc"],
    ) = scores(rec_probs, rec_labels)
    m["n_windows"] = int(len(labels))
    m["n_recordings"] = int(len(rec_ids))
    return m


def _better(val: dict[str, Any], best: list[float] | None) -> bool:
    # Balanced accuracy first; the loss breaks ties (small validation sets saturate at 1.0).
    score = [val["balanced_accuracy"], -val["loss"]]
    score = [-math.inf if math.isnan(v) else v for v in score]
    return best is None or score > best


# ---------------------------------------------------------------------------------------------
# Checkpoints, RNG and logs
# ---------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    # Plain types and tensors only, so a checkpoint loads with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(obj: dict[str, Any], path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise BrainpipeError(f"{path}: no checkpoint") from e
    except Exception as e:
        raise BrainpipeError(f"{path}: not a readable brainpipe checkpoint ({e})") from e


# Keys that decide which windows land in train, val and eval: a resumed run must keep them.
_DATA_KEYS = (
    ("window", "seconds"),
    ("window", "stride_seconds"),
    ("window", "label_overlap"),
    ("train", "seed"),
    ("train", "val_fraction"),
    ("train", "eval_split"),
)


def _check_run_dir(run_dir: Path, cfg: Config, resume: bool) -> dict[str, Any] | None:
    last = run_dir / "last.pt"
    if not resume:
        if last.exists():
            raise BrainpipeError(
                f"{run_dir} already holds a run (last.pt); pass --resume to continue it, or "
                "choose another --run-dir"
            )
        check_writable_dir(last)
        return None
    if not last.exists():
        raise BrainpipeError(f"{last}: nothing to resume; run without --resume to start")
    ckpt = load_checkpoint(last)
    then, now = ckpt["config"], cfg.to_dict()
    for section, key in _DATA_KEYS:
        if not _same(then[section][key], now[section][key]):
            raise BrainpipeError(
                f"--resume: {section}.{key}={now[section][key]!r} but the run in {run_dir} "
                f"used {then[section][key]!r}; changing it would change the data splits. Keep "
                "it, or start a new --run-dir"
            )
    return ckpt


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _write_json(path: Path, obj: Any, lines: bool = False) -> None:
    with atomic_output(path) as tmp:
        if lines:
            tmp.write_text("".join(json.dumps(_jsonable(o)) + "\n" for o in obj))
        else:
            tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")


class RunLog:
    """TensorBoard, metrics.jsonl and, when configured, W&B; rank 0 only."""

    def __init__(self, run_dir: Path, cfg: Config, history: list[dict], enabled: bool):
        self.enabled, self.run_dir, self.wandb = enabled, run_dir, None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events of epochs logged after the last checkpoint of a killed run.
        self.tb = SummaryWriter(
            log_dir=str(run_dir), purge_step=len(history) + 1 if history else None
        )
        self.history = history
        _write_json(run_dir / "metrics.jsonl", history, lines=True)
        t = cfg.train
        if t.wandb_project and t.wandb_mode != "disabled":
            import wandb

            self.wandb = wandb.init(
                project=t.wandb_project,
                mode=t.wandb_mode,
                dir=str(run_dir),
                name=run_dir.name,
                config=cfg.to_dict(),
                resume="allow",
            )

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        flat = {
            f"{split}/{k}": v
            for split in ("train", "val", "eval")
            for k, v in (row.get(split) or {}).items()
            if isinstance(v, float)
        }
        flat.update({f"perf/{k}": row[k] for k in ("samples_per_s", "data_wait_fraction")})
        flat["train/lr"] = row["lr"]
        for k, v in flat.items():
            self.tb.add_scalar(k, v, row["epoch"])
        self.tb.flush()
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")
        if self.wandb is not None:
            self.wandb.log(flat, step=row["epoch"])

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()


def _check_wandb(cfg: Config) -> None:
    t = cfg.train
    if t.wandb_project and t.wandb_mode != "disabled":
        try:
            import wandb  # noqa: F401
        except ImportError as e:
            raise BrainpipeError(
                f"train.wandb_project={t.wandb_project!r} needs wandb: pip install wandb, or "
                "unset train.wandb_project"
            ) from e


def _loader(ds, batch_sampler, device, num_workers: int, prefetch_factor: int, ring: bool = False):
    """A DataLoader over whole batches; with `ring`, workers hand batches over in a BatchRing.

    Returns (loader, ring or None). Without a ring (or without workers) torch moves each batch
    through fresh shared memory, which costs a worker ~40 ms per 21 MB batch (see BatchRing).
    """
    from torch.utils.data import DataLoader

    shared = None
    if ring and num_workers > 0:
        n_slots = BatchRing.slots_for(num_workers, prefetch_factor)
        shape = (batch_sampler.batch_size, ds.window_samples, ds.n_channels)
        need = n_slots * math.prod(shape) * ds.reader.dtype.itemsize
        free = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else None
        if free is None or free > 1.2 * need:
            shared = BatchRing(n_slots, shape, ds.reader.dtype)
            ds.ring = shared
            batch_sampler = RingBatchSampler(batch_sampler, n_slots)
        else:
            print(
                f"note: /dev/shm has {free / 2**20:.0f} MiB free, the batch ring needs "
                f"{need / 2**20:.0f} MiB: workers fall back to torch's slower hand-over; give "
                "the container more (docker --shm-size, compose shm_size)",
                flush=True,
            )
    loader = DataLoader(
        ds,
        batch_sampler=batch_sampler,
        collate_fn=collate_batch,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        # Its own generator: worker seeding must not consume the global RNG, or a resumed run
        # would draw other dropout masks than an uninterrupted one.
        generator=torch.Generator(),
    )
    return loader, shared


def _host_batch(batch: tuple[Any, ...]) -> tuple[Any, ...]:
    """A loader batch with x as a tensor: a ring slot is taken out of the ring (CPU runs; on
    CUDA the pin-memory thread has already copied it into page-locked memory)."""
    if isinstance(batch[0], RingSlot):
        return (torch.from_numpy(batch[0].array()), *batch[1:])
    return batch


def _tqdm_disabled(is_main: bool) -> bool | None:
    """tqdm's `disable`: off on other ranks and with TQDM_DISABLE; else None, which turns the
    bar off when stdout is not a terminal (`docker compose up` logs, a redirected run), as the
    other stages do; each epoch still prints its one summary line."""
    if not is_main or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false"):
        return True
    return None


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def train(
    cache_path: str | os.PathLike, run_dir: str | os.PathLike, cfg: Config, resume: bool = False
) -> dict[str, Any]:
    """Train `cfg.train.model` on the cache; return the summary also written to summary.json."""
    from tqdm import tqdm

    t = cfg.train
    run_dir = Path(run_dir)
    t_start = time.perf_counter()

    # -------- check everything before any work --------
    env = DistEnv.from_environ()
    device = resolve_device(t.device, env.local_rank)
    reader = open_cache(cache_path, cfg)
    data = make_datasets(reader, cfg)
    ds_train = data["train"]
    assert ds_train is not None
    ckpt = _check_run_dir(run_dir, cfg, resume)
    n_outputs = len(reader.label_names)
    margs = (
        ckpt["model_args"]  # on resume the architecture is the checkpoint's, not today's config's
        if ckpt
        else model_args(
            t.model,
            t.model_kwargs,
            ds_train.n_channels,
            ds_train.window_samples,
            n_outputs,
            reader.sfreq,
        )
    )
    torch.manual_seed(t.seed)
    model = build_model(margs)
    _check_wandb(cfg)
    if env.is_main:
        names = set(subject_keys(reader)[reader.recordings["split"] == "train"].tolist())
        if t.eval_split and data["eval"] is not None:
            shared = names & set(data["eval"].subjects().tolist())
            if shared:
                print(f"note: {len(shared)} subjects are in both 'train' and {t.eval_split!r}")

    # -------- distributed: ~10 lines, CPU (gloo) and GPU (nccl) alike --------
    if env.enabled:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        with contextlib.ExitStack() as cleanup:
            return _run(
                cfg, run_dir, reader, data, model, margs, ckpt, device, env, t_start, tqdm, cleanup
            )
    finally:
        if env.enabled:
            torch.distributed.destroy_process_group()


def _run(cfg, run_dir, reader, data, model, margs, ckpt, device, env, t_start, tqdm, cleanup):
    t = cfg.train
    is_main = env.is_main
    ds_train, ds_val, ds_eval = data["train"], data["val"], data["eval"]

    # -------- loaders --------
    per_rank = -(-len(ds_train) // env.world_size)
    train_sampler = WindowBatchSampler(
        len(ds_train),
        t.batch_size,
        shuffle=True,
        drop_last=per_rank >= t.batch_size,  # no ragged last batch, unless it is the only one
        seed=t.seed,
        rank=env.rank,
        world_size=env.world_size,
        weights=class_balanced_weights(ds_train.label) if t.balanced_sampling else None,
    )
    train_loader, ring = _loader(
        ds_train, train_sampler, device, t.num_workers, t.prefetch_factor, ring=True
    )
    if ring is not None:
        cleanup.callback(ring.close)

    eval_loaders = {
        name: _loader(
            ds,
            WindowBatchSampler(
                len(ds),
                t.batch_size,
                shuffle=False,
                rank=env.rank,
                world_size=env.world_size,
                even=False,  # every window once: metrics over the exact set
            ),
            device,
            t.num_workers,
            t.prefetch_factor,
        )[0]
        for name, ds in (("val", ds_val), ("eval", ds_eval))
        if ds is not None
    }

    steps_per_epoch = len(train_sampler)
    if t.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    total_steps = steps_per_epoch * t.epochs
    warmup_steps = int(round(t.warmup_epochs * steps_per_epoch))

    # -------- model, optimizer, schedule, state --------
    model.to(device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    raw_model = model
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    def schedule(step: int) -> float:
        return lr_factor(step, warmup_steps, total_steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start_epoch, history, best = 0, [], None
    best_epoch = -1
    if ckpt:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        train_sampler.load_state_dict(ckpt["sampler"])
        start_epoch, history = ckpt["epoch"], list(ckpt["history"])
        best, best_epoch = ckpt["best"]["score"], ckpt["best"]["epoch"]
        rngs = ckpt["rng"]
        _set_rng_state(rngs[env.rank] if len(rngs) == env.world_size else rngs[0])
        if is_main:
            print(f"resuming {run_dir} after epoch {start_epoch}/{t.epochs}", flush=True)
    else:
        torch.manual_seed(t.seed + env.rank)  # same weights everywhere, own dropout per rank
        np.random.seed(t.seed + env.rank)
        random.seed(t.seed + env.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if t.compile:
        model = torch.compile(model)
    if env.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    log = RunLog(run_dir, cfg, history, enabled=is_main)
    n_params = sum(p.numel() for p in raw_model.parameters())
    if is_main:
        print(
            f"train {len(ds_train)} windows, val {len(ds_val) if ds_val else 0}, eval "
            f"{len(ds_eval) if ds_eval else 0}; {margs['name']} ({n_params:,} parameters) on "
            f"{device}{f' x{env.world_size}' if env.world_size > 1 else ''}; "
            f"{steps_per_epoch} steps/epoch",
            flush=True,
        )

    # -------- the loop --------
    for epoch in range(start_epoch, t.epochs):
        train_sampler.set_epoch(epoch)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        n_seen, wait_s, busy_s = 0, 0.0, 0.0
        batches = iter(train_loader)
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{t.epochs}",
            leave=False,
            disable=_tqdm_disabled(is_main),
        )
        for _ in range(steps_per_epoch):
            t0 = time.perf_counter()
            batch = _host_batch(next(batches))
            t1 = time.perf_counter()
            loss, n_correct = train_step(
                model, optimizer, scheduler, batch, device, t.amp, t.grad_clip
            )
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
        totals = torch.stack(
            [
                loss_sum.double(),
                correct.double(),
                torch.tensor(float(n_seen), device=device, dtype=torch.float64),
            ]
        )
        if env.enabled:
            torch.distributed.all_reduce(totals)

        # -------- evaluate --------
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * steps_per_epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train": {
                "loss": float(totals[0] / max(totals[2], 1)),
                "accuracy": float(totals[1] / max(totals[2], 1)),
            },
            "samples_per_s": n_seen * env.world_size / max(busy_s, 1e-9),
            "data_wait_fraction": wait_s / max(busy_s, 1e-9),
            "epoch_time_s": busy_s,
        }
        for name in ("val", "eval"):
            row[name] = None
            if name in eval_loaders:
                ds = eval_loaders[name].dataset
                probs = predict(raw_model, eval_loaders[name], device, t.amp, env)
                row[name] = compute_metrics(probs, ds.label, ds.recording, ds.label_names)
        history.append(row)
        improved = ds_val is None or _better(row["val"], best)
        if improved:
            best_epoch = epoch
            if ds_val is not None:
                best = [row["val"]["balanced_accuracy"], -row["val"]["loss"]]
                best = [-math.inf if math.isnan(v) else v for v in best]

        # -------- checkpoint (rank 0) --------
        rngs: list[Any] = [_rng_state()]
        if env.enabled and env.world_size > 1:
            rngs = [None] * env.world_size
            torch.distributed.all_gather_object(rngs, _rng_state())
        if is_main:
            ckpt = {
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sampler": train_sampler.state_dict(),
                "epoch": epoch + 1,
                "best": {"epoch": best_epoch, "score": best},
                "history": history,
                "rng": rngs,
                "config": cfg.to_dict(),
                "model_args": margs,
                "cache": {
                    "path": str(reader.path),
                    "config_hash": str(reader.attrs.get("config_hash", "")),
                    "index_hash": str(reader.attrs.get("index_hash", "")),
                },
                "world_size": env.world_size,
                "brainpipe_version": __version__,
            }
            _save(ckpt, run_dir / "last.pt")
            if improved:
                _save(ckpt, run_dir / "best.pt")
            log.epoch(row)
            line = f"epoch {epoch + 1}/{t.epochs}  loss {row['train']['loss']:.4f}"
            for name in ("val", "eval"):
                if row[name]:
                    line += f"  {name} bacc {row[name]['balanced_accuracy']:.3f} auroc {row[name]['auroc']:.3f}"
            line += f"  {row['samples_per_s']:,.0f} samples/s  data wait {row['data_wait_fraction']:.1%}"
            print(line, flush=True)

    # -------- summary --------
    log.close()
    summary = _summary(
        history, best_epoch, cfg, run_dir, reader, margs, n_params, device, env, data
    )
    summary["time_s"] = time.perf_counter() - t_start
    if is_main:
        _write_json(run_dir / "summary.json", summary)
    return summary


def _summary(history, best_epoch, cfg, run_dir, reader, margs, n_params, device, env, data):
    # Throughput after the first epoch, which also pays for worker start-up and a cold page cache.
    steady = history[1:] if len(history) > 1 else history
    busy = sum(h["epoch_time_s"] for h in steady)
    samples = sum(h["samples_per_s"] * h["epoch_time_s"] for h in steady)
    wait = sum(h["data_wait_fraction"] * h["epoch_time_s"] for h in steady)
    best = history[best_epoch] if history and best_epoch >= 0 else (history[-1] if history else {})
    return {
        "eval": best.get("eval") or {},
        "val": best.get("val") or {},
        "eval_last": (history[-1].get("eval") or {}) if history else {},
        "best_epoch": best_epoch + 1,
        "epochs": len(history),
        "samples_per_s": samples / busy if busy else 0.0,
        "data_wait_fraction": wait / busy if busy else 0.0,
        "first_epoch_samples_per_s": history[0]["samples_per_s"] if history else 0.0,
        "model": margs,
        "n_params": n_params,
        "device": str(device),
        "world_size": env.world_size,
        "windows": {k: (len(v) if v is not None else 0) for k, v in data.items()},
        "label_names": list(reader.label_names),
        "cache": str(reader.path),
        "run_dir": str(run_dir),
        "checkpoints": {"last": str(run_dir / "last.pt"), "best": str(run_dir / "best.pt")},
    }
