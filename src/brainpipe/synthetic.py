"""Seeded synthetic corpora in TUH's layouts (TUAB, TUSZ v2) and a small MEG tree.

There is no real TUH data in tests, benchmarks or the demo, so this module writes trees that look
like TUH's on disk (paths, EDF headers, channel labels, annotation files) and carry a signal a
small CNN can learn. Everything derives from the seed; nothing depends on the wall clock.

Writes under `out/`:

    tuab  edf/{train,eval}/{normal,abnormal}/01_tcp_ar/<subject>_s<session>_t<token>.edf
    tusz  edf/{train,dev,eval}/<subject>/s<session>_<year>/<montage>/<subject>_s<session>_t<token>.edf
          + <stem>.csv_bi (TERM rows: seiz/bckg) and <stem>.csv (TCP channel rows: seizure type/bckg)
    meg   meg/sub-<NN>/ses-<NN>/sub-<NN>_ses-<NN>_task-rest_meg.fif (306 Neuromag MEG + EEG/EOG/ECG/STI)
    synthetic_corpus.json   what was written; `"complete": true` once every file is in place

Signals (EEG in uV; sfreq 250/256/400/512 Hz; 1 s data records; int16 with TUH's physical ranges).
Spectral weights below are multiples of the 1/f power in 0.5-40 Hz, so they survive z-scoring:

- background (every EEG recording): 1/f^a noise (a in 0.9-1.3, 12-30 uV), a posterior alpha
  rhythm (9-11.5 Hz, weight 1.5-4), theta 0-0.25, frontal-central beta 0.05-0.2; channels mixed
  by scalp distance and all carrying the reference electrode's own noise; eye blinks (40-120 uV,
  one per 3-10 s) on FP1/FP2 and weaker on F7/F8/F3/F4/FZ; 0.25-6 uV of 60 Hz mains on every
  channel that is not flat (PHOTIC, IBI, BURSTS, SUPPR are zeros).
- TUAB abnormal, for the whole recording: polymorphic delta (a broad peak at 1.8-3.5 Hz, s.d.
  0.9 Hz, weight 4-8, on every channel, up to +-50% more on one side), theta 0.5-1.5,
  and alpha weakened to 0.05-0.3 and slowed to 7-8.5 Hz. After per-channel z-scoring the
  relative 1-4 Hz power of a 10 s window is ~0.44-0.78 (abnormal) against ~0.17-0.36 (normal).
- TUSZ seizures, only inside the annotated intervals: a rhythmic discharge whose frequency falls
  from 5-6.5 Hz to 2.8-3.8 Hz, with harmonics (sharp waves), growing in amplitude to 4-8x the
  channel's background RMS at the focus and spreading over most channels with an onset lag of up
  to 2.5 s per head radius. About half the recordings have 1-3 seizures of 10-60 s (shorter when
  the recording is too short to hold them); 30% of TUSZ backgrounds are mildly slowed.

Same seed, same bytes for EDF, CSV and the marker. FIF files embed MNE's machine id (from the MAC
address) in their file ids, so they are byte-identical on one host and equal in data elsewhere.

    python scripts/make_synthetic_corpus.py --layout tuab --out /tmp/tuab --n-subjects 20 --seed 0

    from brainpipe.synthetic import make_corpus
    summary = make_corpus("/tmp/tusz", "tusz", n_subjects=12, seed=1)
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import scipy.fft

from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output
from brainpipe.preprocess import TCP_PAIRS

MARKER = "synthetic_corpus.json"
_MARKER_FORMAT = 1
_LAYOUTS = ("tuab", "tusz", "meg")

# TUH's usual signal order in `01_tcp_ar` files; a recording keeps a subset of the optional ones.
_TUH_ORDER = (
    "FP1", "FP2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2", "F7", "F8", "T3", "T4", "T5",
    "T6", "A1", "A2", "FZ", "CZ", "PZ", "ROC", "LOC", "EKG1", "EMG", "26", "27", "28", "29", "30",
    "T1", "T2", "PHOTIC", "IBI", "BURSTS", "SUPPR",
)  # fmt: skip
_OPTIONAL = (
    "ROC",
    "LOC",
    "EKG1",
    "EMG",
    "26",
    "27",
    "28",
    "29",
    "30",
    "T1",
    "T2",
    "PHOTIC",
    "IBI",
    "BURSTS",
    "SUPPR",
)
# TUH writes these without the "EEG " prefix.
_NO_EEG_PREFIX = ("EMG", "PHOTIC", "IBI", "BURSTS", "SUPPR")
_REFERENCE = {"01_tcp_ar": "REF", "02_tcp_le": "LE", "03_tcp_ar_a": "REF"}

# Scalp positions (x: left to right, y: back to front, head radius 1) for spatial mixing,
# alpha's posterior weighting, blinks and seizure spread.
_POS = {
    "FP1": (-0.31, 0.95), "FP2": (0.31, 0.95), "F7": (-0.81, 0.59), "F3": (-0.4, 0.55),
    "FZ": (0.0, 0.5), "F4": (0.4, 0.55), "F8": (0.81, 0.59), "T3": (-1.0, 0.0), "C3": (-0.5, 0.0),
    "CZ": (0.0, 0.0), "C4": (0.5, 0.0), "T4": (1.0, 0.0), "T5": (-0.81, -0.59),
    "P3": (-0.4, -0.55), "PZ": (0.0, -0.5), "P4": (0.4, -0.55), "T6": (0.81, -0.59),
    "O1": (-0.31, -0.95), "O2": (0.31, -0.95), "A1": (-1.15, -0.15), "A2": (1.15, -0.15),
    "T1": (-0.95, 0.3), "T2": (0.95, 0.3), "LOC": (-0.45, 1.1), "ROC": (0.45, 1.1),
}  # fmt: skip
_BLINK_WEIGHT = {
    "FP1": 1.0,
    "FP2": 1.0,
    "LOC": 0.8,
    "ROC": 0.8,
    "F7": 0.35,
    "F8": 0.35,
    "F3": 0.25,
    "F4": 0.25,
    "FZ": 0.2,
}
_FOCI = (
    "FP1",
    "FP2",
    "F7",
    "F3",
    "FZ",
    "F4",
    "F8",
    "T3",
    "C3",
    "CZ",
    "C4",
    "T4",
    "T5",
    "P3",
    "PZ",
    "P4",
    "T6",
    "O1",
    "O2",
)


_SFREQS = (250, 256, 400, 512)
_SFREQ_P = (0.5, 0.3, 0.1, 0.1)
_PHYSICAL_MAX = (4999.84, 5482.4, 9999.69)  # uV, symmetric, against digital +-32767 as TUH writes
_DIGITAL_MAX = 32767
_PREFILTER = "HP:0.000 Hz LP:0.0 Hz N:0.0"
_MONTAGES = ("01_tcp_ar", "02_tcp_le", "03_tcp_ar_a")
_MONTAGE_P = (0.6, 0.25, 0.15)
_SEIZURE_KINDS = ("fnsz", "gnsz", "cpsz", "tcsz")
_SEIZURE_KIND_P = (0.5, 0.25, 0.2, 0.05)
_GENERALIZED = ("gnsz", "tcsz")
_EDF_PLUS_FRACTION = 0.25
_SEIZURE_FRACTION = 0.5
_MAINS_HZ = 60.0
_CSV_VARIANT_P = (0.55, 0.15, 0.15, 0.15)  # TUSZ's usual comment block, then three variations


@dataclass(frozen=True)
class Seizure:
    """One seizure: the TERM interval in seconds and its TUSZ type, plus how it was drawn."""

    onset_s: float
    offset_s: float
    kind: str
    focus: str  # the 10-20 channel it starts under
    spread: float  # s.d. of the gain over the scalp (head radius 1); large for generalized kinds
    lag_s: float  # onset delay per unit of distance from the focus
    gain: float  # peak amplitude at the focus, in multiples of that channel's background RMS
    f_start: float  # Hz at onset
    f_end: float  # Hz at offset


@dataclass(frozen=True)
class SyntheticRecording:
    """One generated recording, as the index should later find it (one row of the truth table)."""

    path: str  # relative to the corpus root, POSIX separators
    subject: str
    session: int
    token: int
    split: str  # tuab: train/eval; tusz: train/dev/eval; meg: ""
    label: str  # tuab: normal/abnormal; tusz: seiz/bckg (any seizure or none); meg: ""
    montage: str  # TUH montage directory; "" for meg
    sfreq: float
    duration_s: float
    channels: tuple[str, ...]  # signal labels in file order, annotation signal excluded
    start: datetime.datetime
    edf_plus: bool
    seizures: tuple[Seizure, ...] = ()
    sex: str = "X"
    birth_year: int = 1970
    physical_max: float = 4999.84
    slowing: float = 0.0  # 0: normal background, 1: TUAB abnormal, in between: milder slowing


@dataclass(frozen=True)
class CorpusSummary:
    root: Path
    layout: str
    seed: int
    recordings: tuple[SyntheticRecording, ...]
    annotation_files: tuple[str, ...]  # relative paths of TUSZ .csv_bi/.csv files
    n_bytes: int  # all files written, marker excluded

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(r.path for r in self.recordings)

    @property
    def counts(self) -> dict[tuple[str, str], int]:
        """Recordings per (split, label)."""
        return dict(sorted(Counter((r.split, r.label) for r in self.recordings).items()))

    @property
    def n_subjects(self) -> int:
        return len({r.subject for r in self.recordings})

    @property
    def n_seizures(self) -> int:
        return sum(len(r.seizures) for r in self.recordings)

    @property
    def total_seconds(self) -> float:
        return float(sum(r.duration_s for r in self.recordings))


def make_corpus(
    out: str | Path,
    layout: Literal["tuab", "tusz", "meg"],
    *,
    n_subjects: int = 10,
    seed: int = 0,
    duration_s: tuple[float, float] | None = None,
    sessions_per_subject: tuple[int, int] = (1, 2),
    n_recordings: int | None = None,
    overwrite: bool = False,
) -> CorpusSummary:
    """Write a synthetic corpus under `out` and return what was written.

    duration_s: (min, max) seconds per recording, drawn uniformly and rounded to whole seconds
        (TUH's 1 s data records); default (60, 180) for tuab/tusz and (10, 30) for meg.
    n_recordings: exact number of recordings (each subject gets at least one); default: each
        subject gets `sessions_per_subject` sessions of 1 (tuab, meg) or 1-3 (tusz) recordings.
    overwrite: write into a non-empty directory that is not a previous synthetic corpus. A previous
        synthetic corpus is always replaced (only the files its marker lists are removed).
    """
    out = Path(out)
    if layout not in _LAYOUTS:
        raise BrainpipeError(
            f"synthetic layout {layout!r} is not valid; choose one of {', '.join(_LAYOUTS)}"
        )
    if duration_s is None:
        duration_s = (10.0, 30.0) if layout == "meg" else (60.0, 180.0)
    _check_args(seed, n_subjects, duration_s, sessions_per_subject, n_recordings)

    rng = np.random.default_rng([seed, _LAYOUTS.index(layout)])
    if layout == "meg":
        recordings = _plan_meg(rng, n_subjects, duration_s, sessions_per_subject, n_recordings)
    else:
        recordings = _plan_eeg(
            rng, layout, n_subjects, duration_s, sessions_per_subject, n_recordings
        )
    annotations = tuple(
        str(PurePosixPath(r.path).with_suffix(s))
        for r in recordings
        for s in (".csv_bi", ".csv")
        if layout == "tusz"
    )

    _prepare_out(out, overwrite)
    files = [r.path for r in recordings] + list(annotations)
    # The marker goes first (unfinished) so a crashed run is still recognised, and cleaned, as ours.
    _write_marker(out, layout, seed, files, complete=False)
    n_bytes = 0
    for i, rec in enumerate(recordings):
        rec_rng = np.random.default_rng([seed, _LAYOUTS.index(layout), i, 1])
        if layout == "meg":
            n_bytes += _write_fif(out / rec.path, rec, rec_rng)
            continue
        n_bytes += _write_edf(out / rec.path, rec, _eeg_signals(rec, rec_rng))
        if layout == "tusz":
            variant = int(rec_rng.choice(len(_CSV_VARIANT_P), p=_CSV_VARIANT_P))
            n_bytes += _write_annotations(out / rec.path, rec, variant)
    _write_marker(out, layout, seed, files, complete=True)
    return CorpusSummary(out, layout, seed, tuple(recordings), annotations, n_bytes)


def _check_args(
    seed: int,
    n_subjects: int,
    duration_s: tuple[float, float],
    sessions_per_subject: tuple[int, int],
    n_recordings: int | None,
) -> None:
    if seed < 0:
        raise BrainpipeError(f"seed={seed} must be >= 0")
    if n_subjects < 1:
        raise BrainpipeError(f"n_subjects={n_subjects} must be >= 1")
    lo, hi = duration_s
    if not (1 <= lo <= hi):
        raise BrainpipeError(
            f"duration_s={duration_s} must be (min, max) seconds with 1 <= min <= max"
        )
    s_lo, s_hi = sessions_per_subject
    if not (1 <= s_lo <= s_hi):
        raise BrainpipeError(
            f"sessions_per_subject={sessions_per_subject} must be (min, max) with 1 <= min <= max"
        )
    if n_recordings is not None and n_recordings < n_subjects:
        raise BrainpipeError(
            f"n_recordings={n_recordings} is below n_subjects={n_subjects}; every subject has at least one recording"
        )


# ---------------------------------------------------------------------------------------------
# Planning: who, where, when, which channels and seizures. Everything drawn from one generator in
# a fixed order, so the plan (and with it every path) depends only on the seed and the arguments.


def _subject_ids(rng: np.random.Generator, n: int) -> list[str]:
    # TUH numbers subjects in base 26 with letters; gaps because a corpus is a subset of TUEG.
    codes = np.cumsum(rng.integers(1, 30, n))
    ids = []
    for code in codes:
        letters = []
        for _ in range(8):
            code, r = divmod(int(code), 26)
            letters.append(chr(ord("a") + r))
        ids.append("".join(reversed(letters)))
    return ids


def _recordings_per_session(
    rng: np.random.Generator,
    n_subjects: int,
    sessions: tuple[int, int],
    tokens: tuple[int, int],
    n_recordings: int | None,
) -> list[np.ndarray]:
    """For each subject, the number of recordings in each of its sessions."""
    if n_recordings is None:
        return [
            rng.integers(tokens[0], tokens[1] + 1, rng.integers(sessions[0], sessions[1] + 1))
            for _ in range(n_subjects)
        ]
    per_subject = 1 + rng.multinomial(
        n_recordings - n_subjects, np.full(n_subjects, 1 / n_subjects)
    )
    result = []
    for count in per_subject:
        n_sessions = int(min(count, rng.integers(sessions[0], sessions[1] + 1)))
        result.append(1 + rng.multinomial(count - n_sessions, np.full(n_sessions, 1 / n_sessions)))
    return result


def _assign(
    rng: np.random.Generator, members: np.ndarray, out: np.ndarray, fractions: dict[str, float]
) -> None:
    """Give each non-first key of `fractions` a share of `members` (at least one when there are
    enough members to leave one for the first key); the first key keeps the rest."""
    members = rng.permutation(members)
    keys = list(fractions)
    out[members] = keys[0]
    start = 0
    for key in keys[1:]:
        n = round(fractions[key] * len(members))
        if len(members) >= len(keys):
            n = max(1, n)
        n = min(n, len(members) - start - 1)
        if n > 0:
            out[members[start : start + n]] = key
            start += n


def _plan_eeg(
    rng: np.random.Generator,
    layout: str,
    n_subjects: int,
    duration_s: tuple[float, float],
    sessions_per_subject: tuple[int, int],
    n_recordings: int | None,
) -> list[SyntheticRecording]:
    subjects = _subject_ids(rng, n_subjects)
    labels = np.full(n_subjects, "", dtype=object)
    splits = np.full(n_subjects, "", dtype=object)
    if layout == "tuab":
        labels[:] = "normal"
        labels[rng.permutation(n_subjects)[: n_subjects // 2]] = "abnormal"
        for lab in ("normal", "abnormal"):
            _assign(rng, np.flatnonzero(labels == lab), splits, {"train": 0.8, "eval": 0.2})
    else:
        _assign(rng, np.arange(n_subjects), splits, {"train": 0.7, "dev": 0.15, "eval": 0.15})
    tokens = (1, 1) if layout == "tuab" else (1, 3)
    layout_sessions = _recordings_per_session(
        rng, n_subjects, sessions_per_subject, tokens, n_recordings
    )

    recordings = []
    for subject, label, split, per_session in zip(
        subjects, labels, splits, layout_sessions, strict=True
    ):
        sex = str(rng.choice(["F", "M"]))
        first_session = 1 + int(rng.poisson(0.5))
        day = datetime.date(2002, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 15 * 365)))
        birth_year = day.year - int(rng.integers(18, 86))
        for s, n_tokens in enumerate(per_session):
            session = first_session + s
            montage = "01_tcp_ar" if layout == "tuab" else str(rng.choice(_MONTAGES, p=_MONTAGE_P))
            start = datetime.datetime.combine(
                day,
                datetime.time(
                    int(rng.integers(7, 18)), int(rng.integers(0, 60)), int(rng.integers(0, 60))
                ),
            )
            for token in range(int(n_tokens)):
                duration = float(rng.integers(round(duration_s[0]), round(duration_s[1]) + 1))
                stem = f"{subject}_s{session:03d}_t{token:03d}"
                if layout == "tuab":
                    path = f"edf/{split}/{label}/{montage}/{stem}.edf"
                    slowing = 1.0 if label == "abnormal" else 0.0
                else:
                    path = f"edf/{split}/{subject}/s{session:03d}_{start.year}/{montage}/{stem}.edf"
                    # TUSZ patients' backgrounds vary; some are slowed (but less than TUAB abnormal).
                    slowing = 0.3 if rng.random() < 0.3 else 0.0
                recordings.append(
                    SyntheticRecording(
                        path=path, subject=subject, session=session, token=token, split=split, label=label,
                        montage=montage, sfreq=float(rng.choice(_SFREQS, p=_SFREQ_P)), duration_s=duration,
                        channels=_pick_channels(rng, montage), start=start, edf_plus=bool(rng.random() < _EDF_PLUS_FRACTION),
                        sex=sex, birth_year=birth_year, physical_max=float(rng.choice(_PHYSICAL_MAX)), slowing=slowing,
                    )
                )  # fmt: skip
                start += datetime.timedelta(seconds=duration + int(rng.integers(5, 300)))
            day += datetime.timedelta(days=int(rng.integers(20, 900)))

    if layout == "tusz":
        recordings = _plan_seizures(rng, recordings, guarantee=n_subjects >= 6)
    return recordings


def _pick_channels(rng: np.random.Generator, montage: str) -> tuple[str, ...]:
    ref = _REFERENCE[montage]
    # TUH's `03_tcp_ar_a` recordings are the ones without ear electrodes.
    required = set(_FOCI) | (set() if montage == "03_tcp_ar_a" else {"A1", "A2"})
    n_optional = int(rng.integers(24 - len(required), 36 - len(required) + 1))
    optional = set(rng.choice(_OPTIONAL, size=min(n_optional, len(_OPTIONAL)), replace=False))
    names = [n for n in _TUH_ORDER if n in required or n in optional]
    return tuple(_label(n, ref) for n in names)


def _label(name: str, ref: str) -> str:
    if name in ("IBI", "BURSTS", "SUPPR"):
        return name
    if name in _NO_EEG_PREFIX:
        return f"{name}-{ref}"
    return f"EEG {name}-{ref}"


def _electrode(label: str) -> str:
    """`EEG FP1-REF` -> `FP1`; `PHOTIC-REF` -> `PHOTIC`; `IBI` -> `IBI`."""
    return label.removeprefix("EEG ").rsplit("-", 1)[0]


def _plan_seizures(
    rng: np.random.Generator, recordings: list[SyntheticRecording], guarantee: bool
) -> list[SyntheticRecording]:
    has = rng.random(len(recordings)) < _SEIZURE_FRACTION
    if guarantee:
        for split in ("train", "dev", "eval"):
            idx = [i for i, r in enumerate(recordings) if r.split == split]
            if idx and not has[idx].any():
                has[rng.choice(idx)] = True
    result = []
    for rec, yes in zip(recordings, has, strict=True):
        seizures = _draw_seizures(rng, rec.duration_s) if yes else ()
        result.append(replace(rec, seizures=seizures, label="seiz" if seizures else "bckg"))
    return result


def _draw_seizures(rng: np.random.Generator, duration: float) -> tuple[Seizure, ...]:
    k = int(rng.choice([1, 2, 3], p=(0.5, 0.3, 0.2)))
    margin, min_gap = min(5.0, 0.1 * duration), 2.0
    room = duration - 2 * margin - (k - 1) * min_gap
    while k > 1 and room / k < 10:
        k -= 1
        room = duration - 2 * margin - (k - 1) * min_gap
    cap = 0.8 * room / k  # leave some background between and around seizures
    lengths = rng.uniform(min(10.0, cap), min(60.0, cap), k)
    gaps = (room - lengths.sum()) * rng.dirichlet(np.ones(k + 1))
    seizures = []
    t = margin + gaps[0]
    for length, gap in zip(lengths, gaps[1:], strict=True):
        kind = str(rng.choice(_SEIZURE_KINDS, p=_SEIZURE_KIND_P))
        generalized = kind in _GENERALIZED
        onset, offset = round(float(t), 4), round(float(t + length), 4)
        seizures.append(
            Seizure(
                onset_s=onset, offset_s=offset, kind=kind, focus=str(rng.choice(_FOCI)),
                spread=float(rng.uniform(3.0, 5.0) if generalized else rng.uniform(1.0, 1.5)),
                lag_s=0.0 if generalized else float(rng.uniform(0.5, 2.5)), gain=float(rng.uniform(4.0, 8.0)),
                f_start=float(rng.uniform(5.0, 6.5)), f_end=float(rng.uniform(2.8, 3.8)),
            )
        )  # fmt: skip
        t += length + min_gap + gap
    return tuple(seizures)


def _seizure_field(seizure: Seizure, electrodes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Gain (0-1) and onset delay (s) of `seizure` at each electrode (0 where it has no position)."""
    fx, fy = _POS[seizure.focus]
    gain, delay = np.zeros(len(electrodes)), np.zeros(len(electrodes))
    for i, e in enumerate(electrodes):
        if e in _POS:
            d = math.hypot(_POS[e][0] - fx, _POS[e][1] - fy)
            gain[i] = math.exp(-0.5 * (d / seizure.spread) ** 2)
            # capped so every channel joins well before the end
            delay[i] = min(seizure.lag_s * d, 0.3 * (seizure.offset_s - seizure.onset_s))
    return gain, delay


def _plan_meg(
    rng: np.random.Generator,
    n_subjects: int,
    duration_s: tuple[float, float],
    sessions_per_subject: tuple[int, int],
    n_recordings: int | None,
) -> list[SyntheticRecording]:
    per_subject = _recordings_per_session(
        rng, n_subjects, sessions_per_subject, (1, 1), n_recordings
    )
    channels = _meg_channels()
    recordings = []
    for s, per_session in enumerate(per_subject, start=1):
        day = datetime.date(2015, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 5 * 365)))
        birth_year = day.year - int(rng.integers(18, 70))
        sex = str(rng.choice(["F", "M"]))
        # One recording per session in BIDS naming; extra "tokens" become extra sessions.
        for ses in range(1, int(per_session.sum()) + 1):
            start = datetime.datetime.combine(
                day, datetime.time(int(rng.integers(8, 18)), int(rng.integers(0, 60)))
            )
            name = f"sub-{s:02d}_ses-{ses:02d}_task-rest_meg.fif"
            recordings.append(
                SyntheticRecording(
                    path=f"meg/sub-{s:02d}/ses-{ses:02d}/{name}", subject=f"sub-{s:02d}", session=ses, token=0,
                    split="", label="", montage="", sfreq=250.0,
                    duration_s=float(rng.integers(round(duration_s[0]), round(duration_s[1]) + 1)),
                    channels=channels, start=start, edf_plus=False, sex=sex, birth_year=birth_year,
                )
            )  # fmt: skip
            day += datetime.timedelta(days=int(rng.integers(1, 60)))
    return recordings


