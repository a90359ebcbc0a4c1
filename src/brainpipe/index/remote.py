"""The index stage's scan of an object-storage prefix (`s3://bucket/prefix`).

Reads:  one listing of the prefix (sizes, ETags), the headers of new or changed recordings
        (range reads), and the objects it must read whole; the previous index, to reuse rows.
Writes: recordings fetched whole into a temp dir, removed once read; the index `scan_remote`
        returns is saved by `brainpipe.index.build_index`:

    brainpipe index --raw s3://bucket/tuab --index /data/work/index.npz --config configs/tuab.yaml

`index.scan` hands URL roots here. One listing (sizes, ETags), then concurrent range reads of
the first 16 KiB of every new or changed EDF/BDF (`ObjectStore.read_heads`; a second read only
for a longer header), parsed by `edf.read_header_bytes`. Annotation files (`.csv_bi`, ...) and
BIDS files (`dataset_description.json`, `participants.tsv`, each recording's `*_events.tsv`
and `*_channels.tsv`) and the annotation-only EDF+ files that pair with a recording
(`corpus.annotation_pairing`: Sleep-EDF hypnograms, found by their range-read headers) are
fetched whole into a temp dir and read by the normal parsers. The rows are made by
`index.rows`, as the local scan's are; `mtime_ns` is the LastModified.

Fetched whole, with every object that makes them up (`readers.recording_files`: a .vhdr's
.vmrk and .eeg, each part of a split FIF, the files of a CTF .ds), and read like local files:
recordings in mne's formats, whose headers are not at a fixed place; and EDF+/BDF+ with an
annotation signal (their events sit in the data records), except in the TUH and BIDS layouts
(events from the annotation files or events.tsv) unless `corpus.event_labels` is set.

Incremental: a row of the previous index is reused when its object's size and ETag (and its
annotation file's ETag) are unchanged; for a recording of several objects, or a BIDS one, the
ETag compared hashes those of all its objects and sidecars, so editing any of them re-reads
it. The ETags are kept in the index's meta (`etags`). The index records the URL root, never a
credential; bytes and requests sent are in the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brainpipe.bids import bids_recordings, sidecar
from brainpipe.config import Config
from brainpipe.edf import ANNOTATION_LABELS, header_length
from brainpipe.errors import BrainpipeError
from brainpipe.index.rows import (
    RecordingReader,
    ScanResult,
    annotation_file,
    annotation_suffixes,
    assemble,
    pair_annotation_files,
    raw_root_of,
    scan_meta,
)
from brainpipe.indexfile import Index, Recording
from brainpipe.objectstore import Head, ObjectInfo, ObjectStore, ObjectStoreError
from brainpipe.readers import EDF_SUFFIXES, is_directory_format, recording_files

DEFAULT_IN_FLIGHT = 64  # range reads at once: at 100 ms a request, ~640 headers a second
WHOLE_BATCH_BYTES = 2 << 30  # recordings fetched whole sit on local disk this much at a time


def scan_remote(
    raw: str,
    cfg: Config,
    previous: Index | None,
    workers: int | None,
    on_read: Callable[[str], None] | None,
) -> ScanResult:
    """`index.scan` of a URL root, reusing unchanged rows of `previous` (None: read every
    recording)."""
    t0 = time.perf_counter()
    c = cfg.corpus
    store = ObjectStore(raw.rstrip("/"), max_in_flight=workers or DEFAULT_IN_FLIGHT)
    objects = {o.key: o for o in store.list()}
    candidates = _candidates(objects, c)
    if c.layout == "bids":
        if "dataset_description.json" not in objects:
            raise BrainpipeError(
                f"{raw_root_of(raw)}: not a BIDS dataset root (no dataset_description.json); "
                "pass --raw with the prefix that holds it, or use corpus.layout=generic"
            )
        candidates = bids_recordings(candidates)
    heads: dict[str, Head] = {}  # headers read to pair files, not read again
    paired: dict[str, tuple[str, ...]] = {}
    if c.layout == "generic":  # Sleep-EDF: hypnograms pair with their recordings
        candidates, paired = pair_annotation_files(
            candidates,
            c.annotation_pairing,
            lambda rels: _annotation_only(store, [objects[r] for r in rels], heads),
        )
    files = {rel: recording_files(rel, objects) for rel in candidates}
    units = {rel: _unit(store, rel, files[rel], objects, c) for rel in candidates}
    lookup = {**objects, **units}
    pairs = _pairs(candidates, set(objects), c, paired)
    reused, todo, n_removed = _match(pairs, lookup, previous)
    with tempfile.TemporaryDirectory(prefix="brainpipe-index-") as tmp:
        results, errors = _read_todo(store, todo, files, objects, c, (tmp, on_read), heads)
    fresh = [_as_listed(r, units[r.path]) for r in results if isinstance(r, Recording)]
    errors += [r for r in results if not isinstance(r, Recording)]
    etags = {k: lookup[k].etag or "" for rel, anns in pairs for k in (rel, *anns)}
    index = assemble(fresh, errors, previous, reused, scan_meta(raw_root_of(raw), cfg, etags=etags))
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


def _read_todo(
    store: ObjectStore,
    todo: list[tuple[str, tuple[str, ...]]],
    files: dict[str, list[str]],
    objects: dict[str, ObjectInfo],
    c: Any,
    reading: tuple[str, Callable[[str], None] | None],
    known: dict[str, Head],
) -> tuple[list, list[tuple[str, str]]]:
    """The index rows (or (path, reason)) of the recordings to read, and fetch failures.

    `reading`: the temp dir and the per-file callback; `known`:
    headers already read (to pair files).

    EDF/BDF by their headers (range reads); every other format, and EDF+/BDF+ whose events sit
    in their annotation signal, fetched whole into `tmp` under their own names and read like
    local files. Annotation files and BIDS sidecars are fetched whole (they are small)."""
    tmp, on_read = reading
    errors: list[tuple[str, str]] = []
    edf = [r for r, _ in todo if r.lower().endswith(EDF_SUFFIXES)]
    unknown = [objects[r] for r in edf if r not in known]
    heads = [known[r] for r in edf if r in known]
    heads += store.read_heads(unknown, header_length=header_length)
    # TUH layouts take their events from the annotation files (real TUH EDFs are plain EDF;
    # edfio-written ones carry an empty annotation signal), BIDS from events.tsv: headers only
    # there. Elsewhere an EDF+ annotation signal holds the events, so the file comes whole.
    annotated = c.layout not in ("tuab", "tusz", "tuev", "bids") or (
        c.event_labels and c.layout != "tuev"
    )
    whole = {r for r, _ in todo} - set(edf)
    whole |= {
        h.obj.key for h in heads if annotated and not h.error and _has_annotation_signal(h.data)
    }
    side = [a for _, anns in todo for a in anns] + _bids_sidecars(c, [r for r, _ in todo], objects)
    failed = store.fetch_into([objects[k] for k in dict.fromkeys(side)], tmp)
    if c.layout == "bids" and "dataset_description.json" in failed:
        why = failed["dataset_description.json"]
        raise ObjectStoreError(f"{store.root}/dataset_description.json: {why}")
    reader = RecordingReader(
        tmp, c, on_read, heads={h.obj.key: h for h in heads if h.obj.key not in whole}
    )
    done: dict[str, Any] = {}
    # Whole recordings come in batches of bounded size, each removed once read: an index of
    # a MEG corpus never holds more than a batch of it on local disk.
    for batch in [[t for t in todo if t[0] not in whole], *_batches(todo, whole, files, objects)]:
        keys = [k for r, _ in batch if r in whole for k in files[r]]
        failed.update(store.fetch_into([objects[k] for k in keys], tmp))
        for rel, anns in batch:
            bad = next((k for k in files[rel] if k in failed), None)
            if ann := next((a for a in anns if a in failed), None):
                errors.append((rel, f"annotation file {ann}: {failed[ann]}"))
            elif bad is not None:
                where = "" if bad == rel else f"{bad}: "
                errors.append((rel, f"unreadable: {where}{failed[bad]}"))
        dropped = {r for r, _ in errors}
        # Headers are in memory or on local disk now: parsing is CPU only, so no threads.
        ok = [t for t in batch if t[0] not in dropped]
        done.update(zip((r for r, _ in ok), reader.many(ok), strict=True))
        for k in keys:
            Path(tmp, k).unlink(missing_ok=True)
    return [done[r] for r, _ in todo if r in done], errors


def _batches(
    todo: list[tuple[str, tuple[str, ...]]],
    whole: set[str],
    files: dict[str, list[str]],
    objects: dict[str, ObjectInfo],
) -> list[list[tuple[str, tuple[str, ...]]]]:
    """The recordings fetched whole, in batches of up to WHOLE_BATCH_BYTES (one at least)."""
    out: list[list] = [[]]
    size = 0
    for t in (t for t in todo if t[0] in whole):
        n = sum(objects[k].size for k in files[t[0]])
        if out[-1] and size + n > WHOLE_BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(t)
        size += n
    return [b for b in out if b]


def _candidates(objects: dict[str, ObjectInfo], c: Any) -> list[str]:
    """Keys with a corpus extension, and the directory recordings (a CTF `x.ds/`), sorted."""
    exts = tuple(s.lower() for s in c.extensions)
    out = set()
    for key in objects:
        parts = key.split("/")
        if any(p.startswith(".") for p in parts):
            continue
        for k in range(len(parts) - 1):  # a directory recording is one candidate, not walked
            if is_directory_format(parts[k]):
                if parts[k].lower().endswith(exts):
                    out.add("/".join(parts[: k + 1]))
                break
        else:
            if key.lower().endswith(exts):
                out.add(key)
    return sorted(out)


def _bids_sidecars(c: Any, rels: list[str], objects: dict[str, ObjectInfo]) -> list[str]:
    """The BIDS files the layout reads for `rels`: the dataset's description and participants,
    each recording's events.tsv and channels.tsv (those that exist)."""
    if c.layout != "bids":
        return []
    want = ["dataset_description.json", "participants.tsv"]
    want += [sidecar(r, s) for r in rels for s in ("events", "channels")]
    return [k for k in dict.fromkeys(want) if k in objects]


