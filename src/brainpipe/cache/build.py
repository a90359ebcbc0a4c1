"""The `build-cache` stage's main process: plan, schedule the workers, journal their rows, finish.

Reads:  an index (`brainpipe index`) and the raw recordings it names.
Writes: one HDF5 cache (docs/cache-format.md) through `cachefile.CacheWriter`.

    brainpipe build-cache --index data/index.npz --cache data/cache.h5 --config configs/tuab.yaml

`build_cache` loads the index (one shard of it with `--shard I/N`), makes the plan
(`plan.make_plan`, refused before any signal is read when it cannot work), returns at once for a
finished cache of the same config and index, else opens the one `CacheWriter` (creating or
resuming `<cache>.partial`) and gives each pending row to a worker (`workers.run_jobs`) as a job
carrying `writer.target(row)`. Workers pwrite their rows themselves; the main process only
journals each result (`writer.written(row)`, `writer.skip(row, reason)`; a full disk seen by a
worker stops the build through `writer.write_failed`), then `writer.finish` (label check,
rename). One recording is in flight per worker, so memory is bounded by a few recordings.

What a long build meets (issue 16; replayed by tests/test_cache_faults.py, scripts/chaos.sh):
- A worker killed with a recording in flight (the OOM killer): `workers.run_jobs` sees its exit at
  once, prints one line (pid, signal, recording), retries the recording once in a fresh worker
  and skips it with the reason if that one dies too. The build goes on.
- Ctrl-C (to the whole process group) and SIGTERM (`docker stop`): workers ignore SIGINT and
  die with their parent; the main process stops them without waiting on one and raises
  `Interrupted` ("interrupted; re-run to resume ..."); the partial file is kept.
- Two builds on one path, kill -9 or a full disk while finalizing: the writer's lock and
  crash-safe finalize (cachefile.CacheWriter).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainpipe.cache.plan import Plan, check_planned_labels, make_plan, upsampling_warning
from brainpipe.cache.workers import WRITTEN, _worker, locate_raw_root, remote_sources, run_jobs
from brainpipe.cachefile import STATUS_DONE, CacheReader, CacheWriter, Layout
from brainpipe.cacheset import shard_of
from brainpipe.config import Config
from brainpipe.corpus import TASK_LABELS, event_label_names
from brainpipe.errors import BrainpipeError, reason_kind
from brainpipe.fsutil import check_writable_dir
from brainpipe.indexfile import Index
from brainpipe.reporting import lost_worker_line, window_counts_text
from brainpipe.splits import overlap_warning


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a build; the message says what is kept."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (`docker stop`, Slurm's preemption) stops a build the way Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _report_lost_worker(path: str, pid: int, how: str, retried: bool) -> None:
    print(lost_worker_line(path, pid, how, retried), file=sys.stderr, flush=True)


@dataclass
class BuildResult:
    """What a build did (text: `reporting.build_summary_text`)."""

    cache_path: Path
    n_written: int
    n_skipped: int
    skipped: list[tuple[str, str]]
    hours: float
    n_windows: int
    bytes: int
    seconds: float
    raw_bytes: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    resumed: int = 0
    up_to_date: bool = False
    warnings: list[str] = field(default_factory=list)  # e.g. subjects in several splits


def build_cache(
    index_path: str | os.PathLike,
    cache_path: str | os.PathLike,
    cfg: Config,
    workers: int | None = None,
    force: bool = False,
    raw_root: str | os.PathLike | None = None,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> BuildResult:
    """The `build-cache` stage; resumable, see the module docstring.

    `shard=(i, n)` builds only the recordings of the subjects `cacheset.shard_of` puts in
    shard i of n (their union over i is the whole cache; a cache set joins them).
    Ctrl-C and SIGTERM raise `Interrupted` (a KeyboardInterrupt saying what is kept); a
    BrainpipeError raised while the partial file exists says that it is kept for a resume.
    """
    t0 = time.perf_counter()
    cache_path = Path(cache_path)
    with _sigterm_as_interrupt():
        index = Index.load(index_path)
        if shard is not None:
            index = _shard_index(index, *shard)
        root = locate_raw_root(raw_root or index.raw_root)
        if not isinstance(root, str) and not root.is_dir():
            raise BrainpipeError(
                f"{root}: raw directory of the index not found; pass --raw with where the corpus is now"
            )
        check_writable_dir(cache_path)
        try:
            plan = make_plan(index, cfg)
        except BrainpipeError as e:
            raise BrainpipeError(f"{index_path}: {e}") from e
        if len(plan.index_rows) == 0:
            reasons = Counter(reason_kind(r) for _, r in plan.skipped).most_common(3)
            first = f"; first: {plan.skipped[0][0]}: {plan.skipped[0][1]}" if plan.skipped else ""
            raise BrainpipeError(
                f"{index_path}: no recording can be cached ({', '.join(f'{c} {r}' for r, c in reasons) or 'empty index'}){first}"
            )
        if shard is None:  # one shard may hold one class only; `cache-set` checks the whole set
            check_planned_labels(plan, cfg.cache.task)
        if cache_path.exists() and not force:
            return _up_to_date(cache_path, plan.layout)  # or refuses to mix
        result = _build(
            plan, index_path, cache_path, root, cfg, workers, force, progress, t0, shard
        )
    r = plan.layout.recordings
    result.warnings.extend(upsampling_warning(r["sfreq_orig"], plan.layout.sfreq))
    return result


def _build(
    plan, index_path, cache_path, root, cfg, workers, force, progress, t0, shard=None
) -> BuildResult:
    """Write the planned rows through the one CacheWriter, then finish it."""
    with CacheWriter(cache_path, plan.layout, overwrite=force) as writer:
        try:
            jobs = _jobs(plan, writer, root, cfg)
            n_workers = max(1, workers or cfg.cache.workers)
            results = run_jobs(_worker, jobs, n_workers, on_lost=_report_lost_worker)
            raw_bytes = _write_results(writer, results, progress, t0)
            if writer.n_written == 0:
                # Resuming would only replay the same failures: start the next run clean.
                writer.discard()
                path, reason = writer.skipped[0]
                raise BrainpipeError(
                    f"{index_path}: every recording failed; first: {path}: {reason} "
                    f"(nothing was written: the partial cache {writer.partial} was removed)"
                )
            written = writer.finish(
                plan.window,
                plan.stride,
                cfg.window.label_overlap,
                skipped=plan.skipped,
                compression=cfg.cache.compression,
                anchor=cfg.window.anchor,
                # One shard may hold one class only; `cache-set` checks the classes of the set.
                check=None if shard else lambda counts: _check_labels(counts, cfg, writer.partial),
            )
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted; re-run to resume (the partial cache {writer.partial} is kept)"
            ) from None
        except BrainpipeError as e:
            if str(writer.partial) in str(e):
                raise
            raise BrainpipeError(
                f"{e} (the partial cache {writer.partial} is kept: re-run to resume, or pass --force to start over)"
            ) from e
    done = writer.status == STATUS_DONE
    skipped = plan.skipped + writer.skipped
    return BuildResult(
        cache_path,
        int(done.sum()),
        len(skipped),
        skipped,
        float(plan.layout.recordings["length"][done].sum() / plan.layout.sfreq / 3600),
        written.n_windows,
        written.bytes,
        time.perf_counter() - t0,
        raw_bytes,
        written.counts,
        writer.resumed,
        warnings=_overlap(plan.layout.recordings, done),
    )


def _overlap(recordings: dict, done: np.ndarray) -> list[str]:
    line = overlap_warning(recordings["split"][done], recordings["subject"][done])
    return [line] if line else []


def _shard_index(index, i: int, n: int):
    """The index rows of shard i of n (whole subjects); the index's errors go to shard 0 only."""
    a = index.arrays
    # A recording without a subject is its own subject.
    keys = np.where(
        a["subject"] == "", np.char.add("recording:", a["path"].astype(str)), a["subject"]
    )
    rows = np.flatnonzero(shard_of(keys, n) == i)
    if len(rows) == 0:
        k = len(np.unique(keys))
        raise BrainpipeError(
            f"--shard {i}/{n}: no subject falls in this shard, the index has {k} subjects; use N <= {k}"
        )
    part = index.take(rows)
    if i == 0:
        part.arrays["error_path"], part.arrays["error_reason"] = a["error_path"], a["error_reason"]
    part.meta["shard"] = f"{i}/{n}"
    return part