# ---------------------------------------------------------------------------------------------
# Signals. Stationary parts are drawn in the frequency domain (one irfft per recording); events
# (blinks, heart beats, seizures) are added in the time domain. All vectorized over samples.


def _bump(freqs: np.ndarray, fc: float, sd: float) -> np.ndarray:
    """A Gaussian spectral peak scaled to unit sum over 0.5-40 Hz."""
    g = np.exp(-0.5 * ((freqs - fc) / sd) ** 2)
    return g / g[(freqs >= 0.5) & (freqs <= 40)].sum()


def _background_psd(
    rng: np.random.Generator, freqs: np.ndarray, xy: np.ndarray, slowing: float
) -> np.ndarray:
    """(channels, freqs) power spectra; the 1/f part sums to 1 over 0.5-40 Hz so the other
    components' weights read as multiples of it."""
    # 1/f^a with a roll-off below 0.3 Hz so that no channel drifts off the physical range.
    pink = np.maximum(freqs, 0.5) ** -rng.uniform(0.9, 1.3) * freqs**2 / (freqs**2 + 0.3**2)
    pink /= pink[(freqs >= 0.5) & (freqs <= 40)].sum()
    x, y = xy[:, 0], xy[:, 1]
    posterior = 1 / (1 + np.exp(6 * (y + 0.25)))
    n = len(xy)
    if slowing >= 1:
        alpha_hz, alpha_w = rng.uniform(7.0, 8.5), rng.uniform(0.05, 0.3)
        theta_w, delta_w = rng.uniform(0.5, 1.5), rng.uniform(4.0, 8.0)
    else:
        alpha_hz, alpha_w = rng.uniform(9.0, 11.5), rng.uniform(1.5, 4.0)
        theta_w = rng.uniform(0.0, 0.25) + 0.5 * slowing
        delta_w = rng.uniform(0.0, 0.1) + 2.0 * slowing
    delta = _bump(freqs, rng.uniform(1.8, 3.5), 0.9)
    # polymorphic delta is often asymmetric: one hemisphere up to twice the other
    side = 1 + rng.uniform(-0.5, 0.5) * np.tanh(2 * x)
    beta_w = rng.uniform(0.05, 0.2)
    jitter = rng.uniform(0.8, 1.2, (4, n, 1))
    return (
        pink
        + alpha_w * posterior[:, None] * jitter[0] * _bump(freqs, alpha_hz, 0.7)
        + theta_w * jitter[1] * _bump(freqs, rng.uniform(5.0, 7.0), 1.0)
        + delta_w * side[:, None] * jitter[2] * delta
        + beta_w * (1 - posterior[:, None]) * jitter[3] * _bump(freqs, rng.uniform(16.0, 24.0), 3.0)
    )


