"""The `index` stage: scan a raw tree, read headers only, write one index file.

Reads:  a tree of EDF/EDF+/BDF recordings (and FIF or other formats mne reads), plus TUSZ
        `.csv_bi`/`.csv` annotations beside them, on a local or network filesystem or under an
        object-storage URL (`s3://bucket/prefix`); the existing index, to reuse its rows.
Writes: one index file (an uncompressed `.npz` of columnar arrays, `brainpipe.indexfile`,
        docs/index-format.md), atomically; an unchanged index is left as it is.

    brainpipe index --raw /data/tuab --index /data/work/index.npz --config configs/tuab.yaml
    brainpipe index --raw s3://bucket/tuab --index /data/work/index.npz --config configs/tuab.yaml

`build_index` is the stage; `scan` picks the scan by the root: `index.local` walks a tree,
`index.remote` lists a bucket. Both make their rows with `index.rows` (one recording's row,
the annotation pairing, the assembly of reused and fresh rows), so neither imports the other.
Headers are read by our own parser (one open, two small reads; header blocks that repeat
across the corpus are converted once per scan, in a memo the scan owns). EDF+/BDF+ annotations
become events (labelled by corpus.event_labels), and in the generic layout annotation-only
files (Sleep-EDF hypnograms) are paired with their recordings by corpus.annotation_pairing.
Header repairs and doubts (a colon-separated or unparsable start date) are kept as warnings,
and so are a TUSZ recording's annotation problems (`annotations.py`'s kinds: a missing or
unparsable file, the recording then indexed unlabelled; labels outside TUH's lists; events
clipped at the recording's end). `force=True` (or BRAINPIPE_FORCE_REINDEX=1) re-reads all.
The file format is `brainpipe.indexfile`; the text printed for people is `brainpipe.reporting`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from brainpipe.config import Config
from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import is_url, remove_stale_tmp
from brainpipe.index.local import scan_local
from brainpipe.index.rows import ScanResult, raw_root_of
from brainpipe.indexfile import Index, is_replaceable

__all__ = ["ScanResult", "build_index", "raw_root_of", "scan"]


def scan(
    raw: str | os.PathLike,
    cfg: Config,
    previous: Index | None = None,
    force: bool = False,
    workers: int | None = None,
    progress: bool = True,
    on_read: Callable[[str], None] | None = None,
) -> ScanResult:
    """Index the tree under `raw` (a directory or an object-storage URL), reusing unchanged
    rows of `previous` (`force`: none)."""
    if force:
        previous = None
    if is_url(raw):
        from brainpipe.index.remote import scan_remote  # a local scan never loads object storage

        return scan_remote(str(raw), cfg, previous, workers, on_read)
    return scan_local(raw, cfg, previous, workers, progress, on_read)


def build_index(
    raw: str | os.PathLike,
    index_path: str | os.PathLike,
    cfg: Config,
    force: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> ScanResult:
    """The `index` stage: scan `raw` (incrementally against an existing index) and save.

    The result's `written` says whether the file was written: an index whose rows, hash and
    errors are unchanged is left as it is (a read-only output directory is then no error)."""
    index_path = Path(index_path)
    force = force or os.environ.get("BRAINPIPE_FORCE_REINDEX", "") not in ("", "0")
    if not is_replaceable(index_path):
        raise BrainpipeError(
            f"{index_path}: exists and is not a brainpipe index (not an .npz archive); "
            f"refusing to overwrite it: choose another --index path"
        )
    remove_stale_tmp(index_path)  # torn temp files of a killed run
    previous = None
    if index_path.exists() and not force:
        try:
            previous = Index.load(index_path)
        except BrainpipeError:
            previous = None  # corrupt, truncated or older format: rebuild from scratch
        if previous is not None and (
            previous.raw_root != (raw_root_of(raw) if is_url(raw) else str(Path(raw).resolve()))
            or previous.meta.get("corpus_config") != cfg.to_dict()["corpus"]
        ):
            previous = None  # another tree or layout: nothing to reuse
    result = scan(raw, cfg, previous=previous, force=force, workers=workers, progress=progress)
    if len(result.index) == 0:
        errs = result.index.errors
        detail = (
            f"; {len(errs)} unreadable, first: {errs[0]['path']}: {errs[0]['reason']}"
            if errs
            else ""
        )
        raise BrainpipeError(
            f"{raw}: no usable recordings found (looked for {', '.join(cfg.corpus.extensions)}){detail}"
        )
    unchanged = (
        previous is not None
        and result.n_read == 0
        and result.n_removed == 0
        and result.index.index_hash == previous.index_hash
        and result.index.errors == previous.errors
    )
    if unchanged:  # an unchanged tree leaves the file as it is: no rewrite, no fsync
        return result
    result.index.save(index_path)
    return dataclasses.replace(result, written=True)
