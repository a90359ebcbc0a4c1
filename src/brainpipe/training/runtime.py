"""What every torch stage sets up before its work: its place in DDP, the device, the cache
checked against the config, the splits and the loaders that feed the model.

`train`, `predict` and `embed` are stages and never import each other; the loader they share
lives here so that inference reads batches exactly as training does (same dataset, same batch
ring, same worker settings). Before any worker starts, /dev/shm is checked for the batches in
flight (`shm_prefetch`: a smaller prefetch, or one line naming free, needed and the fix). The
subject tasks (`train.task` pairs/contrastive) get their splits by subject
(`make_subject_datasets`) and their samplers (`train_sampler`) here too.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from brainpipe import cacheset
from brainpipe.cachefile import CacheReader
from brainpipe.config import Config
from brainpipe.datasets import CacheWindowDataset, subject_keys
from brainpipe.errors import BrainpipeError
from brainpipe.protocols import Part, cache_splits, plan_splits
from brainpipe.reporting import shm_prefetch_note
from brainpipe.ring import (
    SHM_DIR,
    BatchRing,
    RingBatchSampler,
    collate_batch,
    die_with_parent,
    remove_stale_rings,
)
from brainpipe.samplers import (
    PairBatchSampler,
    SubjectBatchSampler,
    WindowBatchSampler,
    carve_subjects,
    class_balanced_weights,
)
from brainpipe.training.rundir import same_setting

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


def open_checked_cache(cache_path: str | os.PathLike, cfg: Config) -> CacheReader:
    """Open the cache and check that it was built with this config's preprocessing.

    The window may differ (windows are recomputed from the continuous signal); the
    preprocessing may not: a model trained on other filters or another rate than the config
    says would silently be a different experiment.
    """
    reader = cacheset.open_cache(cache_path)  # a cache or a set; refuses unfinished builds
    built = reader.config.get("preprocess")
    if built is not None:
        want = cfg.to_dict()["preprocess"]
        diff = [
            k for k in sorted(set(built) | set(want)) if not same_setting(built.get(k), want.get(k))
        ]
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


@dataclass
class Splits:
    """The windows of a run: train, validation (carved from train by subject) and eval."""

    train: CacheWindowDataset
    val: CacheWindowDataset | None
    eval: CacheWindowDataset | None

    def evaluated(self) -> dict[str, CacheWindowDataset]:
        """The splits scored each epoch, by name."""
        return {k: ds for k, ds in (("val", self.val), ("eval", self.eval)) if ds is not None}

    def sizes(self) -> dict[str, int]:
        sets = (("train", self.train), ("val", self.val), ("eval", self.eval))
        return {k: len(ds) if ds is not None else 0 for k, ds in sets}


def make_subject_datasets(reader: CacheReader, cfg: Config) -> Splits:
    """The subject tasks' splits: by subject, y = subject code, no labels needed.

    The corpus's own `train` and `train.eval_split` splits when it has both (validation carved
    from train); otherwise train / validation / held-out test subjects carved from all
    subjects with `train.val_fraction` and `train.test_fraction` (`carve_subjects`).
    """
    t, w = cfg.train, cfg.window
    r = reader.recordings
    done = r["status"] == 1
    splits = set(r["split"][done].tolist())
    keys = subject_keys(reader)
    if "train" in splits and t.eval_split in splits:
        names = keys[done & (r["split"] == "train")]
        train_s, val_s, _ = carve_subjects(names, t.val_fraction, 0.0, t.seed)
        pool, eval_split, eval_s = "train", t.eval_split, None
    else:
        train_s, val_s, eval_s = carve_subjects(keys[done], t.val_fraction, t.test_fraction, t.seed)
        pool = eval_split = None
    kw: dict[str, Any] = dict(
        window_s=w.seconds, stride_s=w.stride_seconds, labelled_only=False, target="subject"
    )
    data = Splits(
        train=CacheWindowDataset(
            reader, pool, subjects=train_s, augment=t.augment, seed=t.seed, **kw
        ),
        val=CacheWindowDataset(reader, pool, subjects=val_s, **kw) if len(val_s) else None,
        eval=CacheWindowDataset(reader, eval_split, subjects=eval_s, **kw)
        if eval_s is None or len(eval_s)
        else None,
    )
    for name, ds in (("train", data.train), *data.evaluated().items()):
        if len(ds) == 0:
            raise BrainpipeError(
                f"{reader.path}: the {name} subjects have no windows of {w.seconds:g} s; check "
                "window.seconds against the recordings' lengths"
            )
    return data


def make_datasets(reader: CacheReader, cfg: Config) -> Splits:
    """train / val / eval datasets (`protocols.plan_splits`: validation carved from train by
    subject or the corpus's own split, eval a split or a held-out fold), checked for emptiness."""
    t, w = cfg.train, cfg.window
    if t.task != "classify":
        return make_subject_datasets(reader, cfg)
    if t.eval_split and not t.folds and t.eval_split not in cache_splits(reader):
        raise BrainpipeError(
            f"{reader.path}: no recordings in split {t.eval_split!r}; the cache has "
            f"{', '.join(map(repr, cache_splits(reader))) or 'none'}; set train.eval_split to "
            "one (or '' for none)"
        )
    plan = plan_splits(reader, cfg)
    kw: dict[str, Any] = dict(
        window_s=w.seconds, stride_s=w.stride_seconds, label_overlap=w.label_overlap
    )

    def part(p: Part | None, **more: Any) -> CacheWindowDataset | None:
        return (
            None
            if p is None
            else CacheWindowDataset(reader, p.split, subjects=p.subjects, **kw, **more)
        )

    train = part(plan.train, augment=t.augment, seed=t.seed)
    assert train is not None
    data = Splits(train=train, val=part(plan.val), eval=part(plan.eval))
    n = data.train.window_samples
    for name, ds in (("train", data.train), *data.evaluated().items()):
        if len(ds) == 0:
            raise BrainpipeError(
                f"{reader.path}: split {ds.split!r} ({name}) has no labelled windows of "
                f"{w.seconds:g} s ({n} samples); check window.seconds against the recordings' "
                "lengths and that the corpus has labels"
            )
    counts = data.train.class_counts()
    if (counts > 0).sum() < 2:
        present = [reader.label_names[i] for i in np.flatnonzero(counts)]
        raise BrainpipeError(
            f"{reader.path}: the training windows hold only class {present}; training needs "
            f"at least two of {list(reader.label_names)}"
        )
    return data


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------


def shm_prefetch(
    free: int | None, num_workers: int, prefetch_factor: int, batch_bytes: int, scored: bool
) -> int:
    """The largest prefetch factor <= `prefetch_factor` whose batches fit `free` bytes of /dev/shm.

    With workers, every batch in flight lives in shared memory: the training ring
    (`BatchRing.slots_for` slots) and, while a split is scored, torch's own hand-over of
    `num_workers * prefetch_factor` batches. A worker that cannot allocate them dies in its
    queue feeder and the trainer waits forever, so a run that does not fit fails here, in one
    line, before any worker starts.
    """
    if num_workers == 0 or free is None:
        return prefetch_factor

    def need(pf: int) -> int:
        in_flight = BatchRing.slots_for(num_workers, pf) + (num_workers * pf if scored else 0)
        return int(1.1 * in_flight * batch_bytes) + (4 << 20)  # 10% and 4 MiB for the rest

    for pf in range(prefetch_factor, 0, -1):
        if need(pf) <= free:
            if pf < prefetch_factor:
                print(shm_prefetch_note(free, prefetch_factor, pf), flush=True)
            return pf
    raise BrainpipeError(
        f"/dev/shm has {free / 2**20:.0f} MiB free but {num_workers} loader workers need "
        f"{need(1) / 2**20:.0f} MiB for their batches ({batch_bytes / 2**20:.1f} MiB each) even "
        "at train.prefetch_factor=1; give the container more shared memory (docker --shm-size, "
        "compose shm_size), or lower train.batch_size or train.num_workers (0: no shared memory)"
    )


def shm_free() -> int | None:
    """Bytes free in /dev/shm for this process: shared by the ranks of one node."""
    if not SHM_DIR.is_dir():
        return None
    remove_stale_rings()  # rings of trainers killed with -9 count as used until removed
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return shutil.disk_usage(SHM_DIR).free // per_node


def make_loader(
    ds, batch_sampler, device: torch.device, num_workers: int, prefetch_factor: int, ring=False
):
    """A DataLoader over whole batches; with `ring`, workers hand batches over in a BatchRing.

    Returns (loader, ring or None). Without a ring (or without workers) torch moves each batch
    through fresh shared memory, which costs a worker ~40 ms per 21 MB batch (see BatchRing).
    Workers die with this process (`die_with_parent`). Check /dev/shm first (`shm_prefetch`).
    """
    from torch.utils.data import DataLoader

    shared = None
    if ring and num_workers > 0:
        n_slots = BatchRing.slots_for(num_workers, prefetch_factor)
        shape = (batch_sampler.batch_size, ds.window_samples, ds.n_channels)
        shared = BatchRing(n_slots, shape, ds.reader.dtype)
        ds.ring = shared
        batch_sampler = RingBatchSampler(batch_sampler, n_slots)
    loader = DataLoader(
        ds,
        batch_sampler=batch_sampler,
        collate_fn=collate_batch,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=functools.partial(die_with_parent, os.getpid()) if num_workers else None,
        # Its own generator: worker seeding must not consume the global RNG, or a resumed run
        # would draw other dropout masks than an uninterrupted one.
        generator=torch.Generator(),
    )
    return loader, shared


@dataclass
class Loaders:
    train: Any  # DataLoader
    sampler: Any  # WindowBatchSampler, or the subject tasks' (see train_sampler)
    evaluated: dict[str, Any]  # split name -> DataLoader, every window once
    steps_per_epoch: int
    ring: BatchRing | None


def train_sampler(ds: CacheWindowDataset, cfg: Config, env: DistEnv) -> Any:
    """The training batches of `train.task`: shuffled windows, subject pairs, or k windows of
    m subjects; sharded over DDP ranks, resumable (state_dict)."""
    t = cfg.train
    if t.task == "pairs":
        return PairBatchSampler(
            ds.label, t.batch_size, same_fraction=t.same_fraction, seed=t.seed,
            rank=env.rank, world_size=env.world_size,
        )  # fmt: skip
    if t.task == "contrastive":
        return SubjectBatchSampler(
            ds.label, t.batch_size, t.windows_per_subject, seed=t.seed, rank=env.rank,
            world_size=env.world_size,
        )  # fmt: skip
    per_rank = -(-len(ds) // env.world_size)
    return WindowBatchSampler(
        len(ds),
        t.batch_size,
        shuffle=True,
        drop_last=per_rank >= t.batch_size,  # no ragged last batch, unless it is the only one
        seed=t.seed,
        rank=env.rank,
        world_size=env.world_size,
        weights=class_balanced_weights(ds.label) if t.balanced_sampling else None,
    )


def make_loaders(data: Splits, cfg: Config, env: DistEnv, device: torch.device) -> Loaders:
    """The training loader (shuffled, sharded, through the batch ring) and the scoring loaders."""
    t = cfg.train
    sampler = train_sampler(data.train, cfg, env)
    batch_bytes = sampler.batch_size * data.train.window_samples * data.train.n_channels
    batch_bytes *= data.train.reader.dtype.itemsize
    prefetch = shm_prefetch(
        shm_free() if t.num_workers else None,
        t.num_workers,
        t.prefetch_factor,
        batch_bytes,
        bool(data.evaluated()),
    )
    train_loader, ring = make_loader(
        data.train, sampler, device, t.num_workers, prefetch, ring=True
    )
    evaluated = {
        name: make_loader(
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
            prefetch,
        )[0]
        for name, ds in data.evaluated().items()
    }
    steps = len(sampler)
    if t.max_steps_per_epoch is not None:
        steps = min(steps, t.max_steps_per_epoch)
    return Loaders(train_loader, sampler, evaluated, steps, ring)


def progress_bar_disabled(is_main: bool) -> bool | None:
    """tqdm's `disable`: off on other ranks and with TQDM_DISABLE; else None, which turns the
    bar off when stdout is not a terminal (`docker compose up` logs, a redirected run), as the
    other stages do; each epoch still prints its one summary line."""
    if not is_main or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false"):
        return True
    return None
