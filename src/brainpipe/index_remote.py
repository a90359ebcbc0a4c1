"""The `index` stage over object storage (`brainpipe index --raw s3://bucket/prefix`).

Part of the index stage (`index.scan` hands URL roots here), kept in its own module so the
local scan stays as it is. One listing (sizes, ETags), then concurrent range reads of the
first 16 KiB of every new or changed recording (`ObjectStore.read_heads`; a second read only
for a longer header), parsed by `edf.read_header_bytes`. Annotation files (`.csv_bi`, ...) are
fetched whole (they are small) into a temp dir and read by the normal parser. The rows are the
ones the local scan makes; `mtime_ns` is the object's LastModified.

EDF+/BDF+ recordings with an annotation signal are fetched whole (their events sit in the data
records), except in the TUH layouts (events from the annotation files) unless
`corpus.event_labels` is set.

Incremental: a row of the previous index is reused when its object's size and ETag (and its
annotation file's ETag) are unchanged; the ETags are kept in the index's meta (`etags`). The
index records the URL root, never a credential; bytes and requests sent are in the result.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe import __version__
from brainpipe.config import Config
from brainpipe.edf import header_length
from brainpipe.index import EDF_SUFFIXES, ScanResult, _annotation_file, raw_root_of
from brainpipe.indexfile import Index, Recording
from brainpipe.objectstore import ObjectInfo, ObjectStore, ObjectStoreError

DEFAULT_IN_FLIGHT = 64  # range reads at once: at 100 ms a request, ~640 headers a second


def scan_remote(
    raw: str,
    cfg: Config,
    reader_class: type,
    previous: Index | None = None,
    force: bool = False,
    workers: int | None = None,
    on_read: Callable[[str], None] | None = None,
) -> ScanResult:
    """`index.scan` of a URL root; `reader_class` is the local scan's per-file reader."""
    t0 = time.perf_counter()
    c = cfg.corpus
    root = raw_root_of(raw)
    store = ObjectStore(raw.rstrip("/"), max_in_flight=workers or DEFAULT_IN_FLIGHT)
    objects = {o.key: o for o in store.list()}
    exts = tuple(s.lower() for s in c.extensions)
    candidates = [
        k for k in objects if k.lower().endswith(exts) and not k.rsplit("/", 1)[-1].startswith(".")
    ]
    errors: list[tuple[str, str]] = []
    pairs = _pairs(candidates, set(objects), c)
    reused, todo, n_removed = _match(pairs, objects, None if force else previous)
    for rel, _ in [t for t in todo if not t[0].lower().endswith(EDF_SUFFIXES)]:
        errors.append((rel, "only EDF/BDF are indexed from object storage; copy it locally"))
    todo = [t for t in todo if t[0].lower().endswith(EDF_SUFFIXES)]
    heads = store.read_heads([objects[r] for r, _ in todo], header_length=header_length)
    with tempfile.TemporaryDirectory(prefix="brainpipe-index-") as tmp:
        failed = _fetch_whole(store, [objects[a] for _, a in todo if a], Path(tmp))
        errors += [(r, f"annotation file {a}: {failed[a]}") for r, a in todo if a in failed]
        todo = [(r, a) for r, a in todo if a not in failed]
        # EDF+/BDF+ with annotation signals: their events sit in the data records, so those
        # objects are fetched whole and read like local files; every other one by its header.
        # TUH layouts take their events from the annotation files (real TUH EDFs are plain EDF;
        # edfio-written ones carry an empty annotation signal): headers only there.
        whole = (
            [h.obj for h in heads if not h.error and _has_annotation_signal(h.data)]
            if c.layout not in ("tuab", "tusz") or c.event_labels
            else []
        )
        failed = _fetch_whole(store, whole, Path(tmp))
        errors += [(o.key, f"unreadable: {failed[o.key]}") for o in whole if o.key in failed]
        todo = [(r, a) for r, a in todo if r not in failed]
        fetched = {o.key for o in whole}
        reader = reader_class(tmp, c, on_read)
        reader.heads = {h.obj.key: h for h in heads if h.obj.key not in fetched}
        # Headers are in memory now: parsing is CPU only, so no threads.
        results = reader.many([(r, (a,) if a else ()) for r, a in todo])
    fresh = [r for r in results if isinstance(r, Recording)]
    errors += [r for r in results if not isinstance(r, Recording)]
    meta = {
        "brainpipe_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "raw_root": root,
        "layout": c.layout,
        "corpus_config": cfg.to_dict()["corpus"],
        "etags": {k: objects[k].etag or "" for p in pairs for k in p if k},
    }
    if reused:
        kept = previous.take(np.array(sorted(reused), dtype=np.int64))
        index = Index.concat([kept, Index.from_recordings(fresh, [], meta)], errors, meta)
    else:
        index = Index.from_recordings(fresh, errors, meta)
    sent = store.transferred
    return ScanResult(
        index,
        len(results),
        len(reused),
        n_removed,
        time.perf_counter() - t0,
        transferred=sent.bytes,
        requests=sent.requests,
    )


def _has_annotation_signal(head: bytes) -> bool:
    """Whether an EDF/BDF header's signal labels name an annotation signal (EDF+/BDF+)."""
    try:
        ns = int(head[252:256].decode("ascii").strip())
    except ValueError:
        return False  # the header parse reports the problem with its own line
    labels = head[256 : 256 + 16 * ns]
    return b"EDF Annotations" in labels or b"BDF Annotations" in labels


def _pairs(candidates: list[str], every: set[str], corpus: Any) -> list[tuple[str, str | None]]:
    tusz = corpus.layout == "tusz"
    return [
        (rel, _annotation_file(rel, every, corpus.annotation_suffixes) if tusz else None)
        for rel in candidates
    ]


def _match(
    pairs: list[tuple[str, str | None]], objects: dict[str, ObjectInfo], previous: Index | None
) -> tuple[list[int], list[tuple[str, str | None]], int]:
    """Rows of `previous` whose objects kept their size and ETags, the pairs to read, and how
    many of its recordings are gone."""
    if previous is None or not len(previous):
        return [], list(pairs), 0
    rows = dict(zip(previous.path.tolist(), range(len(previous)), strict=True))
    etags = previous.meta.get("etags", {})
    reused, todo = [], []
    for rel, ann in pairs:
        j = rows.get(rel)
        o = objects[rel]
        same = (
            j is not None
            and o.etag is not None
            and int(previous.size[j]) == o.size
            and etags.get(rel) == o.etag
            and (etags.get(ann) == objects[ann].etag if ann else previous.ann_mtime_ns[j] == 0)
        )
        if same:
            reused.append(j)
        else:
            todo.append((rel, ann))
    return reused, todo, len(set(rows) - {r for r, _ in pairs})


def _fetch_whole(store: ObjectStore, objs: list[ObjectInfo], into: Path) -> dict[str, str]:
    """Each object fetched whole to `into`/key with its LastModified as mtime;
    returns key -> reason for those that failed."""

    def one(o: ObjectInfo) -> tuple[str, str | None]:
        try:
            got = store.fetch(o)
        except ObjectStoreError as e:
            return o.key, str(e).split(": ", 1)[-1]
        p = into / o.key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(got.data)
        if o.mtime_ns is not None:
            os.utime(p, ns=(o.mtime_ns, o.mtime_ns))
        return o.key, None

    if not objs:
        return {}
    with ThreadPoolExecutor(min(store.max_in_flight, len(objs))) as pool:
        return {k: why for k, why in pool.map(one, objs) if why}
