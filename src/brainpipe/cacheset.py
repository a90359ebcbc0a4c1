"""The cache set format: a JSON manifest naming member caches, and a reader that joins them.

A cache set is how a cache grows past one file: the shards of `build-cache --shard I/N`, or
caches of other corpora built with the same preprocessing, listed in one small manifest.
Adding a corpus is adding a member; nothing is rebuilt. Owns writing (`write_cache_set`),
reading (`CacheSetReader`), the shard rule (`shard_of`) and `open_cache`, which opens either a
cache or a set, so every consumer (datasets, train, inspect, verify) takes both.

    {
      "format": "brainpipe-cache-set",
      "format_version": 1,
      "channels": ["FP1", "FP2", ...], "sfreq": 100.0, "dtype": "float16",
      "window_samples": 400, "stride_samples": 200, "label_names": ["normal", "abnormal"],
      "task": "abnormal", "preprocess": {"montage": "referential", "l_freq": 0.5, ...},
      "members": [
        {"path": "shard-0-of-2.h5", "identity": "3f0c...", "bytes": 1843200,
         "config_hash": "a1...", "index_hash": "b2...", "n_recordings": 12, "n_windows": 410},
        ...
      ]
    }

Member paths are relative to the manifest's directory (a set moves with its members).
`identity` hashes a member's provenance attributes and its tables and `bytes` is its size, so
a member rebuilt, replaced or truncated since the set was written is refused by name; a copy
(rsync, cp) keeps both. Reads go straight to each member's own memmap: an HDF5 virtual dataset cannot
be memory-mapped and read 15x slower in a measurement here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.cachefile import STATUS_DONE, CacheReader
from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output

SET_FORMAT = "brainpipe-cache-set"
SET_VERSION = 1
# What every member must agree on for their windows to be one dataset.
AGREE = (
    "channels",
    "sfreq",
    "dtype",
    "window_samples",
    "stride_samples",
    "label_names",
    "task",
    "preprocess",
)


def _stable_hash(name: str) -> int:
    # Python's `hash()` of a str is salted per process, so array tasks would disagree.
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def shard_of(subjects: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard (0..n_shards-1) of each row, given each row's subject: whole subjects per shard.

    Subjects are taken in the order of a stable hash of their name, each to the shard holding
    the fewest rows so far: the same on every machine for the same index, shards balanced by
    recordings, and none empty while n_shards <= the number of subjects.
    """
    names, inverse, counts = np.unique(
        np.asarray(subjects).astype(str), return_inverse=True, return_counts=True
    )
    order = sorted(range(len(names)), key=lambda j: (_stable_hash(str(names[j])), str(names[j])))
    load = np.zeros(n_shards, np.int64)
    shard = np.zeros(len(names), np.int64)
    for j in order:
        k = int(np.argmin(load))
        shard[j] = k
        load[k] += counts[j]
    return shard[inverse.reshape(-1)]


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` -> (I, N), checked: 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise BrainpipeError(f"--shard {text!r}: expected I/N, e.g. 0/8") from None
    if not (n >= 1 and 0 <= i < n):
        raise BrainpipeError(f"--shard {text}: need 0 <= I < N, e.g. 0/{max(n, 1)}")
    return i, n


def is_cache_set(path: str | os.PathLike) -> bool:
    """A set manifest (JSON, starting with `{`), as opposed to an HDF5 cache."""
    try:
        with open(path, "rb") as f:
            return f.read(64).lstrip().startswith(b"{")
    except OSError:
        return False


def open_cache(path: str | os.PathLike) -> CacheReader | CacheSetReader:
    """A reader for a cache file or a cache set, whichever `path` is."""
    return CacheSetReader(path) if is_cache_set(path) else CacheReader(path)


def _identity(r: CacheReader) -> str:
    h = hashlib.sha256()
    for k in ("config_hash", "index_hash", "plan_hash", "created"):
        h.update(f"{k}={r.attrs.get(k, '')};".encode())
    for table in (r.recordings, r.windows):
        for k in sorted(table):
            h.update(k.encode())
            h.update(np.ascontiguousarray(table[k]).tobytes())
    return h.hexdigest()[:16]


def _agreed(r: CacheReader) -> dict[str, Any]:
    return {
        "channels": list(r.channels),
        "sfreq": float(r.sfreq),
        "dtype": str(r.dtype),
        "window_samples": int(r.window_samples),
        "stride_samples": int(r.stride_samples),
        "label_names": list(r.label_names),
        "task": r.task,
        "preprocess": r.config.get("preprocess", {}),  # filters, montage, normalization
    }


def _check_agree(first: dict, other: dict, name: str, first_name: str) -> None:
    for k in AGREE:
        if first[k] != other[k]:
            a, b = first[k], other[k]
            if isinstance(a, dict) and isinstance(b, dict):
                key = next(x for x in sorted(set(a) | set(b)) if a.get(x) != b.get(x))
                detail = f"{k}.{key} is {b.get(key)!r}, {first_name} has {a.get(key)!r}"
            elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                i = next(j for j in range(len(a)) if a[j] != b[j])
                detail = f"{k}[{i}] is {b[i]!r}, {first_name} has {a[i]!r}"
            else:
                detail = f"{k} is {b!r}, {first_name} has {a!r}"
            raise BrainpipeError(f"{name}: does not fit the set: {detail}")


def write_cache_set(out: str | os.PathLike, caches: list[str | os.PathLike]) -> dict[str, Any]:
    """Write the manifest `out` naming `caches` (atomic); returns what it wrote.

    Every member is opened (it must be a finished cache) and must agree with the first on
    channels, sample rate, dtype, window, label names and task.
    """
    out = Path(out)
    if not caches:
        raise BrainpipeError(f"{out}: a cache set needs at least one member cache")
    base = out.resolve().parent
    members, agreed, first_name = [], None, ""
    seen: set[Path] = set()
    labels: dict[str, int] = {}
    for c in caches:
        p = Path(c).resolve()
        if p in seen:
            raise BrainpipeError(f"{c}: named twice; each member once")
        seen.add(p)
        if is_cache_set(p):
            raise BrainpipeError(f"{c}: is a cache set; name its member caches instead")
        with CacheReader(p) as r:
            mine = _agreed(r)
            if agreed is None:
                agreed, first_name = mine, str(c)
            else:
                _check_agree(agreed, mine, str(c), first_name)
            members.append(
                {
                    "path": os.path.relpath(p, base),
                    "identity": _identity(r),
                    "bytes": p.stat().st_size,
                    "config_hash": str(r.attrs.get("config_hash", "")),
                    "index_hash": str(r.attrs.get("index_hash", "")),
                    "n_recordings": int((r.recordings["status"] == STATUS_DONE).sum()),
                    "n_windows": len(r.windows["start"]),
                }
            )
            for k, v in r.summary()["labels"].items():
                labels[k] = labels.get(k, 0) + v
    _check_classes(agreed["task"], labels, out)
    manifest = {"format": SET_FORMAT, "format_version": SET_VERSION, **agreed, "members": members}
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _check_classes(task: str, labels: dict[str, int], out: Path) -> None:
    """A set for a task needs windows of each of its classes (a shard alone may lack one)."""
    from brainpipe.corpus import TASK_LABELS

    empty = [k for k in TASK_LABELS.get(task, ()) if labels.get(k, 0) == 0]
    if empty:
        raise BrainpipeError(
            f"{out}: task {task} needs {' and '.join(TASK_LABELS[task])} windows but the members "
            f"hold no {', '.join(empty)} ({labels}); check the labels/annotations in the index"
        )


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a set, checked for its format and version."""
    p = Path(path)
    try:
        m = json.loads(p.read_text())
    except FileNotFoundError as e:
        raise BrainpipeError(f"{p}: cache set not found") from e
    except (OSError, ValueError) as e:
        raise BrainpipeError(f"{p}: not a readable cache set ({e})") from e
    if not isinstance(m, dict) or m.get("format") != SET_FORMAT:
        raise BrainpipeError(f"{p}: not a brainpipe cache set (no format {SET_FORMAT!r})")
    if m.get("format_version") != SET_VERSION:
        raise BrainpipeError(
            f"{p}: cache set format version {m.get('format_version')}, this brainpipe reads "
            f"version {SET_VERSION}; write it again with `brainpipe cache-set`"
        )
    return m


def member_paths(path: str | os.PathLike) -> list[Path]:
    """The member caches of a set, as paths."""
    base = Path(path).resolve().parent
    return [base / m["path"] for m in read_manifest(path)["members"]]


class CacheSetReader:
    """A cache set read like one cache: the same attributes and tables, windows from members.

    Tables are the members' concatenated, with recording, window and signal-row numbers
    shifted into one global numbering (member k's rows start at `row_base[k]`). A window never
    spans members, so `read_windows` maps each start to its member and copies from that
    member's memmap. Pickles without open handles, like `CacheReader`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        base = self.path.resolve().parent
        self.members: list[CacheReader] = []
        for m in manifest["members"]:
            p = base / m["path"]
            if not p.exists():
                raise BrainpipeError(
                    f"{self.path}: member {m['path']} is missing ({p}); rebuild it or write the set again"
                )
            # The size first: HDF5 would refuse a truncated file with a less useful message.
            r = CacheReader(p) if p.stat().st_size == m["bytes"] else None
            if r is None or _identity(r) != m["identity"]:
                raise BrainpipeError(
                    f"{self.path}: member {m['path']} changed since the set was written "
                    "(rebuilt or replaced); write the set again with `brainpipe cache-set`"
                )
            _check_agree(manifest, _agreed(r), f"{self.path}: member {m['path']}", "the set")
            self.members.append(r)
        if not self.members:
            raise BrainpipeError(f"{self.path}: the cache set has no members")
        first = self.members[0]
        self.channels, self.label_names, self.task = first.channels, first.label_names, first.task
        self.sfreq, self.dtype = first.sfreq, first.dtype
        self.window_samples, self.stride_samples = first.window_samples, first.stride_samples
        self.window_anchor = first.window_anchor
        self.config = first.config
        # The first member's attributes stand for the set (they agree on what matters),
        # except those naming one member's own rows.
        own = ("shard", "plan_hash", "created", "n_skipped")
        self.attrs = {
            **{k: v for k, v in first.attrs.items() if k not in own},
            "config_hash": first.attrs.get("config_hash", ""),
            "index_hash": ",".join(
                dict.fromkeys(str(r.attrs.get("index_hash", "")) for r in self.members)
            ),
            "members": [m["path"] for m in manifest["members"]],
        }
        rows = np.array([r.shape[0] for r in self.members], np.int64)
        self.row_base = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self.shape = (int(self.row_base[-1]), first.shape[1])
        self._join_tables()

    def _join_tables(self) -> None:
        rec_base = np.cumsum([0] + [len(r.recordings["path"]) for r in self.members])
        win_base = np.cumsum([0] + [len(r.windows["start"]) for r in self.members])

        def cat(get, shift=None) -> np.ndarray:
            parts = [
                get(r) if shift is None else get(r) + shift[k] for k, r in enumerate(self.members)
            ]
            return np.concatenate(parts)

        rec = self.members[0].recordings
        self.recordings = {k: cat(lambda r, k=k: r.recordings[k]) for k in rec}
        self.recordings["offset"] = cat(lambda r: r.recordings["offset"], self.row_base)
        if "first_window" in rec:
            self.recordings["first_window"] = cat(lambda r: r.recordings["first_window"], win_base)
        w = self.members[0].windows
        self.windows = {k: cat(lambda r, k=k: r.windows[k]) for k in w}
        self.windows["recording"] = cat(
            lambda r: r.windows["recording"].astype(np.int64), rec_base
        ).astype(w["recording"].dtype)
        self.windows["start"] = cat(lambda r: r.windows["start"], self.row_base)
        self.subjects = {k: cat(lambda r, k=k: r.subjects[k]) for k in self.members[0].subjects}
        for k, b in (("first_window", win_base), ("first_recording", rec_base)):
            self.subjects[k] = cat(lambda r, k=k: r.subjects[k], b)
        self.events = {k: cat(lambda r, k=k: r.events[k]) for k in self.members[0].events}
        self.events["recording"] = cat(lambda r: r.events["recording"], rec_base)
        self.skipped = [s for r in self.members for s in r.skipped]

    # the CacheReader interface ----------------------------------------------------------------
    def __enter__(self) -> CacheSetReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for r in self.members:
            r.close()

    @property
    def n_channels(self) -> int:
        return self.shape[1]

    def read(self, start: int, n: int) -> np.ndarray:
        """Rows [start, start + n) of the joined signal; they must lie in one member."""
        k = int(np.searchsorted(self.row_base, start, side="right")) - 1
        if start + n > self.row_base[k + 1]:
            raise ValueError(f"rows [{start}, {start + n}) span two members of {self.path}")
        return self.members[k].read(start - int(self.row_base[k]), n)

    def read_windows(self, starts: np.ndarray, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """A batch of windows, (len(starts), n, n_channels), each copied from its member's memmap."""
        starts = np.asarray(starts, dtype=np.int64)
        if out is None:
            out = np.empty((len(starts), n, self.shape[1]), dtype=self.dtype)
        which = np.searchsorted(self.row_base, starts, side="right") - 1
        local = starts - self.row_base[which]
        sigs = [r._signals() for r in self.members]
        for k, (m, s) in enumerate(zip(which.tolist(), local.tolist(), strict=True)):
            out[k] = sigs[m][s : s + n]
        return out

    def summary(self) -> dict[str, Any]:
        """`CacheReader.summary()` of the joined tables, with the members listed."""
        parts = [r.summary() for r in self.members]
        out = dict(parts[0])
        for k in ("n_recordings", "n_windows", "hours", "bytes"):
            out[k] = sum(p[k] for p in parts)
        r = self.recordings
        done = r["status"] == STATUS_DONE
        out["n_subjects"] = int(len(np.unique(r["subject"][done])))
        for k in ("labels", "splits"):
            out[k] = _add_counts(p[k] for p in parts)
        out["windows_by_split_label"] = {
            s: _add_counts(p["windows_by_split_label"].get(s, {}) for p in parts)
            for s in out["splits"]
        }
        out["skipped"] = self.skipped
        out.update(kind="cache set", path=str(self.path), index_hash=self.attrs["index_hash"])
        out["members"] = [
            {"path": p["path"], "n_recordings": p["n_recordings"], "n_windows": p["n_windows"]}
            for p in parts
        ]
        return out


def _add_counts(dicts) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total