def _up_to_date(cache_path: Path, layout: Layout) -> BuildResult:
    """An existing finished cache built from the same config and index; any other is refused."""
    try:
        with CacheReader(cache_path) as old:
            same = (
                old.attrs.get("config_hash") == layout.attrs["config_hash"]
                and old.attrs.get("index_hash") == layout.attrs["index_hash"]
                and old.attrs.get("shard", "") == layout.attrs.get("shard", "")
            )
            summary = old.summary()
    except BrainpipeError:
        same, summary = False, None
    if not same or summary is None:
        raise BrainpipeError(
            f"{cache_path}: exists and was built from a different config or index; pass --force to rebuild it"
        )
    return BuildResult(
        cache_path,
        summary["n_recordings"],
        len(summary["skipped"]),
        [],
        summary["hours"],
        summary["n_windows"],
        summary["bytes"],
        0.0,
        0,
        up_to_date=True,
    )


def _jobs(plan: Plan, writer: CacheWriter, root: Path | str, cfg: Config) -> list[tuple]:
    """One picklable worker job per row: (row, raw file or ObjectInfo, preprocess config, length,
    dtype, how to read the file: reader options and bad channels, where its rows go)."""
    r = plan.layout.recordings
    pcfg = cfg.to_dict()["preprocess"]
    opts = dict(cfg.corpus.reader_options)
    if isinstance(root, str):  # object storage: the worker fetches the objects it names
        src = remote_sources(root, r["path"], plan.raw_bytes)
    else:
        src = [str(root / str(p)) for p in r["path"]]
    return [
        (
            row,
            src[row],
            pcfg,
            int(r["length"][row]),
            cfg.cache.dtype,
            {"reader_options": opts, "bad": plan.bad_channels.get(row, ())},
            writer.target(row),  # the worker writes its rows into the partial cache itself
        )  # fmt: skip
        for row in writer.pending_rows()
    ]


