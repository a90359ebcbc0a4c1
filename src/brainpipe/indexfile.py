"""The index file format: one `.npz` of columnar arrays, one row per recording.

Owns the format's writing and reading: the columns and their dtypes, `Index` (load in
milliseconds, save atomically, build from `Recording` rows, `take`/`concat` for incremental
re-runs, channel and event accessors, `summary()` data), the content hash a cache records, and
INDEX_FORMAT_VERSION. Scanning a raw tree lives in the `index` stage (`brainpipe.index`);
rendering summaries for people in `brainpipe.reporting`. See docs/index-format.md.

Loading checks what a damaged, foreign or crafted file could do (truncated archives, a cache
passed as an index, pickled objects, paths outside the raw root) and answers with one line.
Long because the format's columns, writer, reader and those checks are one
contract and read best in one place.

    idx = Index.load("data/index.npz")
    idx.path[0], idx.sfreq[0], idx.channels(0)[:3], idx.events(0), idx.event_table(0)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.annotations import Event
from brainpipe.corpus import Facts
from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output

INDEX_FORMAT_VERSION = 1

# Columns stored per recording, with their numpy dtypes ("U" = unicode, sized on save).
_STR_COLUMNS = (
    "path",
    "format",
    "start",
    "split",
    "label",
    "subject",
    "session",
    "token",
    "montage",
)
_NUM_COLUMNS = {
    "size": np.int64,
    "mtime_ns": np.int64,
    "ann_mtime_ns": np.int64,
    "n_samples": np.int64,
    "sfreq": np.float64,
    "duration_s": np.float64,
    "chanset": np.int32,
}


@dataclass
class Recording:
    """One row of the index while it is being built (never on a dataset start-up path)."""

    path: str
    size: int
    mtime_ns: int
    format: str
    n_samples: int
    sfreq: float
    duration_s: float
    start: str
    channels: tuple[str, ...]
    channel_sfreqs: tuple[float, ...]
    channel_types: tuple[str, ...]
    facts: Facts = field(default_factory=Facts)
    events: tuple[Event, ...] = ()
    ann_mtime_ns: int = 0
    # EDF+/BDF+ annotations: (onset_s, offset_s, label, description); label "" when
    # corpus.event_labels maps no label onto the description.
    annotations: tuple[tuple[float, float, str, str], ...] = ()
    # Header repairs and warnings, one line each (stored in meta["warnings"]).
    notes: tuple[str, ...] = ()


# Per-event columns beside `event_recording`. `event_description` came with EDF+ annotations:
# an index written before it has none, and loads with "" for every event.
_EVENT_COLUMNS = ("event_onset_s", "event_offset_s", "event_label", "event_description")

# Recording attributes stored as columns, and the corpus facts stored beside them.
_ROW_FIELDS = tuple(c for c in (*_STR_COLUMNS, *_NUM_COLUMNS) if c in Recording.__annotations__)
_FACT_FIELDS = tuple(c for c in _STR_COLUMNS if c in Facts.__slots__)


class Index:
    """A loaded index: columnar numpy arrays, one row per recording, loaded in milliseconds.

    `index.path[i]`, `index.sfreq[i]`, ... ; `index.channels(i)` gives the labels of recording i.
    """

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
        if "event_description" not in arrays and "event_recording" in arrays:
            arrays["event_description"] = np.zeros(len(arrays["event_recording"]), "U1")
        self.arrays = arrays
        self.meta = meta

    # -- columns --------------------------------------------------------------------------
    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def __len__(self) -> int:
        return len(self.arrays["path"])

    @property
    def raw_root(self) -> str:
        return self.meta.get("raw_root", "")

    @property
    def index_hash(self) -> str:
        return self.meta["index_hash"]

    @property
    def warnings(self) -> list[dict[str, str]]:
        """Recordings indexed with a repair or a warning (e.g. an unparsable start date)."""
        return [{"path": p, "reason": r} for p, r in self.meta.get("warnings", [])]

    @property
    def event_labels(self) -> dict[str, str]:
        """corpus.event_labels of the scan: annotation description (or regex) -> label."""
        return dict(self.meta.get("corpus_config", {}).get("event_labels") or {})

    @property
    def errors(self) -> list[dict[str, str]]:
        return [
            {"path": p, "reason": r}
            for p, r in zip(self.arrays["error_path"], self.arrays["error_reason"], strict=True)
        ]

    def _chanset_slice(self, i: int) -> slice:
        s = int(self.arrays["chanset"][i])
        off = self.arrays["chanset_offsets"]
        return slice(int(off[s]), int(off[s + 1]))

    def channels(self, i: int) -> tuple[str, ...]:
        return tuple(self.arrays["chanset_labels"][self._chanset_slice(i)].tolist())

    def channel_sfreqs(self, i: int) -> np.ndarray:
        return self.arrays["chanset_sfreqs"][self._chanset_slice(i)]

    def channel_types(self, i: int) -> tuple[str, ...]:
        return tuple(self.arrays["chanset_types"][self._chanset_slice(i)].tolist())

    def events(self, i: int) -> list[Event]:
        rec = self.arrays["event_recording"]
        lo, hi = np.searchsorted(rec, [i, i + 1])
        a = self.arrays
        return [
            Event(
                float(a["event_onset_s"][k]),
                float(a["event_offset_s"][k]),
                str(a["event_label"][k]),
            )
            for k in range(lo, hi)
        ]

    def event_table(self, i: int) -> dict[str, np.ndarray]:
        """Recording i's events as columns: onset_s, offset_s, duration_s, label, description.

        TUSZ annotation-file events have description ""; EDF+/BDF+ annotations keep their text
        in description and the label corpus.event_labels gave it ("" when none matched)."""
        lo, hi = np.searchsorted(self.arrays["event_recording"], [i, i + 1])
        a = self.arrays
        on, off = a["event_onset_s"][lo:hi], a["event_offset_s"][lo:hi]
        return {
            "onset_s": on,
            "offset_s": off,
            "duration_s": off - on,
            "label": a["event_label"][lo:hi],
            "description": a["event_description"][lo:hi],
        }

    def abspath(self, i: int, raw_root: str | os.PathLike | None = None) -> Path:
        return Path(raw_root or self.raw_root) / str(self.arrays["path"][i])

    # -- file I/O -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> Index:
        """Read an index; a missing, foreign, corrupt or unsafe file is one BrainpipeError line
        naming the file and the fix."""
        p = Path(path)
        arrays = _read_arrays(p)
        try:
            meta = json.loads(str(arrays.pop("meta")))
        except ValueError as e:
            raise BrainpipeError(f"{p}: {_CORRUPT} (meta: {e}); {_rebuild(p)}") from e
        version = meta.get("format_version")
        if version != INDEX_FORMAT_VERSION:
            raise BrainpipeError(
                f"{p}: index format version {version}, this brainpipe reads version {INDEX_FORMAT_VERSION}; re-run `brainpipe index --force`"
            )
        missing = sorted(_REQUIRED - set(arrays) - {"event_description"})
        if missing:
            raise BrainpipeError(f"{p}: {_CORRUPT} (missing {', '.join(missing)}); {_rebuild(p)}")
        _check_contained(p, arrays["path"])
        return cls(arrays, meta)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(self.meta)), **self.arrays)
            f.flush()

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_recordings(
        cls, recordings: list[Recording], errors: list[tuple[str, str]], meta: dict[str, Any]
    ) -> Index:
        recordings = sorted(recordings, key=attrgetter("path"))
        arrays = _row_arrays(recordings)
        arrays.update(_chanset_arrays(recordings))
        arrays.update(_event_arrays(recordings))
        arrays.update(_error_arrays(errors))
        for k, v in arrays.items():  # empty string columns must still be unicode, not float
            if v.size == 0 and k in _TEXT_ARRAYS:
                arrays[k] = np.zeros(0, dtype="U1")
        warnings = [[r.path, n] for r in recordings for n in r.notes]
        return cls(arrays, _final_meta({**meta, "warnings": warnings}, arrays))

    def take(self, rows: np.ndarray) -> Index:
        """The index restricted to `rows` (sorted), with its channel sets and events compacted."""
        a = self.arrays
        rows = np.asarray(rows, dtype=np.int64)
        out = {k: a[k][rows] for k in (*_STR_COLUMNS, *_NUM_COLUMNS)}
        used, inverse = np.unique(a["chanset"][rows], return_inverse=True)
        out["chanset"] = inverse.astype(np.int32).reshape(-1)
        off = a["chanset_offsets"]
        sizes = off[used + 1] - off[used]
        out["chanset_offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        # the used sets' label positions, in order: one arange shifted per set (thousands of
        # sets: a Python loop of aranges was a tenth of a re-index)
        starts = out["chanset_offsets"][:-1]
        flat = np.arange(int(sizes.sum()), dtype=np.int64) + np.repeat(off[used] - starts, sizes)
        for k in ("chanset_labels", "chanset_sfreqs", "chanset_types"):
            out[k] = a[k][flat]
        pos = np.full(len(self), -1, np.int64)
        pos[rows] = np.arange(len(rows))
        ev = pos[a["event_recording"]] if len(a["event_recording"]) else np.zeros(0, np.int64)
        # `rows` may reorder recordings (the incremental merge sorts by path): the events must
        # follow, sorted by their new row and in file order within it, or `events(i)`'s
        # binary search finds another recording's events.
        keep = np.flatnonzero(ev >= 0)
        keep = keep[np.argsort(ev[keep], kind="stable")]
        out["event_recording"] = ev[keep]
        for k in _EVENT_COLUMNS:
            out[k] = a[k][keep]
        out["error_path"], out["error_reason"] = np.zeros(0, "U1"), np.zeros(0, "U1")
        meta = dict(self.meta)
        if meta.get("warnings"):
            kept = set(out["path"].tolist())
            meta["warnings"] = [w for w in meta["warnings"] if w[0] in kept]
        return Index(out, meta)

    @classmethod
    def concat(
        cls, parts: list[Index], errors: list[tuple[str, str]], meta: dict[str, Any]
    ) -> Index:
        """Rows of several indexes as one, sorted by path (the incremental merge)."""
        out: dict[str, np.ndarray] = {}
        for k in (
            *_STR_COLUMNS,
            *_NUM_COLUMNS,
            "chanset_labels",
            "chanset_sfreqs",
            "chanset_types",
            *_EVENT_COLUMNS,
        ):
            out[k] = np.concatenate([p.arrays[k] for p in parts])
        n_sets = np.cumsum([0] + [len(p.arrays["chanset_offsets"]) - 1 for p in parts])
        n_rows = np.cumsum([0] + [len(p) for p in parts])
        n_flat = np.cumsum([0] + [p.arrays["chanset_offsets"][-1] for p in parts])
        out["chanset"] = np.concatenate(
            [p.arrays["chanset"] + n_sets[j] for j, p in enumerate(parts)]
        ).astype(np.int32)
        out["chanset_offsets"] = np.concatenate(
            [[0]] + [p.arrays["chanset_offsets"][1:] + n_flat[j] for j, p in enumerate(parts)]
        ).astype(np.int64)
        out["event_recording"] = np.concatenate(
            [p.arrays["event_recording"] + n_rows[j] for j, p in enumerate(parts)]
        ).astype(np.int64)
        order = np.argsort(out["path"], kind="stable")
        merged = Index(out, {})
        result = merged.take(order) if len(order) else merged
        result.arrays.update(_error_arrays(errors))
        kept = set(result.arrays["path"].tolist())
        warnings = sorted(w for p in parts for w in p.meta.get("warnings", []) if w[0] in kept)
        result.meta = _final_meta({**meta, "warnings": warnings}, result.arrays)
        return result

    # -- summaries ------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The JSON `brainpipe inspect INDEX --json` prints."""
        a = self.arrays
        recs = [
            {
                "path": str(a["path"][i]),
                "subject": str(a["subject"][i]),
                "session": str(a["session"][i]),
                "split": str(a["split"][i]),
                "label": str(a["label"][i]),
                "sfreq": float(a["sfreq"][i]),
                "n_samples": int(a["n_samples"][i]),
                "duration_s": float(a["duration_s"][i]),
                "channels": list(self.channels(i)),
                "montage": str(a["montage"][i]),
                "n_events": int(np.count_nonzero(a["event_recording"] == i)),
            }
            for i in range(len(self))
        ]
        return {
            "kind": "index",
            "format_version": self.meta["format_version"],
            "index_hash": self.index_hash,
            "raw_root": self.raw_root,
            "layout": self.meta.get("layout", ""),
            "n_recordings": len(self),
            "n_subjects": len(set(a["subject"].tolist())),
            "hours": float(a["duration_s"].sum() / 3600.0),
            "n_events": int(len(a["event_recording"])),
            "recordings": recs,
            "errors": self.errors,
            "warnings": self.warnings,
        }


