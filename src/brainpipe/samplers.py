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
from collections.abc import Collection, Iterator, Sequence
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


class _SubjectTable:
    """Windows grouped by subject code: O(1) draws of a subject's k-th window."""

    def __init__(self, subject: np.ndarray):
        self.subject = np.asarray(subject, dtype=np.int64)
        names, code = np.unique(self.subject, return_inverse=True)
        self.code = code.astype(np.int64)  # 0..n_subjects-1
        self.order = np.argsort(self.code, kind="stable")
        self.count = np.bincount(self.code, minlength=len(names)).astype(np.int64)
        self.first = np.concatenate([[0], np.cumsum(self.count)[:-1]]).astype(np.int64)


class PairBatchSampler(_EpochSeeded):
    """Batches of `batch_size` window pairs as one flat array `[a_1..a_B, b_1..b_B]` (2B windows).

    Every window is the first of a pair once per epoch (a permutation sharded over DDP ranks
    like `WindowBatchSampler`, so no window anchors on two ranks); its partner is another
    window of the same subject for round(B * same_fraction) pairs of each batch and a window of
    a uniformly drawn other subject for the rest. `subject`: the subject code of each window.
    """

    def __init__(
        self,
        subject: np.ndarray,
        batch_size: int,
        *,
        same_fraction: float = 0.5,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.table = _SubjectTable(subject)
        if len(self.table.count) < 2 or not (self.table.count >= 2).any():
            raise BrainpipeError(
                f"subject pairs need two subjects and one with two windows; the training "
                f"windows hold {len(self.table.count)} subjects"
            )
        if not 0 <= same_fraction <= 1:
            raise BrainpipeError(f"same_fraction={same_fraction}: must be in [0, 1]")
        self.anchors = WindowBatchSampler(
            len(self.table.subject),
            batch_size,
            drop_last=True,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        self.pairs_per_batch, self.same_fraction = batch_size, same_fraction
        self.batch_size = 2 * batch_size  # windows per batch, as the loader's ring sees them
        self.seed, self.epoch, self.rank = int(seed), 0, rank

    def __len__(self) -> int:
        return len(self.anchors)

    def __iter__(self) -> Iterator[np.ndarray]:
        t = self.table
        self.anchors.set_epoch(self.epoch)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 1])
        n = self.pairs_per_batch
        multi = t.count[t.code] >= 2
        for a in self.anchors:
            same = np.zeros(n, bool)
            same[: int(round(n * self.same_fraction))] = True
            rng.shuffle(same)
            same &= multi[a]  # a subject's only window has no same-subject partner
            s1 = t.code[a]
            s2 = s1.copy()
            n_sub, n_diff = len(t.count), int((~same).sum())
            s2[~same] = (s1[~same] + 1 + rng.integers(0, n_sub - 1, n_diff)) % n_sub
            k2 = (rng.random(n) * t.count[s2]).astype(np.int64)
            # Same subject: any of its windows but the anchor itself.
            b = t.order[t.first[s2] + k2]
            clash = same & (b == a)
            while clash.any():
                k2[clash] = (rng.random(int(clash.sum())) * t.count[s2[clash]]).astype(np.int64)
                b[clash] = t.order[t.first[s2[clash]] + k2[clash]]
                clash = same & (b == a)
            yield np.concatenate([a, b])


