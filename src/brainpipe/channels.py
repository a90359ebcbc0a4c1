"""Channel names and types: the one normalization shared by index, build-cache and datasets.

Owns what a recorded channel label means: its electrode name (`canonical_name`), its channel
type in mne's words (`channel_type`), the 10-20 <-> 10-10 aliases, and finding a montage's
electrodes among a recording's channels (`locate`), which refuses a recording where two
channels stand for one electrode. The index's summary (`coverage_line`), the cache's channel
plans (`preprocess.plan_channels`) and the lazy `EdfWindowDataset` all go through `locate`, so a
recording gives the same channels whichever path reads it.

    canonical_name("EEG FP1-REF") == "FP1"; canonical_name("Fc5.") == "FC5"
    channel_type("EEG EKG1-REF") == "ecg"; channel_type("STI 014") == "stim"
    locate(["Fp1.", "T7..", "EKG"], ["FP1", "T3", "O1"]) == [0, 1, None]

Names. Labels are upper-cased and stripped of the decorations real files carry: PhysioNet's
trailing dots (`Fc5.`, `T7..`), the `EEG ` prefix and a reference suffix (`-REF`, `-LE`, `-AR`,
`-AVG`, `_REF`). Bipolar labels such as Sleep-EDF's `EEG Fpz-Cz` keep their second electrode
and so match no single electrode.

Aliases. 10-10 renamed four 10-20 electrodes at the same positions: T3/T4/T5/T6 are T7/T8/P7/P8.
Either name finds either channel. The cache stores the names `preprocess.channels` lists: by
default `config.STANDARD_1020`, TUH's 10-20 names; list T7/T8/P7/P8 there to store 10-10
names. The TCP montage's derivations keep the NEDC 10-20 names (`FP1-F7`, `F7-T3`, ...).

Types. mne's conventions (eeg, eog, ecg, emg, stim, misc) from the label's first word: EOG/LOC/ROC
are eog, ECG/EKG ecg, EMG/CHIN emg, STATUS/TRIGGER/STI/PHOTIC/MARKER/EVENT stim (BDF's
`Status` and mne's `STI 014`), respiration, temperature, oximetry and TUH's IBI/BURSTS/SUPPR
misc; everything else eeg. Only channels of type eeg fill an EEG montage's electrodes (a
montage that lists an EOG or ECG channel by name gets a channel of that type). A file's own
types (mne's for FIF and the other formats) win over the label's, except the generic `eeg`
that EDF readers, and indexes written before this module, give every channel: the label
refines it, so an old index and a new one plan the same channels. The index marks the bad channels a
BIDS `*_channels.tsv` names with type `bad` (`BAD_TYPE`), which fills nothing: they count as
missing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from brainpipe.errors import BrainpipeError

# The 10-20 names TUH uses and their 10-10 names (same positions).
TEN_TWENTY_TO_TEN_TEN = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
_ALIASES = {**TEN_TWENTY_TO_TEN_TEN, **{v: k for k, v in TEN_TWENTY_TO_TEN_TEN.items()}}
CHANNEL_TYPES = ("eeg", "eog", "ecg", "emg", "stim", "misc")
# A channel a BIDS sidecar marks bad: kept in the index, used by nothing.
BAD_TYPE = "bad"

_EEG_PREFIX = re.compile(r"^EEG[\s:]+")
_REF_SUFFIX = re.compile(r"[-_](REF|LE|AR|AVG)$")
_FIRST_WORD = re.compile(r"[\s\-_.:]+")

# A label's first word, less trailing digits ("EKG1" -> "EKG", "STI101" -> "STI") -> type.
_TYPE_OF_WORD = {
    **dict.fromkeys(("EOG", "HEOG", "VEOG", "LOC", "ROC"), "eog"),
    **dict.fromkeys(("ECG", "EKG"), "ecg"),
    **dict.fromkeys(("EMG", "CHIN"), "emg"),
    **dict.fromkeys(("STATUS", "TRIGGER", "TRIG", "STI", "STIM", "PHOTIC", "MARKER", "EVENT"), "stim"),
    **dict.fromkeys(
        ("RESP", "TEMP", "SPO", "SAO", "PULSE", "HR", "PLETH", "IBI", "BURSTS", "SUPPR", "DC"),
        "misc",
    ),
}  # fmt: skip


@functools.lru_cache(maxsize=8192)
def canonical_name(label: str) -> str:
    """A channel label as an electrode name: "EEG FP1-REF" -> "FP1", "Fc5." -> "FC5".

    Other labels stay recognisable ("EKG1-REF" -> "EKG1", "PHOTIC-REF" -> "PHOTIC", "IBI").
    """
    name = label.strip().upper().rstrip(".").rstrip()
    name = _EEG_PREFIX.sub("", name)
    return _REF_SUFFIX.sub("", name).rstrip(".")


def alias(name: str) -> str | None:
    """The other system's name of a 10-20/10-10 electrode ("T3" <-> "T7"), or None."""
    return _ALIASES.get(canonical_name(name))


