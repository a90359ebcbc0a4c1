"""The shared-memory batch ring: how DataLoader workers hand whole batches to the training process.

Owns `BatchRing` (slots of shared memory every process maps once), the tokens that travel in
its place (`SlotBatch` from the sampler to a worker, `RingSlot` from the worker back), the
`RingBatchSampler` that numbers the slots, and `collate_batch`, the DataLoader `collate_fn` for
batches a dataset already assembled. Also what a kill -9 must not leave behind: ring names carry
the owner's pid so the next run removes a dead owner's ring (`remove_stale_rings`), and
`die_with_parent`, the `worker_init_fn` that ends workers with their trainer. Torch-free at import (torch is imported where a tensor is
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
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

# Where POSIX shared memory lives on Linux, and the names of our rings in it: the creating
# process's pid is in the name, so a later run can tell a ring whose owner was killed (-9 leaves
# no chance to unlink) from one in use.
SHM_DIR = Path("/dev/shm")
RING_PREFIX = "brainpipe-ring-"


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
        name = f"{RING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self._shm = shared_memory.SharedMemory(name=name, create=True, size=max(self.nbytes, 1))
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
        from multiprocessing import shared_memory

        self.n_slots, self.shape, self.dtype = (
            state["n_slots"],
            tuple(state["shape"]),
            np.dtype(state["dtype"]),
        )
        self.nbytes = self.n_slots * int(np.prod(self.shape)) * self.dtype.itemsize
        if sys.version_info >= (3, 13):
            self._shm = shared_memory.SharedMemory(name=state["name"], track=False)
        else:
            self._shm = _attach_untracked(state["name"])
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


def _attach_untracked(name: str) -> Any:
    """Map an existing segment without telling the resource tracker (Python < 3.13).

    Attaching with `SharedMemory(name)` registers the segment with the tracker, which workers
    share with the trainer (fork and spawn alike); unregistering it again, as this module once
    did, removed the trainer's own registration, so the trainer's unlink at exit printed a
    resource_tracker KeyError traceback and, after a kill -9, nobody removed the ring.
    """
    import _posixshmem  # what SharedMemory itself uses; the only untracked way before 3.13
    import mmap

    class _Attached:
        def __init__(self) -> None:
            fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
            try:
                self._mmap = mmap.mmap(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            self.buf: memoryview | None = memoryview(self._mmap)
            self.name = name

        def close(self) -> None:
            if self.buf is not None:
                self.buf.release()
                self.buf = None
            self._mmap.close()

        def unlink(self) -> None:  # never called: attached rings are not owners
            raise AssertionError("an attached ring does not own its segment")

    return _Attached()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed but not yet reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def remove_stale_rings(shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove rings whose creating process is gone (a trainer killed with -9); their names."""
    removed = []
    try:
        entries = list(shm_dir.glob(f"{RING_PREFIX}*"))
    except OSError:
        return removed
    for path in entries:
        pid = path.name[len(RING_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
    return removed


def die_with_parent(parent_pid: int, worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: the worker dies when the trainer that started it does.

    A worker killed with its trainer (kill -9, the OOM killer) otherwise lives on as an orphan
    holding ~200 MB and the resource tracker's pipe, which keeps the tracker (and so the ring in
    /dev/shm) alive too. Linux's parent-death signal covers fork and spawn, where the trainer is
    the parent. Under forkserver the parent is the fork server, which only exits once no worker
    holds its "alive" pipe, so a thread also watches the trainer's pid (twice a second). Use
    `functools.partial(die_with_parent, os.getpid())` (it pickles).
    """
    import signal
    import threading
    import time

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:
        while pid_alive(parent_pid):
            time.sleep(0.5)
        os._exit(1)

    if not pid_alive(parent_pid):
        os._exit(1)
    threading.Thread(target=watch, name="brainpipe-parent-watch", daemon=True).start()


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