def _unit(
    store: ObjectStore, rel: str, files: list[str], objects: dict[str, ObjectInfo], c: Any
) -> ObjectInfo:
    """What the re-index compares for one recording: its object as listed, or, for a recording
    of several objects (or a BIDS one, whose sidecars say what it holds), one entry whose ETag
    hashes all of theirs, so an edit to any of them re-reads it."""
    watched = list(files)
    if c.layout == "bids":
        watched += [k for k in (sidecar(rel, "events"), sidecar(rel, "channels")) if k in objects]
    if watched == [rel]:
        return objects[rel]
    infos = [objects[k] for k in watched]
    etags = [o.etag for o in infos]
    digest = None
    if all(etags):
        digest = hashlib.sha1("\n".join(f"{o.key} {o.etag}" for o in infos).encode()).hexdigest()
    size = objects[rel].size if rel in objects else sum(objects[k].size for k in files)
    times = [o.mtime_ns for o in infos if o.mtime_ns is not None]
    return ObjectInfo(rel, f"{store.root}/{rel}", size, digest, max(times) if times else None)


def _as_listed(rec: Recording, unit: ObjectInfo) -> Recording:
    """A row read from a temp copy, with the size and time the listing gives the recording."""
    return dataclasses.replace(rec, size=unit.size, mtime_ns=unit.mtime_ns or rec.mtime_ns)