_CORRUPT = "index file is corrupt or truncated"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_REQUIRED = frozenset(
    (
        *_STR_COLUMNS,
        *_NUM_COLUMNS,
        "chanset_offsets",
        "chanset_labels",
        "chanset_sfreqs",
        "chanset_types",
        "event_recording",
        *_EVENT_COLUMNS,
        "error_path",
        "error_reason",
    )
)


def _rebuild(p: Path) -> str:
    return f"re-run `brainpipe index --raw DIR --index {p}` to rebuild it"


def is_replaceable(path: str | os.PathLike) -> bool:
    """Whether `brainpipe index` may overwrite `path`: absent, empty, or a zip archive (an index
    of ours, perhaps truncated); never a cache or any other file a user passed by mistake."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:  # absent, or unreachable: the write itself reports why
        return True
    # A zip archive's magic, or the start of one (an index cut short a few bytes in).
    return any(zip_magic.startswith(magic) for zip_magic in (b"PK\x03\x04", b"PK\x05\x06"))


def _read_arrays(p: Path) -> dict[str, np.ndarray]:
    try:
        with open(p, "rb") as f:
            magic = f.read(8)
    except FileNotFoundError as e:
        raise BrainpipeError(
            f"{p}: index not found; create it with `brainpipe index --raw DIR --index {p}`"
        ) from e
    except OSError as e:
        raise BrainpipeError(f"{p}: cannot read the index ({e.strerror or e})") from e
    if magic == _HDF5_MAGIC:
        raise BrainpipeError(
            f"{p}: not a brainpipe index: an HDF5 file (a cache?); pass the .npz that "
            f"`brainpipe index` wrote"
        )
    if not magic.startswith(b"PK"):
        if magic == b"":
            raise BrainpipeError(f"{p}: {_CORRUPT} (0 bytes); {_rebuild(p)}")
        raise BrainpipeError(
            f"{p}: not a brainpipe index (not an .npz archive); pass the .npz that "
            f"`brainpipe index` wrote"
        )
    # Reading every entry decompresses and checks each member's CRC; a truncated archive fails
    # here (BadZipFile, EOFError, zlib or struct errors) rather than at first use.
    try:
        with np.load(p, allow_pickle=False) as z:
            names = z.files
            if "meta" not in names:
                raise BrainpipeError(
                    f"{p}: not a brainpipe index (no 'meta' entry); pass the .npz that "
                    f"`brainpipe index` wrote"
                )
            return {k: z[k] for k in names}
    except BrainpipeError:
        raise
    except ValueError as e:
        if "pickle" in str(e):  # object arrays: never ours, and never to be unpickled
            raise BrainpipeError(
                f"{p}: not a brainpipe index (it holds Python objects); pass the .npz that "
                f"`brainpipe index` wrote"
            ) from e
        raise BrainpipeError(f"{p}: {_CORRUPT} ({e}); {_rebuild(p)}") from e
    except Exception as e:  # zipfile/zlib/struct/EOF errors all mean a damaged archive
        raise BrainpipeError(f"{p}: {_CORRUPT} ({type(e).__name__}: {e}); {_rebuild(p)}") from e


# A stored path that leaves the raw root: absolute, or with a `..` component.
def _outside(q: str) -> bool:
    return q.startswith("/") or ".." in q.split("/")


def _check_contained(p: Path, paths: np.ndarray) -> None:
    """Every recording path must stay under the raw root: the index names files to open, and a
    crafted or damaged one must not make build-cache read `/etc/...` or a sibling tree."""
    if not len(paths):
        return
    listed = paths.tolist()
    joined = "\n" + "\n".join(listed)
    if "\n/" not in joined and ".." not in joined:  # two substring scans in C: 0.1 ms per 1k rows
        return
    row = next((i for i, q in enumerate(listed) if _outside(q)), None)
    if row is not None:
        raise BrainpipeError(
            f"{p}: row {row} path {listed[row]!r} points outside the raw root; refusing to "
            f"read it. Re-run `brainpipe index --raw DIR --index {p}` to rebuild the index"
        )


def _content_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        if k.startswith("error_"):
            continue  # skipped files do not change what a cache built from the index holds
        if k == "event_description" and not (arrays[k] != "").any():
            continue  # no EDF+ annotations: hash as an index written before the column
        v = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(v.tobytes())
    return h.hexdigest()[:16]


# Arrays of text; an empty one is stored as "<U1", not numpy's default float.
_TEXT_ARRAYS = frozenset(
    (
        *_STR_COLUMNS,
        "chanset_labels",
        "chanset_types",
        "event_label",
        "event_description",
        "error_path",
        "error_reason",
    )
)


def _row_arrays(recordings: list[Recording]) -> dict[str, np.ndarray]:
    """The per-recording columns, except `chanset`."""
    # Columns by transposing the rows in C (getattr per row and column was 5% of a scan).
    columns = dict(
        zip(
            _ROW_FIELDS,
            zip(*map(attrgetter(*_ROW_FIELDS), recordings), strict=True)
            if recordings
            else [()] * len(_ROW_FIELDS),
            strict=True,
        )
    )
    facts = (
        zip(*map(attrgetter(*_FACT_FIELDS), (r.facts for r in recordings)), strict=True)
        if recordings
        else [()] * len(_FACT_FIELDS)
    )
    columns.update(zip(_FACT_FIELDS, facts, strict=True))
    arrays = {name: np.array(columns[name], dtype=str) for name in _STR_COLUMNS}
    for name, dtype in _NUM_COLUMNS.items():
        if name != "chanset":
            arrays[name] = np.array(columns[name], dtype=dtype)
    return arrays


def _chanset_arrays(recordings: list[Recording]) -> dict[str, np.ndarray]:
    """Each distinct (labels, rates, types) stored once, and each recording's set."""
    chansets: dict[tuple, int] = {}
    rec_chanset = np.array(
        [
            chansets.setdefault((r.channels, r.channel_sfreqs, r.channel_types), len(chansets))
            for r in recordings
        ],
        np.int32,
    )
    keys = list(chansets)
    sizes = [len(k[0]) for k in keys]
    offsets = np.zeros(len(keys) + 1, np.int64)
    offsets[1:] = np.cumsum(sizes)
    arrays = {
        "chanset": rec_chanset,
        "chanset_offsets": offsets,
        "chanset_labels": np.array(list(chain.from_iterable(k[0] for k in keys)), str),
        "chanset_sfreqs": np.fromiter(
            chain.from_iterable(k[1] for k in keys), np.float64, int(offsets[-1])
        ),
    }
    # Every channel of an EDF is "eeg": repeat each set's one type rather than convert tens
    # of thousands of equal strings.
    if all(k[2].count(k[2][0]) == len(k[2]) for k in keys if k[2]):
        arrays["chanset_types"] = np.repeat(
            np.array([k[2][0] if k[2] else "" for k in keys], str), sizes
        )
    else:
        arrays["chanset_types"] = np.array(list(chain.from_iterable(k[2] for k in keys)), str)
    return arrays


