"""build-cache's worker processes: a pool the main process watches worker by worker.

`multiprocessing.Pool` loses the task of a worker the OOM killer SIGKILLs and waits for it
forever (issue 16); here each worker holds one recording at a time, its death is noticed at once
through its exit sentinel, attributed to that recording, retried once in a fresh worker and
skipped with the reason after a second death. Workers ignore Ctrl-C (the main process decides
what it means and stops them) and die with their parent (Linux's parent-death signal).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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
    import signal

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
    import ctypes
    import signal

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
        import multiprocessing as mp

        self.fn = fn
        self.ctx = mp.get_context()
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
        from collections import deque
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
        import signal

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