def _labels(head: bytes) -> set[str]:
    """An EDF/BDF header's signal labels; none where it does not parse (the header parse
    reports the problem with its own line)."""
    try:
        ns = int(head[252:256].decode("ascii").strip())
        return {head[256 + 16 * i : 272 + 16 * i].decode("latin-1").strip() for i in range(ns)}
    except ValueError:
        return set()


def _has_annotation_signal(head: bytes) -> bool:
    """Whether an EDF/BDF header's signal labels name an annotation signal (EDF+/BDF+)."""
    return not ANNOTATION_LABELS.isdisjoint(_labels(head))


def _pairs(
    candidates: list[str], every: set[str], corpus: Any, paired: dict[str, tuple[str, ...]]
) -> list[tuple[str, tuple[str, ...]]]:
    """Each recording with its annotation files: TUSZ's .csv_bi/.csv, TUEV's .rec, or paired
    EDF+ files."""
    if corpus.layout not in ("tusz", "tuev"):
        return [(rel, paired.get(rel, ())) for rel in candidates]
    out = []
    suffixes = annotation_suffixes(corpus)
    for rel in candidates:
        csv = annotation_file(rel, every, suffixes)
        out.append((rel, (csv,) if csv else ()))
    return out


def _annotation_only(
    store: ObjectStore, objs: list[ObjectInfo], heads: dict[str, Head]
) -> set[str]:
    """Of `objs`, the EDF+/BDF+ files that hold only annotation signals, by their range-read
    headers (kept in `heads` for the scan's own reading)."""
    edf = [o for o in objs if o.key.lower().endswith(EDF_SUFFIXES)]
    got = store.read_heads(edf, header_length=header_length)
    heads.update((h.obj.key, h) for h in got)
    return {h.obj.key for h in got if not h.error and _labels(h.data) <= ANNOTATION_LABELS}


def _match(
    pairs: list[tuple[str, tuple[str, ...]]],
    objects: dict[str, ObjectInfo],
    previous: Index | None,
) -> tuple[list[int], list[tuple[str, tuple[str, ...]]], int]:
    """Rows of `previous` whose objects kept their size and ETags, the pairs to read, and how
    many of its recordings are gone."""
    if previous is None or not len(previous):
        return [], list(pairs), 0
    rows = dict(zip(previous.path.tolist(), range(len(previous)), strict=True))
    etags = previous.meta.get("etags", {})
    reused, todo = [], []
    for rel, anns in pairs:
        j = rows.get(rel)
        o = objects[rel]
        same = (
            j is not None
            and o.etag is not None
            and int(previous.size[j]) == o.size
            and etags.get(rel) == o.etag
            and all(etags.get(a) == objects[a].etag for a in anns)
            and (bool(anns) or previous.ann_mtime_ns[j] == 0)
        )
        if same:
            reused.append(j)
        else:
            todo.append((rel, anns))
    return reused, todo, len(set(rows) - {r for r, _ in pairs})
