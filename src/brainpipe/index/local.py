"""The index stage's scan of a local tree (or a mounted network filesystem).

Reads:  a tree of EDF/EDF+/BDF recordings (and FIF or other formats mne reads), plus TUSZ
        `.csv_bi`/`.csv` annotations beside them; the previous index, to reuse its rows.
Writes: nothing; `brainpipe.index.build_index` saves the index `scan_local` returns:

    brainpipe index --raw /data/tuab --index /data/work/index.npz --config configs/tuab.yaml

Owns the walk of the tree, the incremental match against a previous index, and how the files
to read are read: serially where opens are fast, on a thread pool sized for network
filesystems where each open costs milliseconds of latency and no CPU. A re-run stats every
indexed file and re-reads only new or changed ones (size or mtime). Bad files go to the error
list, each with its reason in one line; so do symlink loops and names that are not UTF-8
(`fsutil.walk_tree`). What one file's row takes is `index.rows`, shared with the
object-storage scan, `index.remote`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brainpipe.bids import bids_recordings
from brainpipe.config import Config
from brainpipe.edf import ANNOTATION_LABELS, read_header
from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import walk_tree
from brainpipe.index.rows import (
    RecordingReader,
    ScanResult,
    annotation_file,
    annotation_suffixes,
    assemble,
    pair_annotation_files,
    scan_meta,
)
from brainpipe.indexfile import Index, Recording
from brainpipe.readers import EDF_SUFFIXES, is_directory_format

# Files read serially before scan_local() decides whether threads would help, and the mean time a
# file must have spent waiting (wall minus CPU) for it to choose them.
_PROBE_FILES = 24
_IO_BOUND_WAIT_S = 300e-6


def _annotation_only(abspath: str, memo: dict) -> bool:
    if not abspath.lower().endswith(EDF_SUFFIXES):
        return False
    try:
        return ANNOTATION_LABELS.issuperset(read_header(abspath, memo).labels)
    except BrainpipeError:
        return False  # the read of the file itself reports it


def scan_local(
    raw: str | os.PathLike,
    cfg: Config,
    previous: Index | None,
    workers: int | None,
    progress: bool,
    on_read: Callable[[str], None] | None,
) -> ScanResult:
    """Index the local tree under `raw`, reusing unchanged rows of `previous` (None: read
    every file)."""
    t0 = time.perf_counter()
    root = Path(raw)
    if not root.is_dir():
        raise BrainpipeError(f"{root}: raw directory not found (pass --raw with the corpus root)")
    root = root.resolve()
    c = cfg.corpus
    errors: list[tuple[str, str]] = []
    candidates, every = walk_tree(
        root, tuple(s.lower() for s in c.extensions), errors, is_directory_format
    )
    if c.layout == "bids":
        candidates = bids_recordings(candidates)
    reader = RecordingReader(str(root), c, on_read)
    paired: dict[str, tuple[str, ...]] = {}
    if c.layout == "generic":
        candidates, paired = pair_annotation_files(
            candidates,
            c.annotation_pairing,
            lambda rels: {r for r in rels if _annotation_only(f"{root}/{r}", reader.memo)},
        )
    reused, todo, n_removed = _match_previous(root, candidates, every, c, previous, errors, paired)
    results = _read_all(reader, todo, workers or cfg.index.workers, progress)
    fresh = [r for r in results if isinstance(r, Recording)]
    errors += [r for r in results if not isinstance(r, Recording)]
    index = assemble(fresh, errors, previous, reused, scan_meta(str(root), cfg))
    return ScanResult(index, len(results), len(reused), n_removed, time.perf_counter() - t0)


def _match_previous(
    root: Path,
    candidates: list[str],
    every: set[str],
    corpus: Any,
    previous: Index | None,
    errors: list[tuple[str, str]],
    paired: dict[str, tuple[str, ...]],
) -> tuple[list[int], list[tuple[str, tuple[str, ...]]], int]:
    """Rows of `previous` whose files are unchanged, the (path, annotation files) pairs to
    read, and how many of its recordings are gone from the tree.

    Unchanged files are matched as arrays: a re-run builds no per-recording Python objects
    for them."""
    prev_rows: dict[str, int] = {}
    if previous is not None and len(previous):
        prev_rows = dict(zip(previous.path.tolist(), range(len(previous)), strict=True))
        p_size, p_mtime, p_ann = previous.size, previous.mtime_ns, previous.ann_mtime_ns
    reused: list[int] = []
    todo: list[tuple[str, tuple[str, ...]]] = []
    root_s = str(root)
    tuh = corpus.layout in ("tusz", "tuev")
    suffixes = annotation_suffixes(corpus)
    for rel in candidates:
        if tuh:
            csv = annotation_file(rel, every, suffixes)
            ann: tuple[str, ...] = (csv,) if csv is not None else ()
        else:
            ann = paired.get(rel, ())
        j = prev_rows.get(rel)
        if j is None:  # new (or a cold scan): the read itself stats the file
            todo.append((rel, ann))
            continue
        try:
            st = os.stat(f"{root_s}/{rel}")
        except OSError as e:
            errors.append((rel, f"unreadable: {e.strerror}"))
            continue
        ann_mtime = 0
        for a in ann:
            try:
                ann_mtime = max(ann_mtime, os.stat(f"{root_s}/{a}").st_mtime_ns)
            except OSError:
                ann_mtime = -1
                break
        if p_size[j] == st.st_size and p_mtime[j] == st.st_mtime_ns and p_ann[j] == ann_mtime:
            reused.append(j)
        else:
            todo.append((rel, ann))
    n_removed = len(set(prev_rows) - set(candidates)) if prev_rows else 0
    return reused, todo, n_removed


def _read_all(
    reader: RecordingReader, todo: list[tuple[str, tuple[str, ...]]], n_workers: int, progress: bool
) -> list[Recording | tuple[str, str]]:
    """Every file of `todo` read, serially or on threads, in order."""
    if not todo:
        return []
    bar = None
    if (
        progress and len(todo) > 200 and sys.stderr.isatty()
    ):  # tqdm(disable=None) draws nothing else
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="file", desc="index", disable=None)
    tick = bar.update if bar is not None else (lambda n: None)

    # Threads pay off only where opens wait (network mounts: milliseconds each). On a local
    # disk or the page cache a file is ~40 us of CPU and 32 threads only fight over the GIL
    # (0.46 s against 0.19 s serial for 2,717 files, measured side by side), so the first
    # files are read serially and the rest go to threads only if those files mostly waited.
    probe = todo if n_workers == 1 else todo[:_PROBE_FILES]
    wall, cpu = time.perf_counter(), time.thread_time()
    results = reader.many(probe)
    waited = (time.perf_counter() - wall) - (time.thread_time() - cpu)
    tick(len(probe))
    rest = todo[len(probe) :]
    if rest and waited / len(probe) < _IO_BOUND_WAIT_S:
        for k in range(0, len(rest), 500):
            part = reader.many(rest[k : k + 500])
            results += part
            tick(len(part))
    elif rest:
        results += _read_threaded(reader, rest, n_workers, tick)
    if bar is not None:
        bar.close()
    return results


def _read_threaded(
    reader: RecordingReader, rest: list, n_workers: int, tick: Callable[[int], Any]
) -> list[Recording | tuple[str, str]]:
    # Chunks, not one future per file: the executor's per-task locking cost more than a
    # header parse. Enough chunks remain to keep every thread busy on a slow mount.
    from concurrent.futures import ThreadPoolExecutor

    n_chunks = min(len(rest), n_workers * 4)
    chunks = [rest[k::n_chunks] for k in range(n_chunks)]
    results: list[Recording | tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=min(n_workers, n_chunks)) as pool:
        for part in pool.map(reader.many, chunks):
            results.extend(part)
            tick(len(part))
    return results
