"""Corpus facts from paths: TUAB, TUSZ and generic trees.

Pure functions over relative paths (and a manifest CSV), so the layouts are tested against
literal TUH paths. Nothing here opens a recording; annotation files are `annotations.py`'s.

TUAB: edf/{train,eval}/{normal,abnormal}/01_tcp_ar/<subject>_s<session>_t<token>.edf
TUSZ: edf/{train,dev,eval}/<subject>/s<session>_<year>/<montage>/<subject>_s<session>_t<token>.edf
      with <stem>.csv_bi (term-based) and <stem>.csv (per channel) seizure annotations beside it
      (read by brainpipe.annotations).
TUEV: edf/{train,eval}/<subject>/<name>.edf with <name>.rec beside it (v2: train names are
      <subject>_<nnnnnnnn>.edf, eval ones <class>_<subject>_<part>.edf); the subject is the
      folder, the recording's events come from its .rec (brainpipe.annotations.read_rec).
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from brainpipe.annotations import decode_text
from brainpipe.errors import BrainpipeError

# TUH file stem: subject id (8 letters in current releases, digits in old ones), session, token.
_TUH_STEM = re.compile(r"^(?P<subject>[A-Za-z0-9]+)_s(?P<session>\d+)_t(?P<token>\d+)$")
_MONTAGE_DIR = re.compile(r"^\d\d_tcp_(ar|le|ar_a)$")
TUAB_SPLITS = ("train", "eval")
TUAB_LABELS = ("normal", "abnormal")
TUSZ_SPLITS = ("train", "dev", "eval")
TUSZ_LABELS = ("bckg", "seiz")
# cache.task -> the label names a cache of that task stores, in class-index order. The
# `events` task's names come from the config instead: `event_label_names(corpus.event_labels)`.
TUEV_SPLITS = ("train", "eval")
TASK_LABELS = {"abnormal": TUAB_LABELS, "seizure": TUSZ_LABELS}


@dataclass(frozen=True, slots=True)
class Facts:
    """What a path says about a recording; empty strings where the layout does not say."""

    split: str = ""
    label: str = ""
    subject: str = ""
    session: str = ""
    token: str = ""
    montage: str = ""


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


def parse_tuev_path(relpath: str) -> Facts:
    """Facts from a TUEV path: the split folder, the subject folder under it, the file stem as
    the token (TUEV names carry no session)."""
    parts = _parts(relpath)
    at = next((i for i, p in enumerate(parts) if p in TUEV_SPLITS), None)
    if at is None or len(parts) < at + 3:
        return Facts(split=parts[at] if at is not None else "")
    name = parts[-1]
    dot = name.rfind(".")
    return Facts(split=parts[at], subject=parts[at + 1], token=name[:dot] if dot > 0 else name)


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
        data = p.read_bytes()
    except OSError as e:
        raise BrainpipeError(f"{p}: cannot read manifest ({e.strerror})") from e
    # A spreadsheet's "CSV UTF-8" starts with a byte-order mark that would rename `path`.
    reader = csv.DictReader(io.StringIO(decode_text(data), newline=""))
    if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise BrainpipeError(f"{p}: manifest needs a 'path' column; found {reader.fieldnames}")
    return {
        row["path"].strip(): {k: (v or "").strip() for k, v in row.items() if k != "path"}
        for row in reader
    }


def layout_parser(layout: str, filename_regex: str | None = None, manifest: str | None = None):
    if layout == "tuab":
        return parse_tuab_path
    if layout == "tusz":
        return parse_tusz_path
    if layout == "tuev":
        return parse_tuev_path
    return GenericLayout(filename_regex, read_manifest(manifest) if manifest else None)


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


def event_label_names(mapping: dict[str, str]) -> tuple[str, ...]:
    """The classes of cache.task=events: corpus.event_labels' distinct labels, in order of first
    appearance (class k is the k-th), e.g. {"Sleep stage W": W, "Sleep stage [34]": N3, ...}."""
    return tuple(dict.fromkeys(v for v in mapping.values() if v))
