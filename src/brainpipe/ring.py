"""The shared-memory batch ring: how DataLoader workers hand whole batches to the training process.

Owns `BatchRing` (slots of shared memory every process maps once), the tokens that travel in
its place (`SlotBatch` from the sampler to a worker, `RingSlot` from the worker back), the
`RingBatchSampler` that numbers the slots, and `collate_batch`, the DataLoader `collate_fn` for
batches a dataset already assembled. Torch-free at import (torch is imported where a tensor is
made), so datasets can import it.

    ring = BatchRing(BatchRing.slots_for(num_workers, prefetch_factor), (B, n_samples, n_channels))
    ds.ring = ring                                        # a CacheWindowDataset
    loader = DataLoader(ds, batch_sampler=RingBatchSampler(sampler, ring.n_slots),
                        collate_fn=collate_batch, num_workers=num_workers, pin_memory=True)
    ...
    ring.close()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np


class SlotBatch(NamedTuple):
    """What `RingBatchSampler` yields: read these window indices into this slot of the ring."""

    slot: int
    indices: np.ndarray


class RingSlot(NamedTuple):
    """What a dataset returns in place of x when it read into a ring: `ring.array[slot, :n]`."""

    ring: str
    slot: int
    n: int

    def array(self) -> np.ndarray:
        return _RINGS[self.ring].take(self)

    def pin_memory(self, device: Any = None) -> Any:
        """Called by the DataLoader's pin-memory thread: copy the slot into page-locked memory.

        So the copy out of the ring happens in the background, and the slot is free again
        before the batch reaches the training loop.
        """
        import torch

        return torch.from_numpy(self.array()).pin_memory()


# The rings this process has mapped, by name, so a RingSlot can find its memory.
_RINGS: dict[str, BatchRing] = {}


class BatchRing:
    """Slots of shared memory that DataLoader workers read batches into, reused round-robin.

    torch's DataLoader moves every batch a worker returns through a fresh shared-memory segment:
    an allocation and a page fault per 4 KiB page each time, measured here at ~40 ms for a batch of
    256 x 2,000 x 21 float16 against ~5 ms to read it from the cache, which caps a worker at ~6k
    windows/s. With a ring, a worker reads the windows straight into a slot that every process
    has mapped since start-up and returns only `RingSlot(slot, n)`; the consumer takes
    `token.array()`, or, with `pin_memory=True`, gets it already copied into page-locked memory by
    the DataLoader's pin-memory thread (`RingSlot.pin_memory`), ready for an asynchronous copy to
    the GPU.

    Slot k of an epoch is reused by batch k + n_slots. A DataLoader has at most
    `num_workers * prefetch_factor` batches in flight, so with `n_slots` two above that
    (`slots_for`) a batch stays intact while the consumer takes the next one: use it (or copy
    it) before then. Pinned batches are copies and have no such limit.
    Pickles by name (spawn/forkserver workers attach; fork workers inherit the mapping).
    """

    def __init__(self, n_slots: int, shape: Sequence[int], dtype: Any = np.float16):
        from multiprocessing import shared_memory

        self.n_slots, self.shape, self.dtype = (
            int(n_slots),
            tuple(int(v) for v in shape),
            np.dtype(dtype),
        )
        self.nbytes = self.n_slots * int(np.prod(self.shape)) * self.dtype.itemsize
        self._shm = shared_memory.SharedMemory(create=True, size=max(self.nbytes, 1))
        self._owner = True
        self.name = self._shm.name
        self.array = np.ndarray((self.n_slots, *self.shape), self.dtype, buffer=self._shm.buf)
        _RINGS[self.name] = self

    @staticmethod
    def slots_for(num_workers: int, prefetch_factor: int) -> int:
        return num_workers * prefetch_factor + 2

    def __getstate__(self) -> dict[str, Any]:
        return {
            "name": self._shm.name,
            "n_slots": self.n_slots,
            "shape": self.shape,
            "dtype": self.dtype.str,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        import sys
        from multiprocessing import resource_tracker, shared_memory

        self.n_slots, self.shape, self.dtype = (
            state["n_slots"],
            tuple(state["shape"]),
            np.dtype(state["dtype"]),
        )
        self.nbytes = self.n_slots * int(np.prod(self.shape)) * self.dtype.itemsize
        if sys.version_info >= (3, 13):
            self._shm = shared_memory.SharedMemory(name=state["name"], track=False)
        else:
            self._shm = shared_memory.SharedMemory(name=state["name"])
            # Before 3.13 attaching registers the segment for removal when this process's
            # tracker shuts down, as if this process owned it.
            resource_tracker.unregister(self._shm._name, "shared_memory")  # type: ignore[attr-defined]
        self._owner = False
        self.name = self._shm.name
        self.array = np.ndarray((self.n_slots, *self.shape), self.dtype, buffer=self._shm.buf)
        _RINGS[self.name] = self

    def take(self, token: RingSlot) -> np.ndarray:
        return self.array[token.slot, : token.n]

    def close(self) -> None:
        """Unmap (once no view is left) and, in the creating process, remove the segment."""
        _RINGS.pop(self.name, None)
        self.array = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):  # a live view keeps the mapping; unlink anyway
            self._shm.close()
        if self._owner:
            self._owner = False
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()


class RingBatchSampler:
    """Wrap a batch sampler so each batch of indices comes with its ring slot (see BatchRing)."""

    def __init__(self, batch_sampler: Any, n_slots: int):
        self.batch_sampler, self.n_slots = batch_sampler, n_slots

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[SlotBatch]:
        for k, idx in enumerate(self.batch_sampler):
            yield SlotBatch(k % self.n_slots, np.asarray(idx, dtype=np.int64))


def collate_batch(batch: tuple[Any, ...]) -> tuple[Any, ...]:
    """DataLoader `collate_fn` for batches `__getitems__` already assembled.

    Only wraps the numpy arrays as tensors (no copy), so the DataLoader can move them through
    shared memory and `pin_memory`; the default collate would split them into samples again.
    """
    import torch

    return tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in batch)


def host_batch(batch: tuple[Any, ...]) -> tuple[Any, ...]:
    """A loader batch with x as a tensor: a ring slot is taken out of the ring (CPU runs; on
    CUDA the pin-memory thread has already copied it into page-locked memory)."""
    if isinstance(batch[0], RingSlot):
        import torch

        return (torch.from_numpy(batch[0].array()), *batch[1:])
    return batch
