"""What a synthetic corpus holds: the spec, and the plan of recordings drawn from it.

`CorpusSpec` is the one description of a corpus (layout, subjects, seed, durations, ...);
`plan_recordings(spec)` turns it into `SyntheticRecording`s: subjects, sessions, splits, labels,
channels, start times and TUSZ seizures. Everything is drawn from one generator in a fixed order,
so the plan (and with it every path) depends only on the spec. No signal and no file here.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from brainpipe.errors import BrainpipeError
from brainpipe.preprocess import TCP_PAIRS

LAYOUTS = ("tuab", "tusz", "meg", "tuev")  # appended: a layout's index seeds its corpus

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
POS = {
    "FP1": (-0.31, 0.95), "FP2": (0.31, 0.95), "F7": (-0.81, 0.59), "F3": (-0.4, 0.55),
    "FZ": (0.0, 0.5), "F4": (0.4, 0.55), "F8": (0.81, 0.59), "T3": (-1.0, 0.0), "C3": (-0.5, 0.0),
    "CZ": (0.0, 0.0), "C4": (0.5, 0.0), "T4": (1.0, 0.0), "T5": (-0.81, -0.59),
    "P3": (-0.4, -0.55), "PZ": (0.0, -0.5), "P4": (0.4, -0.55), "T6": (0.81, -0.59),
    "O1": (-0.31, -0.95), "O2": (0.31, -0.95), "A1": (-1.15, -0.15), "A2": (1.15, -0.15),
    "T1": (-0.95, 0.3), "T2": (0.95, 0.3), "LOC": (-0.45, 1.1), "ROC": (0.45, 1.1),
}  # fmt: skip
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
_MONTAGES = ("01_tcp_ar", "02_tcp_le", "03_tcp_ar_a")
_MONTAGE_P = (0.6, 0.25, 0.15)
_SEIZURE_KINDS = ("fnsz", "gnsz", "cpsz", "tcsz")
_SEIZURE_KIND_P = (0.5, 0.25, 0.2, 0.05)
_GENERALIZED = ("gnsz", "tcsz")
_EDF_PLUS_FRACTION = 0.25
_SEIZURE_FRACTION = 0.5


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


# TUEV's classes in `.rec` code order (1-6) and the TCP channel numbers its rows use.
TUEV_KINDS = ("spsw", "gped", "pled", "eyem", "artf", "bckg")
_TUEV_FOCI = {
    "spsw": _FOCI,
    "gped": ("FZ", "CZ", "PZ"),
    "pled": ("F7", "T3", "T5", "F8", "T4", "T6"),
    "eyem": ("FP1", "FP2"),
    "artf": ("T3", "T4", "F7", "F8"),
    "bckg": _FOCI,
}


@dataclass(frozen=True)
class TuevEvent:
    """One TUEV event: whole seconds [onset_s, offset_s) of one class, on the TCP channels
    (numbers 0-21) its `.rec` lists one row per channel and second."""

    onset_s: float
    offset_s: float
    kind: str
    focus: str
    channels: tuple[int, ...]


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
    events: tuple[TuevEvent, ...] = ()  # tuev only


@dataclass(frozen=True)
class CorpusSpec:
    """Everything a synthetic corpus depends on; the same spec always writes the same corpus.

    duration_s: (min, max) seconds per recording, drawn uniformly and rounded to whole seconds
        (TUH's 1 s data records); default (60, 180) for tuab/tusz and (10, 30) for meg. One long
        recording (a memory benchmark): `CorpusSpec("meg", n_subjects=1, duration_s=(3600, 3600),
        sessions_per_subject=(1, 1), sfreq=1000)`.
    sessions_per_subject: (min, max) sessions per subject.
    n_recordings: exact number of recordings (each subject gets at least one); default: each
        subject gets `sessions_per_subject` sessions of 1 (tuab, meg) or 1-3 (tusz) recordings.
    sfreq: Hz of every recording; default: TUH's mix (250/256/400/512 Hz) for EEG, 250 Hz for MEG.
    """

    layout: Literal["tuab", "tusz", "meg", "tuev"]
    n_subjects: int = 10
    seed: int = 0
    duration_s: tuple[float, float] | None = None
    sessions_per_subject: tuple[int, int] = (1, 2)
    n_recordings: int | None = None
    sfreq: float | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise BrainpipeError(
                f"synthetic layout {self.layout!r} is not valid; choose one of {', '.join(LAYOUTS)}"
            )
        if self.duration_s is None:
            default = (10.0, 30.0) if self.layout == "meg" else (60.0, 180.0)
            object.__setattr__(self, "duration_s", default)
        object.__setattr__(self, "duration_s", tuple(self.duration_s))
        object.__setattr__(self, "sessions_per_subject", tuple(self.sessions_per_subject))
        self._check()

    def _check(self) -> None:
        if self.seed < 0:
            raise BrainpipeError(f"seed={self.seed} must be >= 0")
        if self.n_subjects < 1:
            raise BrainpipeError(f"n_subjects={self.n_subjects} must be >= 1")
        lo, hi = self.duration_s
        if not (1 <= lo <= hi):
            raise BrainpipeError(
                f"duration_s={self.duration_s} must be (min, max) seconds with 1 <= min <= max"
            )
        s_lo, s_hi = self.sessions_per_subject
        if not (1 <= s_lo <= s_hi):
            raise BrainpipeError(
                f"sessions_per_subject={self.sessions_per_subject} must be (min, max) with 1 <= min <= max"
            )
        if self.n_recordings is not None and self.n_recordings < self.n_subjects:
            raise BrainpipeError(
                f"n_recordings={self.n_recordings} is below n_subjects={self.n_subjects}; "
                "every subject has at least one recording"
            )
        if self.sfreq is not None and not self.sfreq >= 128:
            raise BrainpipeError(
                f"sfreq={self.sfreq} must be >= 128 Hz (the 60 Hz mains must stay below Nyquist)"
            )

    def stream(self, *keys: int) -> list[int]:
        """The seed of one part of the corpus: the plan (), recording i (i, 1), MEG subject k (k, 2)."""
        return [self.seed, LAYOUTS.index(self.layout), *keys]

    def rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng(self.stream(*keys))


def plan_recordings(spec: CorpusSpec) -> list[SyntheticRecording]:
    """Every recording of the corpus, in the order they are written."""
    rng = spec.rng()
    if spec.layout == "tuev":
        return _plan_tuev(spec, rng)
    return _plan_meg(spec, rng) if spec.layout == "meg" else _plan_eeg(spec, rng)


def _eeg_sfreq(spec: CorpusSpec, rng: np.random.Generator) -> float:
    drawn = float(rng.choice(_SFREQS, p=_SFREQ_P))  # drawn even when fixed: the plan stays the same
    return float(spec.sfreq) if spec.sfreq else drawn


def meg_channels() -> tuple[str, ...]:
    import mne

    meg = tuple(mne.channels.read_layout("Vectorview-all").names)
    return (*meg, "EEG 001", "EEG 002", "EEG 003", "EEG 004", "EOG 061", "ECG 063", "STI 014")


# ---------------------------------------------------------------------------------------------
# Planning: who, where, when, which channels and seizures. Everything drawn from one generator in
# a fixed order, so the plan (and with it every path) depends only on the spec.


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


def _plan_eeg(spec: CorpusSpec, rng: np.random.Generator) -> list[SyntheticRecording]:
    layout, n_subjects, duration_s = spec.layout, spec.n_subjects, spec.duration_s
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
        rng, n_subjects, spec.sessions_per_subject, tokens, spec.n_recordings
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
                        montage=montage, sfreq=_eeg_sfreq(spec, rng), duration_s=duration,
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


def electrode(label: str) -> str:
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


def seizure_field(seizure: Seizure, electrodes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Gain (0-1) and onset delay (s) of `seizure` at each electrode (0 where it has no position)."""
    fx, fy = POS[seizure.focus]
    gain, delay = np.zeros(len(electrodes)), np.zeros(len(electrodes))
    for i, e in enumerate(electrodes):
        if e in POS:
            d = math.hypot(POS[e][0] - fx, POS[e][1] - fy)
            gain[i] = math.exp(-0.5 * (d / seizure.spread) ** 2)
            # capped so every channel joins well before the end
            delay[i] = min(seizure.lag_s * d, 0.3 * (seizure.offset_s - seizure.onset_s))
    return gain, delay


def _plan_meg(spec: CorpusSpec, rng: np.random.Generator) -> list[SyntheticRecording]:
    duration_s = spec.duration_s
    per_subject = _recordings_per_session(
        rng, spec.n_subjects, spec.sessions_per_subject, (1, 1), spec.n_recordings
    )
    channels = meg_channels()
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
                    split="", label="", montage="", sfreq=spec.sfreq or 250.0,
                    duration_s=float(rng.integers(round(duration_s[0]), round(duration_s[1]) + 1)),
                    channels=channels, start=start, edf_plus=False, sex=sex, birth_year=birth_year,
                )
            )  # fmt: skip
            day += datetime.timedelta(days=int(rng.integers(1, 60)))
    return recordings


