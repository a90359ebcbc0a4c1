"""Samplers: which windows each step reads, in which order, on which rank; and the validation carve.

Owns `WindowBatchSampler` (shuffled, optionally class-balanced, sharded for DDP),
`SubjectPairSampler` (pairs of windows, same/different subject), `class_balanced_weights`,
`carve_validation` (subjects of a split divided into train and validation) and the epoch/seed
state that makes every order resumable (`state_dict`/`load_state_dict`). All are plain iterables
of index arrays for `DataLoader(batch_sampler=...)`, torch-free and picklable.

    train_subjects, val_subjects = carve_validation(reader, fraction=0.2, seed=0)
    sampler = WindowBatchSampler(len(ds), 256, seed=0, rank=0, world_size=1,
                                 weights=class_balanced_weights(ds.label))
    sampler.set_epoch(epoch)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from brainpipe.cachefile import STATUS_DONE, CacheReader
from brainpipe.datasets import subject_keys
from brainpipe.errors import BrainpipeError

if TYPE_CHECKING:
    from brainpipe.datasets import SubjectPairDataset


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Sampling probabilities that give every present class the same expected share."""
    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        return np.zeros(0)
    counts = np.bincount(labels)
    present = int((counts > 0).sum())
    return 1.0 / (present * counts[labels])


class _EpochSeeded:
    """A sampler whose order is a function of (seed, epoch): resumable from its state_dict."""

    seed: int
    epoch: int

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])


class WindowBatchSampler(_EpochSeeded):
    """Batches of window indices: shuffled per epoch, optionally class-balanced, sharded for DDP.

    Like torch's DistributedSampler + BatchSampler, without torch: every rank permutes the
    same way (seeded by `seed` and the epoch set with `set_epoch`) and takes every
    `world_size`-th index from `rank`; with `even=True` the permutation is padded by wrapping
    around so all ranks get the same number of batches (DDP needs it for training). With
    `weights` (see `class_balanced_weights`) each rank draws its share with replacement instead.

    The state is (seed, epoch): restoring both replays an epoch exactly.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        weights: np.ndarray | None = None,
        even: bool = True,
    ):
        if batch_size < 1:
            raise BrainpipeError(f"batch_size={batch_size}: must be >= 1")
        if not 0 <= rank < world_size:
            raise BrainpipeError(f"rank {rank} is not in [0, world_size={world_size})")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if len(weights) != n or (n and not weights.sum() > 0):
                raise BrainpipeError(f"sampling weights: need {n} non-negative weights, not all 0")
            weights = weights / weights.sum()
        self.n, self.batch_size, self.shuffle, self.drop_last = (
            int(n),
            batch_size,
            shuffle,
            drop_last,
        )
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.weights, self.even = weights, even
        self.epoch = 0

    def num_indices(self) -> int:
        """Indices this rank sees per epoch."""
        if self.weights is not None or self.even:
            return -(-self.n // self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def indices(self) -> np.ndarray:
        if self.weights is not None:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank])
            return rng.choice(self.n, size=self.num_indices(), p=self.weights)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n, dtype=np.int64)
        if self.world_size > 1:
            if self.even and self.n:
                order = np.resize(order, self.num_indices() * self.world_size)
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        k = self.num_indices()
        return k // self.batch_size if self.drop_last else -(-k // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        idx = self.indices()
        for b in range(len(self)):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size]


class SubjectPairSampler(_EpochSeeded):
    """Batches of window pairs with a target share of same-subject pairs, for DDP too.

    Subjects are drawn uniformly (not windows), so subjects with many windows do not dominate.
    Each rank draws its own stream (seeded by seed, epoch and rank): the pair equivalent of
    sharding. `n_batches` per epoch and rank.
    """

    def __init__(
        self,
        pairs: SubjectPairDataset,
        batch_size: int,
        n_batches: int,
        *,
        same_fraction: float = 0.5,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= same_fraction <= 1:
            raise BrainpipeError(f"same_fraction={same_fraction}: must be in [0, 1]")
        if same_fraction > 0 and not (pairs.count >= 2).any():
            raise BrainpipeError("same-subject pairs need a subject with at least two windows")
        if same_fraction < 1 and len(pairs.count) < 2:
            raise BrainpipeError(
                f"different-subject pairs need two subjects; the windows hold {len(pairs.count)}"
            )
        if not 0 <= rank < world_size:
            raise BrainpipeError(f"rank {rank} is not in [0, world_size={world_size})")
        self.pairs, self.batch_size, self.n_batches = pairs, batch_size, n_batches
        self.same_fraction, self.seed, self.rank = same_fraction, int(seed), rank
        self.world_size = world_size
        self.epoch = 0

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        for _ in range(self.n_batches):
            yield self.pairs.sample(rng, self.batch_size, self.same_fraction)


# ---------------------------------------------------------------------------------------------
# Validation: carved out of a split by subject
# ---------------------------------------------------------------------------------------------


def _subject_order(names: Sequence[str], seed: int) -> list[str]:
    # A keyed hash, not a seeded permutation: the same subject lands on the same side for a
    # seed on any machine and whatever other subjects the corpus holds.
    return sorted(names, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())


def carve_validation(
    reader: CacheReader, fraction: float, seed: int = 0, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Divide the subjects of `split` into (train, validation) subjects: no subject on both sides.

    Stratified by class (a subject's class is the highest label among its windows and
    recordings, so a TUSZ subject with any seizure counts as a seizure subject): each class gives
    round(fraction * its subjects) to validation, at least one when it has two or more and
    `fraction > 0`, never all of them. Deterministic for `seed` on any machine.
    """
    if not 0 <= fraction < 1:
        raise BrainpipeError(f"validation fraction {fraction}: must be in [0, 1)")
    r = reader.recordings
    keys = subject_keys(reader)
    in_split = (r["split"] == split) & (r["status"] == STATUS_DONE)
    rec_class = r["label"].astype(np.int64).copy()
    w = reader.windows
    if len(w["recording"]):
        np.maximum.at(rec_class, w["recording"].astype(np.int64), w["label"].astype(np.int64))
    names, inverse = np.unique(keys[in_split], return_inverse=True)
    subject_class = np.full(len(names), -1, np.int64)
    np.maximum.at(subject_class, inverse, rec_class[in_split])
    val: list[str] = []
    for c in np.unique(subject_class).tolist():
        group = names[subject_class == c].tolist()
        k = int(round(fraction * len(group)))
        if fraction > 0 and len(group) >= 2:
            k = min(max(k, 1), len(group) - 1)
        elif len(group) < 2:
            k = 0
        val += _subject_order(group, seed)[:k]
    val_set = np.array(sorted(val), dtype=names.dtype)
    train = names[~np.isin(names, val_set)]
    return train, val_set
