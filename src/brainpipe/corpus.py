"""Corpus facts from paths and annotation files: TUAB, TUSZ and generic trees.

Pure functions over relative paths and small text files, so the layouts are tested against literal
TUH paths. Nothing here opens a recording.

TUAB: edf/{train,eval}/{normal,abnormal}/01_tcp_ar/<subject>_s<session>_t<token>.edf
TUSZ: edf/{train,dev,eval}/<subject>/s<session>_<year>/<montage>/<subject>_s<session>_t<token>.edf
      with <stem>.csv_bi (term-based) and <stem>.csv (per channel) seizure annotations beside it.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from brainpipe.errors import BrainpipeError

# TUH file stem: subject id (8 letters in current releases, digits in old ones), session, token.
_TUH_STEM = re.compile(r"^(?P<subject>[A-Za-z0-9]+)_s(?P<session>\d+)_t(?P<token>\d+)$")
_MONTAGE_DIR = re.compile(r"^\d\d_tcp_(ar|le|ar_a)$")
TUAB_SPLITS = ("train", "eval")
TUAB_LABELS = ("normal", "abnormal")
TUSZ_SPLITS = ("train", "dev", "eval")
TUSZ_LABELS = ("bckg", "seiz")
# cache.task -> the label names a cache of that task stores, in class-index order.
TASK_LABELS = {"abnormal": TUAB_LABELS, "seizure": TUSZ_LABELS}
# TUSZ labels every non-background event with a seizure type (fnsz, gnsz, cpsz, absz, ...);
# anything not in this set counts as a seizure.
BACKGROUND_LABELS = frozenset(
    {"bckg", "null", "artf", "eyem", "chew", "shiv", "musc", "elpp", "elec"}
)


_EEG_PREFIX = re.compile(r"^EEG\s+")
_REF_SUFFIX = re.compile(r"-(REF|LE|AR)$")


@functools.lru_cache(maxsize=4096)
def canonical_name(label: str) -> str:
    """TUH/EDF channel label to an electrode name: "EEG FP1-REF" -> "FP1", "EEG T3-LE" -> "T3".

    Upper-cases, drops the "EEG " prefix and the -REF/-LE/-AR reference suffix; other labels
    ("EKG1-REF" -> "EKG1", "PHOTIC-REF" -> "PHOTIC", "IBI") stay recognisable. Lives here, not
    in preprocess, so datasets can use it without importing scipy.
    """
    return _REF_SUFFIX.sub("", _EEG_PREFIX.sub("", label.strip().upper()))


@dataclass(frozen=True, slots=True)
class Facts:
    """What a path says about a recording; empty strings where the layout does not say."""

    split: str = ""
    label: str = ""
    subject: str = ""
    session: str = ""
    token: str = ""
    montage: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    onset_s: float
    offset_s: float
    label: str
    channel: str = "TERM"


def _parts(relpath: str) -> tuple[str, ...]:
    # PurePosixPath(relpath).parts for the relative paths the index stores, without pathlib's
    # per-call cost (it was a third of the index's per-file time beside the header parse).
    return tuple(p for p in relpath.split("/") if p and p != ".")


def _stem_facts(name: str) -> dict[str, str]:
    dot = name.rfind(".")
    m = _TUH_STEM.match(name[:dot] if dot > 0 else name)
    if not m:
        return {}
    return {"subject": m["subject"], "session": f"s{m['session']}", "token": f"t{m['token']}"}


def _find_montage(dirs: tuple[str, ...]) -> str:
    for p in reversed(dirs):
        if _MONTAGE_DIR.match(p):
            return p
    return ""


# A TUH tree has a few dozen directories per thousand files, so what a path's directories say
# is worked out once per directory. Pure functions of the path: a bounded cache never goes stale.
@functools.lru_cache(maxsize=4096)
def _tuab_dir(head: str) -> dict[str, str]:
    dirs = _parts(head)
    return {
        "split": next((p for p in dirs if p in TUAB_SPLITS), ""),
        "label": next((p for p in dirs if p in TUAB_LABELS), ""),
        "montage": _find_montage(dirs),
    }


@functools.lru_cache(maxsize=4096)
def _tusz_dir(head: str) -> dict[str, str]:
    dirs = _parts(head)
    return {
        "split": next((p for p in dirs if p in TUSZ_SPLITS), ""),
        "montage": _find_montage(dirs),
    }


def _path_facts(relpath: str, dir_facts: Callable[[str], dict[str, str]]) -> Facts:
    head, _, name = relpath.rpartition("/")
    if name in ("", "."):  # "", "a/", "a/.": split as _parts does
        parts = _parts(relpath)
        if not parts:
            return Facts()
        head, name = "/".join(parts[:-1]), parts[-1]
    return Facts(**dir_facts(head), **_stem_facts(name))


def parse_tuab_path(relpath: str) -> Facts:
    """Facts from a TUAB path; tolerant of extra leading directories (e.g. `v3.0.1/edf/...`)."""
    return _path_facts(relpath, _tuab_dir)


def parse_tusz_path(relpath: str) -> Facts:
    return _path_facts(relpath, _tusz_dir)


class GenericLayout:
    """Subject/label/split from a filename regex or a CSV manifest; else each file is a subject."""

    def __init__(
        self, filename_regex: str | None = None, manifest: dict[str, dict[str, str]] | None = None
    ):
        self.regex = re.compile(filename_regex) if filename_regex else None
        self.manifest = manifest

    def __call__(self, relpath: str) -> Facts:
        fields: dict[str, str] = {}
        if self.manifest is not None:
            fields = self.manifest.get(relpath, {})
        elif self.regex is not None:
            m = self.regex.search(relpath)
            if m:
                fields = {k: v for k, v in m.groupdict().items() if v is not None}
        keys = ("split", "label", "subject", "session")
        facts = {k: str(fields.get(k, "")) for k in keys}
        if not facts["subject"]:
            facts["subject"] = str(PurePosixPath(relpath).with_suffix(""))
        return Facts(**facts)


def read_manifest(path: str | Path) -> dict[str, dict[str, str]]:
    """A CSV with a `path` column (relative to the raw root) and any of subject/session/label/split."""
    p = Path(path)
    try:
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise BrainpipeError(
                    f"{p}: manifest needs a 'path' column; found {reader.fieldnames}"
                )
            return {
                row["path"].strip(): {k: (v or "").strip() for k, v in row.items() if k != "path"}
                for row in reader
            }
    except OSError as e:
        raise BrainpipeError(f"{p}: cannot read manifest ({e.strerror})") from e


def layout_parser(layout: str, filename_regex: str | None = None, manifest: str | None = None):
    if layout == "tuab":
        return parse_tuab_path
    if layout == "tusz":
        return parse_tusz_path
    return GenericLayout(filename_regex, read_manifest(manifest) if manifest else None)


def parse_annotations(path: str | Path) -> list[Event]:
    """Events from a TUSZ v2 `.csv_bi`/`.csv` file, by column name.

    Header lines start with `#` and vary between releases, so columns are found by name
    (channel, start_time, stop_time, label); a file without them is an error, never a silent
    empty list — a misparsed column once produced a 254 GB TUSZ cache with no seizures.
    Background rows are dropped; per-channel rows are kept with their channel.
    """
    p = Path(path)
    try:
        lines = [
            ln
            for ln in p.read_text(errors="replace").splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")
        ]
    except OSError as e:
        raise BrainpipeError(f"{p}: cannot read annotations ({e.strerror})") from e
    if not lines:
        raise BrainpipeError(f"{p}: annotation file has no header row")
    rows = csv.reader(lines)
    header = [h.strip().lower() for h in next(rows)]
    need = ("start_time", "stop_time", "label")
    missing = [c for c in need if c not in header]
    if missing:
        raise BrainpipeError(f"{p}: annotation columns {missing} not found in header {header}")
    i_on, i_off, i_lab = (header.index(c) for c in need)
    i_ch = header.index("channel") if "channel" in header else None
    events = []
    for n, row in enumerate(rows, start=2):
        if not row:
            continue
        try:
            onset, offset = float(row[i_on]), float(row[i_off])
            label = row[i_lab].strip().lower()
        except (ValueError, IndexError) as e:
            raise BrainpipeError(f"{p}: data row {n} is malformed: {','.join(row)!r}") from e
        if label in BACKGROUND_LABELS:
            continue
        channel = row[i_ch].strip() if i_ch is not None else "TERM"
        events.append(Event(onset, offset, label, channel))
    return events


def merge_channel_events(events: list[Event]) -> list[Event]:
    """Per-channel `.csv` events to term-level events: the union of intervals across channels."""
    if not events:
        return []
    spans = sorted((e.onset_s, e.offset_s, e.label) for e in events)
    merged = [list(spans[0])]
    for on, off, lab in spans[1:]:
        if on <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], off)
        else:
            merged.append([on, off, lab])
    return [Event(on, off, lab, "TERM") for on, off, lab in merged]


def event_labeler(mapping: dict[str, str]) -> Callable[[str], str]:
    """corpus.event_labels as a function: annotation description -> label ("" when unmapped).

    A key matches a description exactly, else as a regex matching the whole description
    ("Sleep stage [34]" -> "N3"); the first key in mapping order that matches wins."""
    exact = dict(mapping)
    patterns = [(re.compile(k), v) for k, v in mapping.items()]

    @functools.lru_cache(maxsize=1024)  # a corpus has few distinct descriptions
    def label(description: str) -> str:
        if description in exact:
            return exact[description]
        return next((v for rx, v in patterns if rx.fullmatch(description)), "")

    return label