def _plan_tuev(spec: CorpusSpec, rng: np.random.Generator) -> list[SyntheticRecording]:
    """TUEV v2: train/eval by subject, one folder per subject; train files
    `<subject>_<nnnnnnnn>.edf`, eval files `<class>_<subject>_a_<k>.edf` (named, as TUH does,
    after a class the file holds); every recording holds events of most classes."""
    subjects = _subject_ids(rng, spec.n_subjects)
    splits = np.full(spec.n_subjects, "", dtype=object)
    _assign(rng, np.arange(spec.n_subjects), splits, {"train": 0.7, "eval": 0.3})
    per_subject = _recordings_per_session(
        rng, spec.n_subjects, spec.sessions_per_subject, (1, 1), spec.n_recordings
    )
    lo, hi = spec.duration_s
    recordings = []
    for subject, split, n in zip(subjects, splits, per_subject, strict=True):
        start = datetime.datetime(2010, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 3000)))
        for k in range(int(n.sum())):
            duration = float(rng.integers(round(lo), round(hi) + 1))
            events = _draw_tuev_events(rng, duration)
            name = (
                f"{subject}_{k + 1:08d}.edf"
                if split == "train"
                else f"{events[0].kind if events else 'bckg'}_{subject}_a_{k or ''}.edf"
            )
            recordings.append(
                SyntheticRecording(
                    path=f"edf/{split}/{subject}/{name}", subject=subject, session=1, token=k,
                    split=split, label="", montage="01_tcp_ar", sfreq=_eeg_sfreq(spec, rng),
                    duration_s=duration, channels=_pick_channels(rng, "01_tcp_ar"), start=start,
                    edf_plus=False, physical_max=float(rng.choice(_PHYSICAL_MAX)), events=events,
                )
            )  # fmt: skip
            start += datetime.timedelta(seconds=duration + 60)
    return recordings


