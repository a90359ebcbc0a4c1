"""What runs in build-cache's worker processes: the job and the watched pool that runs it.

The job (`_worker`): one recording read a time slice at a time (`recording.open_recording`),
checked against the length the index planned, preprocessed in chunks (`process_recording`) and
pwritten by the worker itself into its reserved rows of the partial cache through the
`cachefile.RowTarget` the main process gave it, so a 60-minute 306-channel recording is never
held whole nor sent back; the result says only that it is WRITTEN (or why it was skipped). A
recording in object storage is fetched whole into a spool file first (`remote_sources` names
what each job fetches). `verify` runs `process_recording` again in the main process to compare.

The pool (`run_jobs`): `multiprocessing.Pool` loses the task of a worker the OOM killer
SIGKILLs and waits for it forever (issue 16); here each worker holds one recording at a time,
its death is noticed at once through its exit sentinel, attributed to that recording, retried
once in a fresh worker and skipped with the reason after a second death. Workers ignore Ctrl-C
(the main process decides what it means and stops them) and die with their parent (Linux's
parent-death signal).

The job and the pool share a file because both are the worker side of one contract: a job is a
picklable tuple (`build._jobs` makes it), a result is (row, payload, reason, raw bytes), and a
lost worker's result is made here in the same shape; keeping them together keeps what must
pickle and hold no main-process state in one place. `build.py` stays the main process's side.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.config import PreprocessConfig
from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import is_url
from brainpipe.objectstore import ObjectInfo, ObjectStore, RecordingObjects, remote_worker
from brainpipe.preprocess import output_length, preprocess_chunked
from brainpipe.readers import EDF_SUFFIXES, recording_files
from brainpipe.recording import open_recording


def process_recording(
    path: str | os.PathLike,
    cfg: PreprocessConfig,
    expected_length: int | None = None,
    reader_options: dict | None = None,
    bad: Collection[str] = (),
    *,
    dtype: np.typing.DTypeLike = np.float32,
    out: Any = None,
) -> tuple[Any, np.ndarray]:
    """Preprocessed signal of one recording, time-major (n_samples, n_channels) in `dtype`, and its mask.

    Read and filtered in time chunks (`preprocess.preprocess_chunked`), so the memory a worker
    needs is the result (in `dtype`: pass the cache's) plus a few hundred MB at any length;
    given `out` (`out[t0:t1] = rows` in time order, e.g. pwrites at the row's reserved offset
    in the cache), the result goes there and is not held at all.
    """
    read_raw, n, sfreq, plan = open_recording(path, cfg, reader_options, bad)

    def read(start: int, stop: int) -> np.ndarray:
        data = read_raw(start, stop)
        if data.size and not np.isfinite(data).all():
            raise BrainpipeError(f"{path}: non-finite samples (NaN/Inf) in the raw signal")
        return data

    n_out = output_length(n, sfreq, cfg)
    if expected_length is not None and n_out and n_out != expected_length:  # 0: too short
        raise BrainpipeError(
            f"{path}: changed since indexing ({n_out} samples after preprocessing, the index planned {expected_length}); re-run `brainpipe index`"
        )
    out = preprocess_chunked(read, n, sfreq, plan, cfg, dtype=dtype, out=out)
    return out, np.asarray(plan.mask, dtype=bool)


# A worker's result payload when it wrote the recording's rows into the cache itself.
WRITTEN = "written"


def _worker(job: tuple) -> tuple[int, Any, str, int]:
    """Process one recording; returns (row, payload, error reason, raw bytes read).

    job: (row, recording, preprocess config, length, dtype, how to read it, RowTarget or None).
    With a target the worker pwrites its rows into the partial cache as they come out of the
    chunked preprocessing (a 60-minute 306-channel recording is never held whole) and the
    payload is WRITTEN, or ("write-error", strerror) when the disk refuses; without one the
    payload is the rows' bytes. None: skipped, with the reason. The recording is a path, or an
    `objectstore.ObjectInfo`: fetched whole with one GET into a spool file (TMPDIR), read like
    a local file, removed; the bucket is never written."""
    i, path, pcfg, length, dtype, source, *rest = job
    if not isinstance(path, str):
        return remote_worker(_worker, job)
    target = rest[0] if rest else None
    cfg = PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in pcfg.items()})
    try:
        if target is None:
            x, _mask = process_recording(path, cfg, expected_length=length, dtype=dtype, **source)
            return i, x.tobytes(), "", os.path.getsize(path)
        try:
            with target.open() as sink:
                process_recording(
                    path, cfg, expected_length=length, dtype=dtype, out=sink, **source
                )
        except OSError as e:
            if e.filename is None:  # the cache's disk, not the recording
                return i, ("write-error", e.strerror or str(e)), "", 0
            raise
        return i, WRITTEN, "", os.path.getsize(path)
    except BrainpipeError as e:
        return i, None, _strip_path(str(e), path), 0
    except (OSError, ValueError, MemoryError) as e:
        return i, None, f"unreadable: {e}", 0


def _strip_path(msg: str, path: str) -> str:
    msg = msg.splitlines()[0] if msg else msg
    return msg[len(path) + 2 :] if msg.startswith(path + ": ") else msg


def locate_raw_root(root: str | os.PathLike) -> Path | str:
    """A local raw root as a Path; an object-storage URL (s3://...) as it is."""
    return str(root).rstrip("/") if is_url(root) else Path(root)


def remote_sources(root: str, paths: list, sizes: list, store: Any = None) -> list:
    """What a worker fetches for each recording in object storage: the object of an EDF/BDF,
    or, for mne's formats, the `RecordingObjects` of every file that makes it up (a .vhdr's
    .vmrk and .eeg, a CTF .ds), found in one listing made only when there are such rows."""
    paths = [str(p) for p in paths]
    listing: dict = {}
    if not all(p.lower().endswith(EDF_SUFFIXES) for p in paths):
        listing = {o.key: o for o in (store or ObjectStore(root)).list()}
    out: list = []
    for p, n in zip(paths, sizes, strict=True):
        if p.lower().endswith(EDF_SUFFIXES):
            out.append(ObjectInfo(p, f"{root}/{p}", int(n), None, None))
            continue
        keys = recording_files(p, listing)
        if not keys or any(k not in listing for k in keys):
            raise BrainpipeError(f"{root}/{p}: not in the bucket any more; re-run index")
        out.append(RecordingObjects(root, p, tuple(listing[k] for k in keys)))
    return out


# The watched pool: one recording in flight per worker, its death noticed at once.


def run_jobs(fn: Callable[[tuple], tuple], jobs: list, n_workers: int, on_lost=None):
    """Yield `fn(job)` for every job (a tuple: row, path, ...), computed in watched worker
    processes; one recording in flight per worker (bounded memory).

    `on_lost(path, pid, signal_name, retried)` hears of a worker that died with a recording in
    flight (the OOM killer's SIGKILL): that recording is retried once in a fresh worker, and
    skipped with the reason if its second worker dies too. The build goes on either way.
    """
    if n_workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(job)
        return
    yield from _WorkerPool(fn, min(n_workers, len(jobs)), on_lost).run(jobs)


def _worker_main(conn, fn: Callable[[tuple], tuple]) -> None:
    """A worker's loop: one job in, one result out, until told to stop or the parent is gone."""
    # The main process decides what Ctrl-C means and stops the workers itself; a worker that
    # died of it mid-send only printed BrokenPipe tracebacks. SIGTERM (from the main) just ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    try:
        while (job := conn.recv()) is not None:
            conn.send(fn(job))
    except (EOFError, OSError):  # the main process is gone: nobody wants the result
        pass


def _die_with_parent() -> None:
    """A worker of a main process killed with -9 dies too, rather than finishing its recording
    for nobody while holding the build's lock (inherited through fork). Linux only."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the line above
        os._exit(1)


@dataclass
class _Slot:
    proc: Any
    conn: Any
    job: tuple | None = None


class _WorkerPool:
    """Worker processes the main process watches one by one (pid, result pipe, exit sentinel).

    multiprocessing.Pool loses the task of a killed worker and waits for it forever; here each
    worker's recording is known, so a death is noticed at once (its sentinel) and attributed.
    """

    def __init__(self, fn: Callable[[tuple], tuple], n: int, on_lost=None):
        import multiprocessing  # only a build with several workers pays for its import

        self.fn = fn
        self.ctx = multiprocessing.get_context()
        self.n = n
        self.on_lost = on_lost
        self.slots: list[_Slot] = []

    def _spawn(self) -> _Slot:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(child, self.fn), daemon=True)
        proc.start()
        child.close()
        return _Slot(proc, parent)

    def run(self, jobs: list):
        from multiprocessing.connection import wait

        queue = deque(jobs)
        lost: Counter = Counter()  # row -> workers that died with it
        try:
            self.slots = [self._spawn() for _ in range(self.n)]
            for s in self.slots:
                self._feed(s, queue)
            while any(s.job is not None for s in self.slots):
                busy = [s for s in self.slots if s.job is not None]
                ready = wait([s.conn for s in busy] + [s.proc.sentinel for s in busy])
                for s in busy:
                    died = s.proc.sentinel in ready
                    if s.conn in ready:
                        try:
                            result = s.conn.recv()
                        except (EOFError, OSError):
                            died = True  # it died while sending
                        else:
                            s.job = None
                            self._feed(s, queue)  # before the write, so the worker keeps busy
                            yield result
                            continue
                    if died:
                        dead = self._replace(s)
                        if dead is not None:
                            yield from self._lost(dead, lost, queue)
                        self._feed(s, queue)
        finally:
            self._stop()

    def _feed(self, s: _Slot, queue) -> None:
        if queue and s.job is None:
            s.job = queue.popleft()
            # Died idle: the next wait() sees its sentinel and retries this job elsewhere.
            with contextlib.suppress(OSError):
                s.conn.send(s.job)

    def _replace(self, s: _Slot) -> tuple | None:
        """Put a fresh worker in a dead one's slot; returns (job, pid, exit code) of the dead one."""
        s.proc.join(1)
        dead = (s.job, s.proc.pid, s.proc.exitcode) if s.job is not None else None
        s.conn.close()
        fresh = self._spawn()
        s.proc, s.conn, s.job = fresh.proc, fresh.conn, None
        return dead

    def _lost(self, dead: tuple, lost: Counter, queue):
        job, pid, code = dead
        row, path = job[0], job[1]
        try:
            how = signal.Signals(-code).name if code is not None and code < 0 else f"exit {code}"
        except ValueError:
            how = f"signal {-code}"
        lost[row] += 1
        retried = lost[row] == 1
        if self.on_lost is not None:
            self.on_lost(path, pid, how, retried)
        if retried:
            queue.appendleft(job)
        else:
            reason = f"worker killed ({how}) twice while preprocessing it; out of memory?"
            yield row, None, reason, 0

    def _stop(self) -> None:
        """Stop every worker without waiting on one that will not answer (never hangs)."""
        for s in self.slots:
            with contextlib.suppress(OSError):
                if s.job is None:
                    s.conn.send(None)
        deadline = time.monotonic() + 2.0
        for s in self.slots:
            if s.job is not None:
                s.proc.terminate()  # busy with a recording nobody will take now
            s.proc.join(max(0.0, deadline - time.monotonic()))
            if s.proc.is_alive():
                s.proc.kill()
                s.proc.join(1)
            s.conn.close()
        self.slots = []