class SubjectBatchSampler(_EpochSeeded):
    """Batches of k windows of each of m subjects (`batch_size` = m * k), for contrastive losses.

    Each epoch every subject's windows are shuffled and cut into groups of k (the remainder
    waits for another epoch); the groups are shuffled and dealt to the DDP ranks in turn, so a
    window is in at most one batch of one rank. All ranks get the same number of batches.
    """

    def __init__(
        self,
        subject: np.ndarray,
        batch_size: int,
        windows_per_subject: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.table = _SubjectTable(subject)
        self.k = int(windows_per_subject)
        self.m = batch_size // self.k
        if self.m < 2:
            raise BrainpipeError(
                f"train.batch_size={batch_size} holds {self.m} subjects of "
                f"train.windows_per_subject={self.k} windows; a contrastive batch needs two"
            )
        groups = int((self.table.count // self.k).sum())
        if groups // world_size < self.m:
            raise BrainpipeError(
                f"the training windows give {groups} groups of {self.k} windows of one "
                f"subject, fewer than a batch of {self.m} per rank; lower train.batch_size or "
                "train.windows_per_subject"
            )
        self.batch_size = self.m * self.k
        self.n_batches = groups // world_size // self.m
        self.seed, self.epoch, self.rank, self.world_size = int(seed), 0, rank, world_size

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[np.ndarray]:
        t, k = self.table, self.k
        rng = np.random.default_rng([self.seed, self.epoch])  # the same on every rank
        groups = []
        for s in range(len(t.count)):
            win = t.order[t.first[s] : t.first[s] + t.count[s]]
            win = rng.permutation(win)
            groups.append(win[: len(win) // k * k].reshape(-1, k))
        all_groups = np.concatenate(groups) if groups else np.zeros((0, k), np.int64)
        all_groups = all_groups[rng.permutation(len(all_groups))][self.rank :: self.world_size]
        for b in range(self.n_batches):
            yield all_groups[b * self.m : (b + 1) * self.m].reshape(-1)


def carve_subjects(
    names: np.ndarray, val_fraction: float, test_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subjects divided into (train, validation, held-out test), deterministically from `seed`.

    For corpora without a split of their own (a CamCAN-like MEG tree). Each side gets
    round(fraction * n) subjects, at least two when the fraction is > 0 (pair metrics need
    two subjects), and train keeps at least two. The same keyed hash as `carve_validation`.
    """
    names = np.unique(np.asarray(names, dtype=str))
    n = len(names)

    def size(fraction: float) -> int:
        return 0 if fraction <= 0 else max(2, int(round(fraction * n)))

    n_test, n_val = size(test_fraction), size(val_fraction)
    if n - n_test - n_val < 2:
        raise BrainpipeError(
            f"{n} subjects cannot give train.test_fraction={test_fraction} and "
            f"train.val_fraction={val_fraction} two subjects each and keep two for training; "
            "add subjects or lower the fractions"
        )
    order = _subject_order(names.tolist(), seed)
    test = np.array(sorted(order[:n_test]), dtype=names.dtype)
    val = np.array(sorted(order[n_test : n_test + n_val]), dtype=names.dtype)
    train = names[~np.isin(names, np.concatenate([test, val]))]
    return train, val, test


# ---------------------------------------------------------------------------------------------
# Validation: carved out of a split by subject
# ---------------------------------------------------------------------------------------------


def _subject_order(names: Sequence[str], seed: int) -> list[str]:
    # A keyed hash, not a seeded permutation: the same subject lands on the same side for a
    # seed on any machine and whatever other subjects the corpus holds.
    return sorted(names, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())


def subject_classes(
    reader: CacheReader, split: str | None = "train", subjects: Collection[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(subject keys, class of each) of the finished recordings of `split` (None: every
    split), optionally only `subjects`. A subject's class is the highest label among its
    windows and recordings, so a TUSZ subject with any seizure counts as a seizure subject."""
    r = reader.recordings
    keys = subject_keys(reader)
    keep = r["status"] == STATUS_DONE
    if split is not None:
        keep &= r["split"] == split
    if subjects is not None:
        keep &= np.isin(keys, np.asarray(list(subjects), dtype=str))
    rec_class = r["label"].astype(np.int64).copy()
    w = reader.windows
    if len(w["recording"]):
        np.maximum.at(rec_class, w["recording"].astype(np.int64), w["label"].astype(np.int64))
    names, inverse = np.unique(keys[keep], return_inverse=True)
    subject_class = np.full(len(names), -1, np.int64)
    np.maximum.at(subject_class, inverse, rec_class[keep])
    return names, subject_class


def carve_validation(
    reader: CacheReader,
    fraction: float,
    seed: int = 0,
    split: str | None = "train",
    subjects: Collection[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Divide the subjects of `split` (None: every split; `subjects`: only those) into (train,
    validation) subjects: no subject on both sides.

    Stratified by class (`subject_classes`): each class gives round(fraction * its subjects)
    to validation, at least one when it has two or more and `fraction > 0`, never all of them.
    Deterministic for `seed` on any machine.
    """
    if not 0 <= fraction < 1:
        raise BrainpipeError(f"validation fraction {fraction}: must be in [0, 1)")
    names, subject_class = subject_classes(reader, split, subjects)
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