def _draw_tuev_events(rng: np.random.Generator, duration: float) -> tuple[TuevEvent, ...]:
    """Events of 1-3 whole seconds with 1-4 s between them (the first may start at 0 s, as
    TUEV's do), classes in a random order so that a recording holds most of them."""
    kinds = list(rng.permutation(TUEV_KINDS))
    events, t = [], int(rng.integers(0, 3))
    while True:
        length = int(rng.integers(1, 4))
        if t + length > duration or len(events) >= 12:
            break
        kind = str(kinds[len(events) % len(kinds)])
        focus = str(rng.choice(_TUEV_FOCI[kind]))
        if kind == "bckg":
            chans = tuple(sorted(int(c) for c in rng.choice(22, int(rng.integers(1, 5)), False)))
        else:
            spread = TUEV_SPREAD[kind]
            near = [
                i
                for i, pair in enumerate(TCP_PAIRS)
                if min(
                    math.hypot(POS[e][0] - POS[focus][0], POS[e][1] - POS[focus][1]) for e in pair
                )
                <= spread
            ]
            chans = tuple(near)
        events.append(TuevEvent(float(t), float(t + length), kind, focus, chans))
        t += length + int(rng.integers(1, 5))
    return tuple(events)


# How far (head radius 1) from its focus each class shows: the channels its `.rec` rows list
# and the spatial s.d. of its waveform (signals.tuev_wave).
TUEV_SPREAD = {"spsw": 0.5, "gped": 3.0, "pled": 0.8, "eyem": 0.45, "artf": 0.5, "bckg": 0.0}