def _event_arrays(recordings: list[Recording]) -> dict[str, np.ndarray]:
    # Per recording: its annotation-file events (TUSZ) in file order, then its EDF+ annotations.
    ev = [
        (i, e.onset_s, e.offset_s, e.label, "") for i, r in enumerate(recordings) for e in r.events
    ]
    ev += [(i, *a) for i, r in enumerate(recordings) for a in r.annotations]
    ev.sort(key=lambda row: row[0])  # stable: keeps each recording's order
    cols = list(zip(*ev, strict=True)) if ev else [()] * 5
    return {
        "event_recording": np.array(cols[0], np.int64),
        "event_onset_s": np.array(cols[1], np.float64),
        "event_offset_s": np.array(cols[2], np.float64),
        "event_label": np.array(cols[3], dtype=str),
        "event_description": np.array(cols[4], dtype=str),
    }


def _error_arrays(errors: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    errors = sorted(errors)
    if not errors:
        return {"error_path": np.zeros(0, "U1"), "error_reason": np.zeros(0, "U1")}
    return {
        "error_path": np.array([p for p, _ in errors], dtype=str),
        "error_reason": np.array([r for _, r in errors], dtype=str),
    }


def _final_meta(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {**meta, "format_version": INDEX_FORMAT_VERSION, "index_hash": _content_hash(arrays)}
