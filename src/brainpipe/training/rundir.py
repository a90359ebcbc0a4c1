"""The run dir: what `train` writes there and reads back on --resume.

Owns the checkpoint (a plain dict of tensors and plain types, written atomically:
`save_checkpoint`, `load_checkpoint`), the RNG state it carries (`rng_state`, `set_rng_state`),
the checks before a run starts or resumes (`check_run_dir`: a run dir with a run needs
--resume; a resume may not change the data splits), the logs (`RunLog`: TensorBoard,
metrics.jsonl, W&B) and JSON output (`write_json`, summary.json).

    run_dir/
        last.pt, best.pt        checkpoints (see train.py for their keys)
        metrics.jsonl           one line per epoch
        events.out.tfevents.*   TensorBoard
        summary.json            at the end
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainpipe.config import Config
from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output, check_writable_dir
from brainpipe.ring import pid_alive

# ---------------------------------------------------------------------------------------------
# Checkpoints and RNG state
# ---------------------------------------------------------------------------------------------


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(ckpt, tmp)


def restore_best(run_dir: Path, ckpt: dict[str, Any]) -> bool:
    """Make best.pt hold the best epoch `ckpt` (last.pt) records; False when it cannot.

    `train` writes best.pt before last.pt, so last.pt never records a best epoch whose
    best.pt was not written. A run killed while writing best.pt by an older brainpipe (which
    wrote last.pt first) lost it: when the best epoch is last.pt's own, last.pt is that best.
    """
    want = ckpt["best"]["epoch"] + 1
    path = run_dir / "best.pt"
    if path.exists():
        try:
            if torch.load(path, map_location="cpu", weights_only=True)["epoch"] == want:
                return True
        except Exception:  # torn or foreign: replaced below when possible
            pass
    if want == ckpt["epoch"]:
        save_checkpoint(ckpt, path)
        return True
    with contextlib.suppress(OSError):
        path.unlink()  # stale weights must not pass for the recorded best epoch's
    return False


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise BrainpipeError(f"{path}: no checkpoint") from e
    except Exception as e:
        raise BrainpipeError(f"{path}: not a readable brainpipe checkpoint ({e})") from e


def rng_state() -> dict[str, Any]:
    """torch, numpy, Python (and CUDA) generator states of this process."""
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


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every rank's `rng_state()` in rank order (a collective under DDP: all ranks call it)."""
    if world_size <= 1:
        return [rng_state()]
    states: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


def seed_all(seed: int) -> None:
    """Seed torch's, numpy's and Python's generators with one seed."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


# ---------------------------------------------------------------------------------------------
# Checks before a run starts or resumes
# ---------------------------------------------------------------------------------------------


def same_setting(a: Any, b: Any) -> bool:
    """Config values equal up to float rounding (a value read back from JSON or YAML)."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_setting(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# Keys that decide which windows land in train, val and eval: a resumed run must keep them.
_DATA_KEYS = (
    ("window", "seconds"),
    ("window", "stride_seconds"),
    ("window", "label_overlap"),
    ("train", "seed"),
    ("train", "val_fraction"),
    ("train", "eval_split"),
    ("train", "task"),
    ("train", "test_fraction"),
    ("train", "val_split"),
    ("train", "folds"),
    ("train", "fold"),
    ("train", "fold_seed"),
    ("train", "fold_splits"),
)


def remove_torn_outputs(run_dir: Path) -> list[Path]:
    """Remove temp files (`.NAME.tmp-PID`, see `atomic_output`) that a killed writer left."""
    removed = []
    for tmp in run_dir.glob(".*.tmp-*") if run_dir.is_dir() else []:
        pid = tmp.name.rsplit(".tmp-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def check_run_dir(run_dir: Path, cfg: Config, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from (None for a new run), after checking the run dir for it."""
    remove_torn_outputs(run_dir)
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
    then, default = ckpt["config"], Config()
    for section, key in _DATA_KEYS:
        now = getattr(getattr(cfg, section), key)
        # A key left out of the saved config is at its default (`config._added`), or predates
        # the key: then whatever it is today.
        was = then[section].get(key, _default_or(default, section, key, now))
        if not same_setting(was, now):
            raise BrainpipeError(
                f"--resume: {section}.{key}={now!r} but the run in {run_dir} used {was!r}; "
                "changing it would change the data splits. Keep it, or start a new --run-dir"
            )
    return ckpt


def _default_or(default: Config, section: str, key: str, now: Any) -> Any:
    """The default of a key saved configs leave out at its default (`config._added`); `now`
    for any other key."""
    f = {f.name: f for f in dataclasses.fields(getattr(default, section))}[key]
    return getattr(getattr(default, section), key) if f.metadata.get("omit_at_default") else now


def check_wandb(cfg: Config) -> None:
    t = cfg.train
    if t.wandb_project and t.wandb_mode != "disabled":
        try:
            import wandb  # noqa: F401
        except ImportError as e:
            raise BrainpipeError(
                f"train.wandb_project={t.wandb_project!r} needs wandb: pip install wandb, or "
                "unset train.wandb_project"
            ) from e


# ---------------------------------------------------------------------------------------------
# Logs and JSON
# ---------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any, lines: bool = False) -> None:
    """JSON (or JSON lines, one per item of `obj`), written atomically; NaN and inf as null."""
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
        write_json(run_dir / "metrics.jsonl", history, lines=True)
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


def steady_throughput(history: list[dict[str, Any]]) -> dict[str, float]:
    """samples/s and data-wait fraction over the epochs after the first, which also pays for
    worker start-up and a cold page cache (all epochs when there is only one)."""
    steady = history[1:] if len(history) > 1 else history
    busy = sum(h["epoch_time_s"] for h in steady)
    samples = sum(h["samples_per_s"] * h["epoch_time_s"] for h in steady)
    wait = sum(h["data_wait_fraction"] * h["epoch_time_s"] for h in steady)
    return {
        "samples_per_s": samples / busy if busy else 0.0,
        "data_wait_fraction": wait / busy if busy else 0.0,
        "first_epoch_samples_per_s": history[0]["samples_per_s"] if history else 0.0,
    }
