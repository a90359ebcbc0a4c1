"""Recordings in mne's formats (everything but EDF/BDF): which are indexed, and opening them.

Owns the table of mne's raw formats (`MNE_FORMATS`: every suffix `mne.io.read_raw` knows,
indexed or refused with the reason), the formats that are directories (CTF `.ds`, EGI `.mff`,
MEF3 `.mefd`: indexed as one recording each, never walked into), the per-suffix reader options
(`corpus.reader_options`, e.g. `{".fif": {"allow_maxshield": true}}`) and `open_raw`, which
the index stage, build-cache and `EdfWindowDataset` all use, so a file opens the same way in
each. EDF/BDF are read by `brainpipe.edf`, not here.

    raw = open_raw("sub-01/meg/sub-01_task-rest_meg.fif", {".fif": {"allow_maxshield": True}})

A directory recording's size and mtime are the directory's own: a file rewritten in place
inside a `.ds` does not change them, so re-index with `--force` after editing one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from brainpipe.errors import BrainpipeError

EDF_SUFFIXES = (".edf", ".bdf")
# Formats stored as a directory holding several files; the scan takes the directory whole.
DIRECTORY_SUFFIXES = (".ds", ".mff", ".mefd")

# Every suffix mne.io.read_raw dispatches on (mne 1.13): None = indexed, else why it is not.
MNE_FORMATS: dict[str, str | None] = {
    ".fif": None, ".fif.gz": None,       # Neuromag/MEGIN, mne's own
    ".ds": None,                         # CTF (directory)
    ".mff": None,                        # EGI MFF (directory)
    ".mefd": None,                       # MEF3 (directory)
    ".con": None, ".sqd": None,          # KIT/Yokogawa
    ".vhdr": None, ".ahdr": None,        # BrainVision (header; .eeg/.vmrk beside it)
    ".set": None,                        # EEGLAB (.fdt beside it)
    ".gdf": None, ".cnt": None, ".nxe": None, ".nedf": None, ".ns3": None,
    ".data": None,                       # Nicolet
    ".lay": None,                        # Persyst (.dat beside it)
    ".cdt": None,                        # CURRY
    ".bin": None,                        # ARTEMIS123 or UCL FIL OPM (mne tells them apart)
    ".eeg": "Nihon Kohden in mne, but also BrainVision's data file: list it only for a "
            "Nihon Kohden tree (BrainVision is indexed by its .vhdr)",
    ".dat": "BCI2000 or a CURRY/Persyst data file beside its header: index the header "
            "(.cdt/.lay); list .dat only for a BCI2000 tree",
    ".cdt.dpa": "CURRY header beside a .cdt: index the .cdt",
    ".cdt.cef": "CURRY header beside a .cdt: index the .cdt",
    ".dap": "CURRY header beside a .dat: index the data file",
    ".rs3": "CURRY header beside a .dat: index the data file",
    ".cef": "CURRY header beside a .dat: index the data file",
    ".mat": "FieldTrip .mat needs the original Info (mne.io.read_raw_fieldtrip(info=...)); "
            "convert to FIF first",
    ".asc": "EyeLink eye tracking: no EEG/MEG channels",
    ".snirf": "fNIRS: no EEG/MEG channels",
    ".hdr": "NIRx fNIRS: no EEG/MEG channels",
    ".txt": "BOXY fNIRS text: no EEG/MEG channels",
}  # fmt: skip


def format_refusal(suffix: str) -> str | None:
    """Why `suffix` cannot be a `corpus.extensions` entry, or None when it can."""
    s = suffix.lower()
    if s in EDF_SUFFIXES:
        return None
    if s not in MNE_FORMATS:
        return f"not a format brainpipe or mne reads (known: {', '.join(known_suffixes())})"
    return MNE_FORMATS[s]


def known_suffixes() -> tuple[str, ...]:
    """Suffixes that can be indexed: EDF/BDF and mne's indexed formats."""
    return EDF_SUFFIXES + tuple(s for s, why in MNE_FORMATS.items() if why is None)


def options_for(path: str, reader_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `corpus.reader_options` entry whose suffix `path` ends with (the longest wins)."""
    if not reader_options:
        return {}
    low = path.lower().rstrip("/")
    best = max((s for s in reader_options if low.endswith(s.lower())), key=len, default=None)
    return dict(reader_options[best]) if best is not None else {}


@functools.cache
def _quiet_mne() -> Any:
    """mne, with its logging set to errors once for the whole process.

    mne's per-call `verbose=` sets the shared logger's level and restores it on return, which
    is not thread-safe: one thread restoring INFO while another reads let "Opening raw data
    file ..." lines into the output of a threaded `index`. One global level has no such race."""
    import mne

    mne.set_log_level("ERROR")
    return mne


def open_raw(path: str, reader_options: Mapping[str, Any] | None = None):
    """`mne.io.read_raw(path, preload=False, **options)`; any failure is one `BrainpipeError`."""
    mne = _quiet_mne()
    opts = options_for(path, reader_options)
    try:
        return mne.io.read_raw(path, preload=False, **opts)
    except Exception as e:  # mne raises many types for bad files; all mean "unreadable"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = ""
        if "allow_maxshield" in msg and "allow_maxshield" not in opts:
            hint = ' (set corpus.reader_options: {".fif": {"allow_maxshield": true}})'
        raise BrainpipeError(f"{path}: unreadable: {msg}{hint}") from e


def is_directory_format(name: str) -> bool:
    """Whether a path names a recording stored as a directory (CTF .ds, EGI .mff, MEF3 .mefd)."""
    return name.lower().rstrip("/").endswith(DIRECTORY_SUFFIXES)


def recording_suffix(name: str) -> str | None:
    """The recording suffix `name` ends with (the longest: `.fif.gz` over `.gz`), or None."""
    low = name.lower().rstrip("/")
    return max((s for s in known_suffixes() if low.endswith(s)), key=len, default=None)


def recording_files(rel: str, keys: Iterable[str]) -> list[str]:
    """Of `keys` (every file of a tree, relative, `/`-separated), those that make up the
    recording `rel`: what must be copied together for mne to open it (object storage).

    An EDF/BDF is its file. A directory recording (CTF .ds, EGI .mff) is every file under
    it. Otherwise the file
    itself and those beside it that share its stem (BrainVision .vmrk/.eeg, EEGLAB .fdt,
    Persyst .dat, CURRY .cdt.dpa) or continue it (a split FIF: mne's `raw-1.fif`, BIDS'
    `_split-02_meg.fif`). Nothing else: a tree of `run-1.fif`...`run-50.fif` copies one each.
    """
    rel = rel.rstrip("/")
    if rel.lower().endswith(EDF_SUFFIXES):  # one file by definition (a TUSZ .csv_bi beside it
        return [rel]  # is an annotation file, read as such)
    if is_directory_format(rel):
        return sorted(k for k in keys if k.startswith(rel + "/"))
    folder, _, name = rel.rpartition("/")
    stem = name[: len(name) - len(recording_suffix(name) or "." + name.rsplit(".", 1)[-1])]
    m = re.search(r"_split-\d+", stem)
    head = (
        re.escape(stem[: m.start()]) + r"_split-\d+" + re.escape(stem[m.end() :])
        if m
        else re.escape(stem)
    )
    same = re.compile(head + r"(-\d+)?\..+")
    prefix = folder + "/" if folder else ""
    beside = (k[len(prefix) :] for k in keys if k != rel and k.startswith(prefix))
    return [rel, *sorted(prefix + n for n in beside if same.fullmatch(n))]
