"""What the local and the object-storage scan share: one recording's row, and rows made an index.

Reads:  one recording (EDF/EDF+/BDF headers by our own parser, or header bytes already
        range-read from object storage; other formats through mne), its annotation files (TUSZ
        `.csv_bi`/`.csv`, paired annotation-only EDF+ files) and, in the BIDS layout, its
        sidecars.
Writes: nothing; `index.local` and `index.remote` hand what this module gives to
        `brainpipe.indexfile`, and `brainpipe.index.build_index` saves it.

`RecordingReader` turns one recording into an index row (`indexfile.Recording`) or an
error (path, reason in one line); `annotation_file` and `pair_annotation_files` find each
recording's annotation files; `assemble` makes the new index from the rows reused and the rows
read, `scan_meta` what it records of the scan, and `raw_root_of` what it records of a URL root.
Both scans import these; neither imports the other.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe import __version__
from brainpipe.annotations import (
    ANNOTATIONS_MISSING,
    ANNOTATIONS_UNPARSABLE,
    EVENTS_CLIPPED,
    REC_SUFFIX,
    UNKNOWN_LABEL,
    Event,
    merge_channel_events,
    read_rec,
)
from brainpipe.annotations import read_annotations as read_tusz_annotations
from brainpipe.bids import BidsLayout
from brainpipe.channels import channel_types
from brainpipe.config import Config
from brainpipe.corpus import Facts, event_labeler, layout_parser
from brainpipe.edf import (
    ANNOTATION_LABELS,
    EdfHeader,
    read_annotations,
    read_header,
    read_header_bytes,
)
from brainpipe.errors import BrainpipeError
from brainpipe.indexfile import Index, Recording
from brainpipe.readers import EDF_SUFFIXES, is_directory_format, open_raw


@dataclass(frozen=True)
class ScanResult:
    """What a scan did; `written` is False when `build_index` left an unchanged index as it was."""

    index: Index
    n_read: int
    n_reused: int
    n_removed: int
    seconds: float
    written: bool = False
    transferred: int = 0  # bytes received from object storage (0 for a local tree)
    requests: int = 0


def annotation_suffixes(corpus: Any) -> tuple[str, ...]:
    """The annotation files beside a TUH recording: TUEV's `.rec`, TUSZ's configured ones."""
    return (REC_SUFFIX,) if corpus.layout == "tuev" else tuple(corpus.annotation_suffixes)


def annotation_file(rel: str, every: set[str], suffixes: tuple[str, ...]) -> str | None:
    stem = rel.rsplit(".", 1)[0]
    for s in suffixes:
        if stem + s in every:
            return stem + s
    return None


def pair_annotation_files(
    candidates: list[str], pairing: str | None, annotation_only: Callable[[list[str]], set[str]]
) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """The candidates without the annotation-only EDF+ files that pair with a recording, and
    recording -> its annotation files (Sleep-EDF: SC4001EC-Hypnogram.edf for SC4001E0-PSG.edf).

    Files pair when corpus.annotation_pairing gives them the same `key`; a group pairs when it
    holds exactly one recording. `annotation_only(paths)` says which of the grouped files hold
    only annotations; only their headers are read (a Sleep-EDF tree: a few hundred). An
    annotation-only file left unpaired stays a candidate and is reported."""
    if pairing is None:
        return candidates, {}
    rx = re.compile(pairing)
    groups: dict[str, list[str]] = {}
    for rel in candidates:
        m = rx.search(rel)
        if m is not None and m["key"] is not None:
            groups.setdefault(m["key"], []).append(rel)
    paired: dict[str, tuple[str, ...]] = {}
    grouped = [g for g in groups.values() if len(g) >= 2]
    only_ones = annotation_only([rel for g in grouped for rel in g]) if grouped else set()
    for members in grouped:
        only = [rel for rel in members if rel in only_ones]
        recordings = [rel for rel in members if rel not in only]
        if only and len(recordings) == 1:
            paired[recordings[0]] = tuple(only)
    if not paired:
        return candidates, {}
    taken = {a for anns in paired.values() for a in anns}
    return [rel for rel in candidates if rel not in taken], paired


# What a reader gives for one file: size, mtime_ns, format, n_samples, sfreq, duration_s, start,
# channel labels, channel rates, channel types.
_Read = tuple[int, int, str, int, float, float, str, tuple, tuple, tuple]


def _read_edf(abspath: str, memo: dict, head: Any = None) -> tuple[_Read, EdfHeader]:
    """`head`: an `objectstore.Head` holding the header (object storage), else the file is read."""
    if head is None:
        h = read_header(abspath, memo)
    elif head.error:
        raise BrainpipeError(f"{abspath}: {head.error}")
    else:
        o = head.obj
        h = read_header_bytes(head.data, abspath, o.size, o.mtime_ns or 0, memo)
    labels, spr = h.labels, h.samples_per_record
    if not ANNOTATION_LABELS.isdisjoint(labels):  # EDF+: leave out the annotation signals
        picks = h.signal_indices
        labels, spr = tuple(labels[i] for i in picks), tuple(spr[i] for i in picks)
    if not labels:
        raise BrainpipeError(
            f"{abspath}: no signals: file holds only annotations (no recording pairs with it "
            f"under corpus.annotation_pairing)"
        )
    main, rates = _rates(spr, h.record_duration)
    return (
        h.file_size,
        h.mtime_ns,
        h.format,
        h.n_records * main,
        main / h.record_duration,
        h.duration,
        h.start.isoformat() if h.start is not None else "",
        labels,
        rates,
        channel_types(labels),
    ), h


@functools.lru_cache(maxsize=4096)
def _rates(samples_per_record: tuple[int, ...], record_duration: float) -> tuple[int, tuple]:
    """The main samples-per-record count and every channel's rate; few distinct per corpus.

    A pure function: its bounded cache is right for any scan and needs no clearing."""
    counts = samples_per_record
    # A recording's rate is its most common channel rate (TUH's EEG channels share one; odd
    # channels such as PHOTIC may differ). Other channels are kept with their own rates.
    main = counts[0] if min(counts) == max(counts) else Counter(counts).most_common(1)[0][0]
    return main, tuple(c / record_duration for c in counts)


def _read_mne(abspath: str, reader_options: dict | None = None) -> _Read:
    st = os.stat(abspath)
    if st.st_size == 0 and not is_directory_format(abspath):
        raise BrainpipeError(f"{abspath}: empty file: 0 bytes")
    raw = open_raw(abspath, reader_options)
    info = raw.info
    meas = info.get("meas_date")
    return (
        st.st_size,
        st.st_mtime_ns,
        Path(abspath).suffix.lstrip(".").upper(),
        int(raw.n_times),
        float(info["sfreq"]),
        float(raw.n_times / info["sfreq"]),
        meas.replace(tzinfo=None).isoformat() if meas else "",
        tuple(info["ch_names"]),
        (float(info["sfreq"]),) * len(info["ch_names"]),
        tuple(raw.get_channel_types()),
    )


class RecordingReader:
    """Reads one recording's header and facts (a row of the index, or (path, reason)).

    One per scan; its header memo is shared by the scan's threads and dropped with the scan.
    """

    def __init__(
        self,
        root: str,
        corpus: Any,
        on_read: Callable[[str], None] | None = None,
        heads: dict[str, Any] | None = None,
    ):
        """`heads`: header bytes already range-read from object storage (`objectstore.Head`
        by path), for the recordings under the temp dir `root` that were not fetched whole."""
        self.root, self.corpus, self.on_read = root, corpus, on_read
        self.facts_of = (
            BidsLayout(root, corpus)
            if corpus.layout == "bids"
            else layout_parser(corpus.layout, corpus.filename_regex, corpus.manifest)
        )
        self.label_of = event_labeler(dict(corpus.event_labels))
        self.memo: dict = {}
        self.subject_split = {
            str(s): split for split, subs in corpus.subject_splits.items() for s in subs
        }
        self.heads = heads

    def many(self, items: list) -> list:
        return [self(item) for item in items]

    def __call__(self, item: tuple[str, tuple[str, ...]]) -> Recording | tuple[str, str]:
        """item: the recording's path relative to the root, and its annotation files' (TUSZ
        .csv_bi/.csv, or paired annotation-only EDF+ files)."""
        rel, anns = item
        root_s, c, facts_of, on_read = self.root, self.corpus, self.facts_of, self.on_read
        ab = f"{root_s}/{rel}"
        try:
            header = None
            if rel.lower().endswith(EDF_SUFFIXES):
                head = self.heads.get(rel) if self.heads is not None else None
                got, header = _read_edf(ab, self.memo, head)
            else:
                got = _read_mne(ab, c.reader_options)
            facts = facts_of(rel)
            if not facts.split and facts.subject in self.subject_split:  # corpus.subject_splits
                facts = dataclasses.replace(facts, split=self.subject_split[facts.subject])
            events: tuple[Event, ...] = ()
            ann_mtime = 0
            if c.layout == "bids":  # events and bad channels from the recording's sidecars
                events, got = facts_of.sidecars(rel, got)
            # BIDS: events.tsv is the record of events (as mne-bids' read_raw_bids has it); the
            # EDF+ annotations mne-bids also writes into the file would count them twice.
            annotations = (
                self._annotations(header)
                if header is not None
                and c.layout not in ("bids", "tuev")  # TUEV: the .rec is the record of events
                and not ANNOTATION_LABELS.isdisjoint(header.labels)
                else []
            )
            notes = list(header.notes) if header is not None else []
            labelled = c.layout not in ("tusz", "tuev") or any(
                not a.lower().endswith(EDF_SUFFIXES) for a in anns
            )
            if not labelled:  # an error in the summary, never a silently background recording
                notes.append(
                    f"{ANNOTATIONS_MISSING}: no {' or '.join(annotation_suffixes(c))} beside the "
                    f"recording; indexed unlabelled, a seizure cache skips it"
                )
            for ann in anns:
                ann_mtime = max(ann_mtime, os.stat(f"{root_s}/{ann}").st_mtime_ns)
                if ann.lower().endswith(EDF_SUFFIXES):
                    annotations += self._annotations(read_header(f"{root_s}/{ann}", self.memo))
                    continue
                if c.layout == "tuev":  # class names are the descriptions event_labels maps
                    annotations += self._tuev_events(ann, got[5], notes)
                    continue
                parsed = self._tusz_events(ann, got[5], notes)
                labelled = parsed is not None
                events = parsed or ()
            if c.layout == "tusz" and not facts.label and labelled:
                facts = Facts(
                    **{
                        **{k: getattr(facts, k) for k in Facts.__slots__},
                        "label": "seiz" if events else "bckg",
                    }
                )
            if on_read is not None:
                on_read(rel)
            if annotations:
                annotations.sort()
            return Recording(rel, *got, facts, events, ann_mtime, tuple(annotations), tuple(notes))
        except BrainpipeError as e:
            return (rel, _one_line(e, ab, root_s))
        except OSError as e:
            return (rel, f"unreadable: {e.strerror or e}")

    def _tusz_events(self, ann: str, duration_s: float, notes: list[str]) -> tuple | None:
        """A TUSZ annotation file's seizure events clipped to the recording, its problems
        appended to `notes` (unknown labels, clipped events); None when it does not parse (the
        recording is then indexed unlabelled, with the reason)."""
        path = f"{self.root}/{ann}"
        explicit = tuple(x.lower() for x in self.corpus.seizure_labels) or None
        try:
            got = read_tusz_annotations(path, duration_s, explicit)
        except BrainpipeError as e:
            reason = _one_line(e, path, self.root)
            notes.append(f"{ANNOTATIONS_UNPARSABLE}: {ann}: {reason}; indexed unlabelled")
            return None
        for lab in got.unknown_labels:
            if explicit is None:
                how = "counted as seizure (list the seizure labels in corpus.seizure_labels)"
            elif lab in explicit:
                continue  # the config named it: known
            else:
                how = "counted as background (not in corpus.seizure_labels)"
            notes.append(f"{UNKNOWN_LABEL}: {lab!r} {how}")
        if got.n_clipped:
            notes.append(
                f"{EVENTS_CLIPPED}: {got.n_clipped} past the recording's end "
                f"({duration_s:g} s) in {ann}"
            )
        evs = list(got.events)
        if ann.endswith(".csv"):  # per TCP channel: the term-level union
            evs = merge_channel_events(evs)
        return tuple(evs)

    def _tuev_events(
        self, ann: str, duration_s: float, notes: list[str]
    ) -> list[tuple[float, float, str, str]]:
        """A TUEV `.rec` file's rows as (onset_s, offset_s, label, class name), one per row and
        channel; a file that does not parse leaves the recording without events, with the
        reason in `notes`."""
        path = f"{self.root}/{ann}"
        try:
            got = read_rec(path, duration_s)
        except BrainpipeError as e:
            reason = _one_line(e, path, self.root)
            notes.append(f"{ANNOTATIONS_UNPARSABLE}: {ann}: {reason}; indexed without events")
            return []
        if got.n_clipped:
            notes.append(
                f"{EVENTS_CLIPPED}: {got.n_clipped} past the recording's end "
                f"({duration_s:g} s) in {ann}"
            )
        label = self.label_of
        return [(e.onset_s, e.offset_s, label(e.label), e.label) for e in got.events]

    def _annotations(self, header: EdfHeader) -> list[tuple[float, float, str, str]]:
        """EDF+/BDF+ annotations as (onset_s, offset_s, label, description)."""
        if ANNOTATION_LABELS.isdisjoint(header.labels):
            return []
        label = self.label_of
        return [
            (a.onset_s, a.onset_s + a.duration_s, label(a.description), a.description)
            for a in read_annotations(header)
        ]


def _one_line(e: BaseException, abspath: str, root: str) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    # Our messages start with the absolute path; the error list is keyed by the relative one.
    for prefix in (abspath + ": ", abspath):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
            break
    return msg.replace(root + os.sep, "")


def scan_meta(raw_root: str, cfg: Config, **more: Any) -> dict[str, Any]:
    """What an index records of the scan that made it (local or object storage)."""
    return {
        "brainpipe_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "raw_root": raw_root,
        "layout": cfg.corpus.layout,
        "corpus_config": cfg.to_dict()["corpus"],
        **more,
    }


def assemble(
    fresh: list[Recording],
    errors: list[tuple[str, str]],
    previous: Index | None,
    reused: list[int],
    meta: dict[str, Any],
) -> Index:
    """The new index: the reused rows of `previous`, then the recordings read now."""
    if not reused:
        return Index.from_recordings(fresh, errors, meta)
    kept = previous.take(np.array(sorted(reused), dtype=np.int64))
    return Index.concat([kept, Index.from_recordings(fresh, [], meta)], errors, meta)


def raw_root_of(url: str) -> str:
    """What the index records of a URL root: no credentials (`s3://key:secret@bucket` forms)."""
    scheme, rest = str(url).split("://", 1)
    host, _, path = rest.partition("/")
    return f"{scheme}://{host.rsplit('@', 1)[-1]}/{path}".rstrip("/")
