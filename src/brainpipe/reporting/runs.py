"""The text of the model side: what `synth`, `train`, `embed` and `predict` print.

Renders the summaries those commands return (`make_corpus`'s `CorpusSummary`, the dicts of
`train`, `embed` and `predict`) and the lines a training run prints as it goes (start, each
epoch, resume, notes). The torch code under `training/` hands plain values here and prints what
comes back; nothing here imports torch.

    print(epoch_line(row, cfg.train.epochs), flush=True)
    print(predict_text(predict(cache, checkpoint, out)))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# --- synth ---


def synth_line(summary: Any, layout: str, out: str | os.PathLike) -> str:
    """What `brainpipe synth` prints for a `synthetic.CorpusSummary`."""
    counts = ", ".join(
        f"{'/'.join(k) if isinstance(k, tuple) else k}={v}"
        for k, v in sorted(summary.counts.items())
    )
    return (
        f"wrote {len(summary.recordings)} {layout} recordings ({summary.total_seconds / 3600:.2f} h, "
        f"{summary.n_subjects} subjects) to {out}: {counts}"
    )


# --- train: while it runs ---


def shared_subjects_note(n_shared: int, eval_split: str) -> str:
    """The note when subjects of 'train' also appear in the eval split."""
    return f"note: {n_shared} subjects are in both 'train' and {eval_split!r}"


def train_start_line(setup: Any, n_params: int, steps_per_epoch: int) -> str:
    """The line printed before the first epoch: data, model, device (of a `train.Setup`)."""
    n, world_size = setup.data.sizes(), setup.env.world_size
    ddp = f" x{world_size}" if world_size > 1 else ""
    return (
        f"train {n['train']} windows, val {n['val']}, eval {n['eval']}; {setup.margs['name']} "
        f"({n_params:,} parameters) on {setup.device}{ddp}; {steps_per_epoch} steps/epoch"
    )


def finetune_line(model: str, mode: str, trainable: int, total: int, scaling: str) -> str:
    """What a foundation-model run trains (`train.finetune`) and how its input is scaled."""
    return f"{model} {mode}: {trainable:,} of {total:,} parameters train; input {scaling}"


def pretrained_line(report: dict[str, Any]) -> str:
    """The pretrained weights a run loaded: file, digest, keys loaded and started fresh."""
    fresh = ", ".join(report["fresh_keys"]) or "none"
    return (
        f"pretrained {report['path']} sha256 {report['sha256'][:16]}: "
        f"{report['loaded_keys']} keys loaded, fresh: {fresh}"
    )


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """The one line an epoch prints, from its row of metrics.jsonl."""
    line = f"epoch {row['epoch']}/{epochs}  loss {row['train']['loss']:.4f}"
    for name in ("val", "eval"):
        m = row[name]
        if m and "eer" in m:  # the subject tasks
            line += f"  {name} eer {m['eer']:.3f} top1 {m['identification_top1']:.3f}"
        elif m:
            line += f"  {name} bacc {m['balanced_accuracy']:.3f} auroc {m['auroc']:.3f}"
            if m.get("events"):
                line += f" ovlp-sens {m['events']['mean_sensitivity']:.3f}"
    return line + (
        f"  {row['samples_per_s']:,.0f} samples/s  data wait {row['data_wait_fraction']:.1%}"
    )


def resume_line(run_dir: str | os.PathLike, epoch: int, epochs: int) -> str:
    """The line a resumed run prints before its first epoch."""
    return f"resuming {run_dir} after epoch {epoch}/{epochs}"


def lost_best_note(best_epoch: int) -> str:
    """The note when a resumed run's best.pt is gone (best_epoch: 0-based)."""
    return f"note: best.pt of epoch {best_epoch + 1} is lost; the next improving epoch writes it"


def shm_prefetch_note(free: int, prefetch_factor: int, prefetch: int) -> str:
    """The note when /dev/shm is too small for `train.prefetch_factor` batches in flight."""
    return (
        f"note: /dev/shm has {free / 2**20:.0f} MiB free: train.prefetch_factor "
        f"{prefetch_factor} -> {prefetch} so the batches in flight fit; give the container "
        "more (docker --shm-size, compose shm_size) to prefetch more"
    )


# --- train, embed, predict: when done ---


def train_text(summary: dict[str, Any], run_dir: str | os.PathLike) -> str:
    """What `brainpipe train` prints for the summary `train` returns."""
    ev = summary.get("eval", {})
    head = (
        "eval: " + ", ".join(f"{k}={v:.4f}" for k, v in ev.items() if isinstance(v, float))
        if ev
        else "eval: (no eval split)"
    )
    return f"{head}\nwrote {Path(run_dir) / 'summary.json'}"


def embed_line(s: dict[str, Any]) -> str:
    """What `brainpipe embed` prints for the summary `embed` returns."""
    return f"wrote {s['out']}: {s['n_windows']} windows x {s['dim']} ({s['n_subjects']} subjects)"


def predict_text(s: dict[str, Any]) -> str:
    """What `brainpipe predict` prints for the summary `predict` returns (predict.json)."""
    pp = ", ".join(f"{k}={v:g}" for k, v in s["postprocess"].items())
    ovlp = s["nedc_ovlp"]
    return "\n".join(
        [
            f"predicted {s['n_windows']} windows of {s['n_recordings']} recordings ({s['split']}) "
            f"at {s['windows_per_s'] or 0:,.0f} windows/s on {s['device']}: {s['n_events']} events",
            f"postprocess ({s['postprocess_source']['from']}): {pp}",
            f"against the cache's events (NEDC OVLP): sensitivity {ovlp['sensitivity']:.4f}, "
            f"{ovlp['fa_per_24h']:.2f} FA/24h; full report: brainpipe score --ref {s['cache']} "
            f"--hyp {s['out']['hyp']}",
            f"wrote {s['out']['hyp']}, {s['out']['windows']}",
        ]
    )