def _colored(rng: np.random.Generator, psd: np.ndarray, n: int, rms: float) -> np.ndarray:
    """Gaussian noise with spectrum `psd` (rows), float32; a row whose psd sums to 1 has RMS `rms`
    (so a `_background_psd` row has about `rms` of 1/f noise plus its peaks on top)."""
    z = rng.standard_normal((*psd.shape, 2), dtype=np.float32).view(np.complex64)[..., 0]
    z *= np.sqrt(psd, dtype=np.float32) * np.float32(rms * n / 2)
    z[..., 0] = 0
    return scipy.fft.irfft(z, n=n, axis=-1)


def _place(n: int, starts: np.ndarray, kernel: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """A length-`n` trace with `kernel * amp` added at each start (starts must leave room for it)."""
    out = np.zeros(n, np.float32)
    idx = starts[:, None] + np.arange(len(kernel))
    np.add.at(out, idx.ravel(), (amps[:, None] * kernel).ravel().astype(np.float32))
    return out


def _blinks(rng: np.random.Generator, n: int, sfreq: float) -> np.ndarray:
    klen = int(rng.uniform(0.3, 0.45) * sfreq)
    kernel = np.sin(np.pi * np.arange(klen) / klen) ** 2
    count = rng.poisson(n / sfreq / rng.uniform(3.0, 10.0))
    return _place(n, rng.integers(0, n - klen, count), kernel, rng.uniform(40, 120, count))


def _ecg(rng: np.random.Generator, n: int, sfreq: float) -> np.ndarray:
    t = np.arange(int(0.6 * sfreq)) / sfreq
    kernel = np.exp(-0.5 * ((t - 0.1) / 0.012) ** 2) - 0.15 * np.exp(
        -0.5 * ((t - 0.125) / 0.01) ** 2
    )
    kernel += 0.25 * np.exp(-0.5 * ((t - 0.35) / 0.045) ** 2)
    rr = 60 / rng.uniform(55, 95)
    beats = np.cumsum(rr * (1 + 0.04 * rng.standard_normal(int(n / sfreq / rr) + 2)))
    starts = (beats * sfreq).astype(np.int64) - int(0.1 * sfreq)
    starts = starts[(starts >= 0) & (starts < n - len(kernel))]
    return _place(n, starts, kernel, np.full(len(starts), rng.uniform(300, 1000)))


def _mains(n: int, sfreq: float) -> np.ndarray:
    """(2, n) float32: sin and cos of 60 Hz; any amplitude and phase is a mix of the two rows."""
    w = (2 * np.pi * _MAINS_HZ / sfreq) * np.arange(n)
    return np.stack([np.sin(w), np.cos(w)]).astype(np.float32)


def _mains_weights(rng: np.random.Generator, amp: np.ndarray) -> np.ndarray:
    """(channels, 2) weights on `_mains` rows for amplitudes `amp` and random phases."""
    phase = rng.uniform(0, 2 * np.pi, len(amp))
    return np.stack([amp * np.cos(phase), amp * np.sin(phase)], axis=1)


def _seizure_wave(
    seizure: Seizure, gain: np.ndarray, delay: np.ndarray, rms: np.ndarray, sfreq: float, n: int
) -> tuple[slice, np.ndarray]:
    """(slice, (channels, samples) float32) to add for one seizure."""
    i0, i1 = int(math.ceil(seizure.onset_s * sfreq)), min(n, int(seizure.offset_s * sfreq))
    t = np.arange(i0, i1) / sfreq - seizure.onset_s
    length = seizure.offset_s - seizure.onset_s
    freq = seizure.f_start + (seizure.f_end - seizure.f_start) * t / length
    phase = 2 * np.pi * np.cumsum(freq) / sfreq
    # Three harmonics make sharp waves. A channel lagging by `delay` is the same wave shifted in
    # phase, so every channel is a mix of six rows (sin, cos of each harmonic): one matrix
    # product instead of channels x samples sines.
    harmonics = ((1, 1.0, 0.0), (2, 0.45, 0.6), (3, 0.2, 1.2))
    basis = np.concatenate(
        [[np.sin(h * phase + b), np.cos(h * phase + b)] for h, _, b in harmonics]
    )
    lag = 2 * np.pi * seizure.f_start * delay
    mix = np.concatenate(
        [np.stack([a * np.cos(h * lag), -a * np.sin(h * lag)], axis=1) for h, a, _ in harmonics],
        axis=1,
    )
    wave = mix.astype(np.float32) @ basis.astype(np.float32)
    # Each channel ramps up over ~3 s after its own onset, and the discharge grows as it slows.
    rise = np.clip((t[None, :] - delay[:, None]) / 3.0, 0, 1).astype(np.float32)
    fall = np.clip((length - t) / 1.5, 0, 1) * (0.6 + 0.4 * t / length)
    amp = seizure.gain * gain * rms
    wave *= rise
    wave *= amp[:, None].astype(np.float32) * fall[None, :].astype(np.float32)
    return slice(i0, i1), wave


def _eeg_signals(rec: SyntheticRecording, rng: np.random.Generator) -> np.ndarray:
    """(channels, samples) float32 in uV for an EEG recording planned in `rec`."""
    sfreq, n = rec.sfreq, int(rec.sfreq * rec.duration_s)
    electrodes = [_electrode(c) for c in rec.channels]
    scalp = np.flatnonzero([e in _POS for e in electrodes])
    xy = np.array([_POS[electrodes[i]] for i in scalp])
    freqs = scipy.fft.rfftfreq(n, 1 / sfreq)

    # Every channel is a weighted sum of a few source traces, so the whole recording is one
    # matrix product (weights: channels x sources) @ (sources: sources x samples).
    level = rng.uniform(12, 30)  # uV RMS of the 1/f part
    psd = _background_psd(rng, freqs, xy, rec.slowing)
    # Referential channels all carry the reference electrode's own activity (0.4x as strong).
    pink = np.maximum(freqs, 0.5) ** -1.3 * freqs**2 / (freqs**2 + 0.3**2)
    psd = np.vstack([psd, 0.16 * pink / pink.sum()])
    noisy = [i for i, e in enumerate(electrodes) if e == "EMG" or e.isdigit()]
    sources = np.concatenate(
        [
            _colored(rng, psd, n, level),
            _blinks(rng, n, sfreq)[None],
            _ecg(rng, n, sfreq)[None],
            _mains(n, sfreq),
            rng.standard_normal((len(noisy), n), dtype=np.float32),
        ]
    )
    k = len(scalp)
    blink, ecg, mains, white = k + 1, k + 2, k + 3, k + 5
    weights = np.zeros((len(electrodes), len(sources)), np.float32)

    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    mixing = np.exp(-d2 / (2 * 0.35**2))
    mixing /= np.sqrt((mixing**2).sum(1, keepdims=True))
    impedance = rng.uniform(0.85, 1.15, k)
    weights[scalp, :k] = impedance[:, None] * mixing
    weights[scalp, k] = impedance
    weights[scalp, blink] = impedance * [_BLINK_WEIGHT.get(electrodes[i], 0.0) for i in scalp]
    weights[[i for i, e in enumerate(electrodes) if e == "EKG1"], ecg] = 1.0
    for j, i in enumerate(noisy):  # EMG: broadband; unused amplifier inputs (26-30): low noise
        weights[i, white + j] = (
            rng.uniform(3, 15) if electrodes[i] == "EMG" else rng.uniform(0.5, 2)
        )
    # PHOTIC, IBI, BURSTS, SUPPR stay flat (no stimulator or detector running); all else hums.
    hums = np.array([e not in ("PHOTIC", "IBI", "BURSTS", "SUPPR") for e in electrodes])
    amp = rng.uniform(0.5, 4.0) * rng.uniform(0.5, 1.5, len(electrodes))
    weights[hums, mains : mains + 2] = _mains_weights(rng, amp[hums])
    # einsum, not `@`: BLAS would start threads for this small product, and on a busy machine
    # (2 cores shared) waiting for them made generation 1.2-4x slower than one thread (measured).
    data = np.einsum("cs,sn->cn", weights, sources)

    if rec.seizures:
        rms = data[scalp].std(axis=1)
        names = [electrodes[i] for i in scalp]
        for seizure in rec.seizures:
            gain, delay = _seizure_field(seizure, names)
            where, wave = _seizure_wave(seizure, gain, delay, rms, sfreq, n)
            data[scalp, where] += wave
    return data


# ---------------------------------------------------------------------------------------------
# Writers. Each file is written under a temporary name and renamed, so no half-written file ever
# has a final name; no per-file fsync: the marker, written last with fsync, is what says "done".


def _tmp(path: Path) -> Path:
    return path.with_name(f".tmp{os.getpid()}_{path.name}")


def _write_edf(path: Path, rec: SyntheticRecording, data: np.ndarray) -> int:
    """Write `data` (uV, float32; overwritten) as `path`; returns the file's size in bytes."""
    import edfio

    # Quantize in place in float32 and hand edfio int16 (`from_digital`): its float path wants a
    # float64 copy per signal. Measured about equal in time (~1 ms per 30 x 5000 file); less memory.
    data *= np.float32(_DIGITAL_MAX / rec.physical_max)
    np.rint(data, out=data)
    np.clip(data, -_DIGITAL_MAX, _DIGITAL_MAX, out=data)
    digital = data.astype(np.int16)
    signals = [
        edfio.EdfSignal.from_digital(
            digital[i], rec.sfreq, label=label, physical_dimension="uV",
            physical_range=(-rec.physical_max, rec.physical_max),
            digital_range=(-_DIGITAL_MAX, _DIGITAL_MAX), prefiltering=_PREFILTER,
        )
        for i, label in enumerate(rec.channels)
    ]  # fmt: skip
    age = rec.start.year - rec.birth_year
    patient = edfio.Patient(
        code=rec.subject,
        sex=rec.sex,
        birthdate=datetime.date(rec.birth_year, 1, 1),
        name=rec.subject,
        additional=(f"Age:{age}",),
    )
    recording = edfio.Recording(
        startdate=rec.start.date(),
        hospital_administration_code=f"{rec.subject}_s{rec.session:03d}_t{rec.token:03d}",
    )
    edf = edfio.Edf(
        signals,
        patient=patient,
        recording=recording,
        starttime=rec.start.time(),
        data_record_duration=1.0,
        # an empty list still makes edfio write EDF+C (reserved field and an annotations signal)
        annotations=[] if rec.edf_plus else None,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    edf.write(tmp)
    os.replace(tmp, path)
    return path.stat().st_size


def _csv_header(stem: str, duration: float, variant: int) -> str:
    """TUSZ v2's comment block; variants differ in spacing and extra lines as real files do."""
    lines = ["version = csv_v1.0.0", f"bname = {stem}", f"duration = {duration:.2f} secs"]
    montage = "montage_file = $NEDC_NFC/lib/nedc_eas_default_montage.txt"
    if variant == 1:
        lines.append("annotation_label_file = $NEDC_NFC/lib/nedc_eas_default_labels.txt")
    if variant == 2:
        return "".join(f"#{ln.replace(' = ', '=')}\n" for ln in [*lines, montage])
    if variant == 3:
        return "".join(f"#  {ln}\n" for ln in [*lines, montage]) + "#\n#\n"
    return "".join(f"# {ln}\n" for ln in [*lines, montage]) + "#\n"


def _segments(
    duration: float, events: list[tuple[float, float, str]]
) -> list[tuple[float, float, str]]:
    """`events` (sorted, disjoint) with bckg rows filling the rest of [0, duration]."""
    rows, t = [], 0.0
    for on, off, label in events:
        if on > t:
            rows.append((t, on, "bckg"))
        rows.append((on, off, label))
        t = off
    if t < duration:
        rows.append((t, duration, "bckg"))
    return rows


def _write_annotations(edf_path: Path, rec: SyntheticRecording, variant: int) -> int:
    stem = edf_path.stem
    header = (
        _csv_header(stem, rec.duration_s, variant)
        + "channel,start_time,stop_time,label,confidence\n"
    )

    def row(channel: str, on: float, off: float, label: str) -> str:
        return f"{channel},{on:.4f},{off:.4f},{label},1.0000\n"

    term = _segments(rec.duration_s, [(s.onset_s, s.offset_s, "seiz") for s in rec.seizures])
    csv_bi = header + "".join(row("TERM", *r) for r in term)

    pairs = [
        p for p in TCP_PAIRS if not (rec.montage == "03_tcp_ar_a" and ("A1" in p or "A2" in p))
    ]
    electrodes = sorted({e for p in pairs for e in p})
    fields = [_seizure_field(s, electrodes) for s in rec.seizures]
    per_channel = []
    for a, b in pairs:
        ia, ib = electrodes.index(a), electrodes.index(b)
        events = []
        for s, (gain, delay) in zip(rec.seizures, fields, strict=True):
            # A bipolar channel shows the discharge where either electrode carries enough of it.
            if max(gain[ia], gain[ib]) >= 0.35:
                events.append(
                    (round(s.onset_s + float(min(delay[ia], delay[ib])), 4), s.offset_s, s.kind)
                )
        per_channel += [row(f"{a}-{b}", *r) for r in _segments(rec.duration_s, events)]
    csv = header + "".join(per_channel)

    n = 0
    for suffix, text in ((".csv_bi", csv_bi), (".csv", csv)):
        target = edf_path.with_suffix(suffix)
        tmp = _tmp(target)
        tmp.write_text(text)
        os.replace(tmp, target)
        n += len(text)
    return n


def _meg_channels() -> tuple[str, ...]:
    import mne

    meg = tuple(mne.channels.read_layout("Vectorview-all").names)
    return (*meg, "EEG 001", "EEG 002", "EEG 003", "EEG 004", "EOG 061", "ECG 063", "STI 014")


def _write_fif(path: Path, rec: SyntheticRecording, rng: np.random.Generator) -> int:
    import mne

    layout = mne.channels.read_layout("Vectorview-all")
    sfreq, n = rec.sfreq, int(rec.sfreq * rec.duration_s)
    xy = layout.pos[:, :2] + layout.pos[:, 2:] / 2
    xy = 2 * (xy - xy.min(0)) / (xy.max(0) - xy.min(0)) - 1  # to the scalp's [-1, 1] frame
    freqs = scipy.fft.rfftfreq(n, 1 / sfreq)
    sources = _colored(rng, _background_psd(rng, freqs, xy, 0.0), n, 1.0)
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    mixing = np.exp(-d2 / (2 * 0.2**2)).astype(np.float32)
    mixing /= np.sqrt((mixing**2).sum(1, keepdims=True))
    meg = mixing @ sources + 0.3 * rng.standard_normal(sources.shape, dtype=np.float32)
    meg += _mains_weights(rng, rng.uniform(0.05, 0.15, len(meg))).astype(np.float32) @ _mains(
        n, sfreq
    )
    is_mag = np.array([name.endswith("1") for name in layout.names])
    # ~200 fT RMS on magnetometers, ~30 fT/cm on gradiometers
    meg *= np.where(is_mag, 200e-15, 30e-13)[:, None].astype(np.float32)

    eeg = _colored(
        rng,
        _background_psd(
            rng, freqs, np.array([[-0.3, 0.5], [0.3, 0.5], [-0.3, -0.8], [0.3, -0.8]]), 0.0
        ),
        n,
        15.0,
    )
    eog = _blinks(rng, n, sfreq) * 3 + rng.standard_normal(n, dtype=np.float32) * 5
    ecg = _ecg(rng, n, sfreq)
    stim = np.zeros(n, np.float32)  # 50 ms trigger pulses every 2-4 s, event codes 1-4
    onsets = np.arange(
        int(rng.uniform(1, 3) * sfreq), n - int(0.1 * sfreq), int(rng.uniform(2, 4) * sfreq)
    )
    stim[onsets[:, None] + np.arange(int(0.05 * sfreq))] = rng.integers(1, 5, (len(onsets), 1))
    data = np.concatenate([meg, eeg * 1e-6, eog[None] * 1e-6, ecg[None] * 1e-6, stim[None]]).astype(
        np.float64
    )

    ch_types = ["mag" if m else "grad" for m in is_mag] + ["eeg"] * 4 + ["eog", "ecg", "stim"]
    info = mne.create_info(list(rec.channels), sfreq, ch_types, verbose=False)
    info["line_freq"] = _MAINS_HZ
    info.set_meas_date(
        datetime.datetime.combine(rec.start.date(), rec.start.time(), datetime.timezone.utc)
    )
    raw = mne.io.RawArray(data, info, verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    raw.save(tmp, overwrite=True, verbose=False)
    os.replace(tmp, path)
    return path.stat().st_size


# ---------------------------------------------------------------------------------------------
# The output directory and its marker.


def _read_marker(out: Path) -> dict | None:
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("generator") != "brainpipe.synthetic":
        return None
    return marker


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BrainpipeError(
            f"{out}: exists and is not a directory; choose a directory path for the synthetic corpus"
        )
    if not out.is_dir() or not any(out.iterdir()):
        return
    previous = _read_marker(out)
    if previous is None:
        if overwrite:
            return
        raise BrainpipeError(
            f"{out}: directory is not empty and is not a synthetic corpus (no {MARKER}); "
            "choose an empty or new directory, or pass overwrite=True (--overwrite) to write into it anyway"
        )
    # Remove only what the previous run wrote, so a smaller corpus leaves no stale recordings.
    for rel in previous.get("files", []):
        parts = PurePosixPath(rel).parts
        if not parts or ".." in parts or PurePosixPath(rel).is_absolute():
            continue
        path = out.joinpath(*parts)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for parent in path.parents:
            if parent == out or out not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break  # not empty: something else lives there


def _write_marker(out: Path, layout: str, seed: int, files: list[str], complete: bool) -> None:
    marker = {
        "generator": "brainpipe.synthetic",
        "format": _MARKER_FORMAT,
        "layout": layout,
        "seed": seed,
        "complete": complete,
        "files": files,
    }
    with atomic_output(out / MARKER) as tmp:
        tmp.write_text(json.dumps(marker, indent=1) + "\n")
