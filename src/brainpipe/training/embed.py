"""The `embed` stage: the trained encoder's output for every window of a cache.

Reads a cache and a checkpoint of `brainpipe train` (any task; the subject tasks' encoders give
subject embeddings, a classifier gives its logits); writes an embeddings file
(`embeddingfile.py`): one row per window with its recording, subject and start.

    brainpipe embed --cache data/meg.h5 --checkpoint runs/meg/best.pt --out data/meg-emb.h5

The windows are the checkpoint's (its config's window length and stride), over every finished
recording of every split, read by the training loader (`runtime.make_loader`: same dataset,
workers and batch ring), in batches of the checkpoint's `train.batch_size`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainpipe.config import config_from_dict
from brainpipe.datasets import CacheWindowDataset, subject_keys
from brainpipe.embeddingfile import write_embeddings
from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import check_writable_dir
from brainpipe.samplers import WindowBatchSampler
from brainpipe.training.models import load_checkpoint_model
from brainpipe.training.objectives import model_outputs
from brainpipe.training.rundir import load_checkpoint
from brainpipe.training.runtime import (
    make_loader,
    open_checked_cache,
    resolve_device,
    shm_free,
    shm_prefetch,
)


def embed(
    cache_path: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    device: str = "auto",
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Write the embeddings of every window of the cache; return a short summary."""
    started = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    if "model_args" not in ckpt or "config" not in ckpt:
        raise BrainpipeError(f"{checkpoint}: not a brainpipe train checkpoint (no model_args)")
    cfg = config_from_dict(ckpt["config"])
    check_writable_dir(Path(out))
    reader = open_checked_cache(cache_path, cfg)  # the preprocessing the model was trained on
    w = cfg.window
    ds = CacheWindowDataset(
        reader, None, window_s=w.seconds, stride_s=w.stride_seconds, labelled_only=False
    )
    if len(ds) == 0:
        raise BrainpipeError(f"{reader.path}: no windows of {w.seconds:g} s to embed")
    model = load_checkpoint_model(ckpt, str(checkpoint))
    dev = resolve_device(device)
    model.to(dev)
    workers = cfg.train.num_workers if num_workers is None else num_workers
    sampler = WindowBatchSampler(len(ds), cfg.train.batch_size, shuffle=False, even=False)
    batch_bytes = sampler.batch_size * ds.window_samples * ds.n_channels * reader.dtype.itemsize
    prefetch = shm_prefetch(
        shm_free() if workers else None, workers, cfg.train.prefetch_factor, batch_bytes, False
    )
    loader, ring = make_loader(ds, sampler, dev, workers, prefetch, ring=True)
    try:
        emb = model_outputs(model, loader, dev, cfg.train.amp)
    finally:
        del loader
        if ring is not None:
            ring.close()
    r = reader.recordings
    write_embeddings(
        out,
        emb,
        ds.recording,
        r["path"][ds.recording],
        np.where(r["subject"][ds.recording] == "", "", subject_keys(reader)[ds.recording]),
        ds.start - r["offset"][ds.recording],
        attrs={
            "cache": str(reader.path),
            "checkpoint": str(checkpoint),
            "epoch": int(ckpt["epoch"]),
            "sfreq": reader.sfreq,
            "window_samples": ds.window_samples,
            "model": json.dumps(ckpt["model_args"]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    return {
        "out": str(out),
        "n_windows": int(len(emb)),
        "dim": int(emb.shape[1]),
        "n_subjects": int(len(np.unique(subject_keys(reader)[ds.recording]))),
        "time_s": time.perf_counter() - started,
        "device": str(dev),
        "torch": torch.__version__,
    }