@functools.lru_cache(maxsize=8192)
def channel_type(label: str) -> str:
    """mne's type for a channel label: eeg, eog, ecg, emg, stim or misc (see the module doc)."""
    upper = label.strip().upper()
    # "EEG ROC-REF" is TUH's eye channel and "EEG EKG1-REF" its ECG: the word after "EEG " tells.
    words = [w for w in _FIRST_WORD.split(_EEG_PREFIX.sub("", upper)) if w]
    if not words:
        return "eeg"
    return _TYPE_OF_WORD.get(words[0].rstrip("0123456789"), "eeg")


@functools.lru_cache(maxsize=4096)
def channel_types(labels: tuple[str, ...]) -> tuple[str, ...]:
    """`channel_type` of each label; a corpus has few distinct channel lists, each typed once."""
    return tuple(channel_type(label) for label in labels)


def locate(
    labels: Sequence[str],
    wanted: Iterable[str],
    types: Sequence[str] | None = None,
    wanted_types: Sequence[str] | None = None,
) -> list[int | None]:
    """Where each wanted electrode sits among `labels` (None: absent), by canonical name or alias.

    A channel fills a wanted name only when their types agree (`types` as stored, else from
    the labels): an electrode takes eeg channels only, a wanted "EOG horizontal" eog ones, and
    `BAD_TYPE` channels fill nothing; `wanted_types` gives the wanted channels' types where
    their names do not tell (channels taken from a recording: MEG `mag`/`grad`). Two channels
    that stand for one wanted electrode (`T3` and `T7`, `FP1-REF` and `FP1-LE`) raise
    `BrainpipeError` naming both: picking one silently would mix recordings' electrodes.
    """
    if types is None:
        types = channel_types(tuple(labels))
    elif len(types) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(types)} channel types")
    else:  # "eeg" is what EDF readers (and indexes written before) give every channel
        types = [
            channel_type(lab) if t == "eeg" else t for lab, t in zip(labels, types, strict=True)
        ]
    by_name: dict[tuple[str, str], list[int]] = {}
    for i, (label, kind) in enumerate(zip(labels, types, strict=True)):
        by_name.setdefault((kind, canonical_name(label)), []).append(i)
    out: list[int | None] = []
    wanted = list(wanted)
    kinds = [
        channel_type(w) if wanted_types is None or wanted_types[i] == "eeg" else wanted_types[i]
        for i, w in enumerate(wanted)
    ]
    for w, kind in zip(wanted, kinds, strict=True):
        name = canonical_name(w)
        hits = by_name.get((kind, name), []) + by_name.get((kind, _ALIASES.get(name, "")), [])
        if len(hits) > 1:
            raise BrainpipeError(
                f"channels {' and '.join(repr(labels[i]) for i in hits)} both stand for {name}; "
                f"keep one (or drop the other from the recording) so the montage is unambiguous"
            )
        out.append(hits[0] if hits else None)
    return out


def coverage_line(
    channel_lists: Iterable[Sequence[str]], wanted: Sequence[str], what: str = "10-20"
) -> str:
    """How many recordings hold every wanted electrode, some, none, or name one twice."""
    counts = dict.fromkeys(("full", "partial", "none", "ambiguous"), 0)
    seen: dict[tuple[str, ...], str] = {}
    for labels in channel_lists:
        key = tuple(labels)
        verdict = seen.get(key)
        if verdict is None:
            try:
                got = locate(key, wanted)
                found = sum(g is not None for g in got)
                verdict = "full" if found == len(got) else ("partial" if found else "none")
            except BrainpipeError:
                verdict = "ambiguous"
            seen[key] = verdict
        counts[verdict] += 1
    line = (
        f"EEG channels ({what}): {counts['full']} recordings with all {len(wanted)}, "
        f"{counts['partial']} with some, {counts['none']} with none"
    )
    if counts["ambiguous"]:
        line += f", {counts['ambiguous']} naming one electrode twice (e.g. T3 and T7)"
    return line


def mark_bad(labels: Sequence[str], types: Sequence[str], bad: Iterable[str]) -> tuple[str, ...]:
    """`types` with the channels whose label is in `bad` set to `BAD_TYPE` (fills nothing)."""
    bad = set(bad)
    if not bad:
        return tuple(types)
    return tuple(BAD_TYPE if lab in bad else t for lab, t in zip(labels, types, strict=True))