def _write_results(writer: CacheWriter, results, progress: bool, t0: float) -> int:
    """Hand each worker result to the writer; returns the raw bytes read for those written."""
    raw_bytes = 0
    bar = None
    # tqdm(disable=None) draws nothing where stderr is no terminal; its import alone (version
    # lookup through importlib.metadata) costs ~0.1 s of a scripted build's start-up
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        n = len(writer.status)
        initial = n - len(writer.pending_rows())
        bar = tqdm(total=n, initial=initial, unit="rec", desc="build-cache", disable=None)
    try:
        for row, payload, reason, nbytes in results:
            if payload is None:
                writer.skip(row, reason)
                continue
            if payload == WRITTEN:
                writer.written(row)
            elif isinstance(payload, tuple):  # ("write-error", strerror): a full disk
                writer.write_failed(payload[1])
            else:
                writer.write(row, payload)
            raw_bytes += nbytes
            if bar is not None:
                bar.update(1)
                el = time.perf_counter() - t0
                bar.set_postfix_str(f"{raw_bytes / 1e6 / el:.1f} MB/s" if el > 0 else "")
    finally:
        if bar is not None:
            bar.close()
    return raw_bytes


def _check_labels(counts: dict[str, dict[str, int]], cfg: Config, partial: Path) -> None:
    """Fail when the task's classes came out empty (e.g. misparsed TUSZ annotations)."""
    need = TASK_LABELS.get(cfg.cache.task)
    if cfg.cache.task == "events":
        need = event_label_names(cfg.corpus.event_labels)
    if need is None:
        return
    total = Counter()
    for c in counts.values():
        total.update(c)
    empty = [k for k in need if total.get(k, 0) == 0]
    if empty:
        table = window_counts_text(counts)
        raise BrainpipeError(
            f"cache.task={cfg.cache.task} needs {' and '.join(need)} windows but {', '.join(empty)} came out empty "
            f"(windows per split: {table}); check the labels/annotations in the index. The finished file is left at {partial}"
        )
