"""Event scoring of seizure detection as the field reports it: NEDC OVLP/TAES/EPOCH and SzCORE.

Plain functions on arrays: sensitivity, precision, F1, false alarms and false alarms per 24 h
of hypothesis seizure events against reference ones, the detection curve over confidence
thresholds (`sweep`, `operating_points`, `write_curve`, `plot_curves`) and the references a
seizure cache stores (`cache_references`). `train` (validation event metrics), `predict` and
the `score` stage (`score.py`: annotation trees paired by recording name) call them directly:

    from brainpipe.scoring import score
    s = score(refs, hyps, durations_s, method="nedc-ovlp")  # refs[i]: (n, 2) seizure [on, off] s
    s.labels["seiz"].sensitivity, s.labels["seiz"].fa_per_24h

NEDC: the rules of NEDC `nedc_eeg_eval` v6.0.0 (Shah et al., "Objective Evaluation Metrics for
Automatic Classification of EEG Events", 2021), reproduced decision for decision, quirks
included, so results match its printed summary:
- Each file is seen as NEDC sees it: seizure events, the gaps filled with `bckg` (times compared
  at 4 decimals), consecutive events of one label joined (touching seizures become one event);
  both labels, `seiz` and `bckg`, are scored. Duration: the reference's (its `# duration`).
- OVLP: a reference event is a hit when a hypothesis event of its label overlaps it (strictly:
  touching is not overlapping); a hypothesis event overlapping no reference event of its label
  is one false alarm, however long it is.
- TAES: fractional hits, misses and false alarms from the overlap duration relative to the
  reference event (false alarm capped at 1 per pair); a hypothesis event spanning several
  reference events scores the first and counts every further one as a full miss; NEDC's
  "any overlap" test inside TAES compares whole seconds (int(start)..int(stop)), as it does.
- EPOCH: both annotations sampled every 0.25 s at the middle of each epoch; counts are epochs;
  FA/24h is false-alarm epochs x 0.25 s per 24 h; `bckg` "false alarms" are 0 as NEDC prints.
- Rates with a zero denominator are 0, as NEDC prints them. FA/24h is per label over the total
  duration of the scored recordings.
- Deviations, on input NEDC rejects or mangles: overlapping events in one file are joined first
  (NEDC makes negative-length background); a hypothesis whose `# duration` differs from the
  reference's by under 1 s is scored on the reference's (NEDC stops); events are clipped to it.
SzCORE: `timescoring.scoring.EventScoring` with SzCORE's parameters (merge events closer than
90 s, split events longer than 5 min, a hit overlaps the reference within 30 s before its onset
and 60 s after its end), summed over recordings (micro-average); undefined rates are NaN
(null in JSON) as timescoring reports them.

Operating points (`--sweep`): hypothesis events are kept when their confidence is >= a threshold;
the threshold runs over the confidences present (at most `max_thresholds` quantiles) and above
the largest (no events: 0 FA, 0 sensitivity). Sensitivity at a target FA/24h is read off the
curve's upper envelope (the best sensitivity at or below each FA rate), linearly interpolated in
FA/24h between the curve's points; a target beyond the largest FA reached takes the best
sensitivity of the whole curve (exact: no threshold needs more false alarms) and is marked
`"beyond_curve": true`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.annotations import Event
from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output

METHODS = ("nedc-ovlp", "nedc-taes", "nedc-epoch", "szcore")
SEIZ, BCKG = "seiz", "bckg"
NEDC_LABELS = (SEIZ, BCKG)  # NEDC's map order: per-label results print in it
EPOCH_S = 0.25  # NEDC v6.0.0 params: epoch_duration
OPERATING_POINTS = (1.0, 2.5, 5.0, 10.0)  # FA per 24 h
DAY_S = 86400.0


@dataclass(frozen=True)
class LabelScore:
    """Totals for one label over the scored recordings (TAES counts are fractional)."""

    targets: float
    hits: float
    misses: float
    false_alarms: float
    sensitivity: float
    precision: float
    f1: float
    fa_per_24h: float


@dataclass(frozen=True)
class RecordingScore:
    """One recording's seizure hits, misses and false alarms."""

    name: str
    duration_s: float
    hits: float
    misses: float
    false_alarms: float


@dataclass(frozen=True)
class Score:
    method: str
    duration_s: float
    n_recordings: int
    labels: dict[str, LabelScore]
    recordings: tuple[RecordingScore, ...]
    # NEDC's "Summary" block: every label summed (its "Total False Alarm Rate" is this
    # fa_per_24h, seiz and bckg false alarms together); None for SzCORE
    total: LabelScore | None = None

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object; NaN becomes null."""
        d = asdict(self)
        d["recordings"] = list(d["recordings"])
        return no_nan(d)


def no_nan(x: Any) -> Any:
    """`x` with every non-finite float replaced by None (JSON's null), through dicts and lists."""
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [no_nan(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass
class _Counts:
    targets: float = 0.0
    hits: float = 0.0
    misses: float = 0.0
    false_alarms: float = 0.0  # what NEDC prints as "False Alarms"
    fp: float = 0.0  # what its precision and false-alarm rate use (differs only for EPOCH bckg)

    def add(self, o: _Counts) -> None:
        for k in ("targets", "hits", "misses", "false_alarms", "fp"):
            setattr(self, k, getattr(self, k) + getattr(o, k))


# ---------------------------------------------------------------------------------------------
# Scoring on arrays
# ---------------------------------------------------------------------------------------------


def as_intervals(events: np.ndarray | Sequence[Event], duration_s: float) -> np.ndarray:
    """Seizure intervals as a sorted (n, 2) float array within [0, duration_s], overlaps joined."""
    if len(events) and isinstance(events[0], Event):
        a = np.array([(e.onset_s, e.offset_s) for e in events], dtype=np.float64)
    else:
        a = np.asarray(events, dtype=np.float64).reshape(-1, 2)
    a = np.clip(a, 0.0, duration_s)
    a = a[a[:, 1] > a[:, 0]]
    a = a[np.argsort(a[:, 0], kind="stable")]
    out: list[list[float]] = []
    for on, off in a.tolist():
        if out and on < out[-1][1]:
            out[-1][1] = max(out[-1][1], off)
        else:
            out.append([on, off])
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def nedc_events(seizures: np.ndarray, duration_s: float) -> list[tuple[float, float, str]]:
    """One file as NEDC scores it: seizures, gaps filled with bckg, consecutive labels joined.

    NEDC's augment_annotation compares times rounded to 4 decimals and gives fillers those
    rounded times; events keep theirs.
    """
    dur = round(duration_s, 4)
    filled, t = [], 0.0
    for on, off in seizures.tolist():
        if round(on, 4) != t:
            filled.append([t, round(on, 4), BCKG])
        filled.append([on, off, SEIZ])
        t = round(off, 4)
    if t != dur:
        filled.append([t, dur, BCKG])
    joined: list[list] = []
    for ev in filled:
        if joined and joined[-1][2] == ev[2]:
            joined[-1][1] = ev[1]
        else:
            joined.append(ev)
    return [(a, b, lab) for a, b, lab in joined]


def _ovlp(ref: list, hyp: list) -> dict[str, _Counts]:
    c = {lab: _Counts() for lab in NEDC_LABELS}
    r = np.array([(a, b) for a, b, _ in ref]).reshape(-1, 2)
    h = np.array([(a, b) for a, b, _ in hyp]).reshape(-1, 2)
    same = np.array([x[2] for x in ref])[:, None] == np.array([x[2] for x in hyp])[None, :]
    overlap = same & (h[None, :, 1] > r[:, None, 0]) & (h[None, :, 0] < r[:, None, 1])
    for i, (_, _, lab) in enumerate(ref):
        c[lab].targets += 1
        if overlap[i].any():
            c[lab].hits += 1
        else:
            c[lab].misses += 1
    for j, (_, _, lab) in enumerate(hyp):
        if not overlap[:, j].any():
            c[lab].false_alarms += 1
            c[lab].fp += 1
    return c


def _whole_seconds_overlap(a: tuple, b: tuple) -> bool:
    # NEDC TAES's anyovlp: set(range(int(start), int(stop) + 1)) of both events intersect
    return int(a[0]) <= int(b[1]) and int(b[0]) <= int(a[1])


def _taes_pair(ref: tuple, hyp: tuple) -> tuple[float, float]:
    """(hit, false alarm) of one hypothesis event against one reference event (NEDC calc_hf)."""
    r0, r1, _ = ref
    h0, h1, _ = hyp
    dur = r1 - r0
    if h0 <= r0 and h1 <= r1:  # starts early
        return (h1 - r0) / dur, min((r0 - h0) / dur, 1.0)
    if h0 >= r0 and h1 >= r1:  # ends late
        return (r1 - h0) / dur, min((h1 - r1) / dur, 1.0)
    if h0 < r0 and h1 > r1:  # covers it
        return 1.0, min(((h1 - r1) + (r0 - h0)) / dur, 1.0)
    return (h1 - h0) / dur, 0.0  # inside it


def _taes_partial(ref: list, hyp: list, i: int, j: int, rfree: list, hfree: list) -> tuple:
    """NEDC compute_partial: the hit, miss and false alarm for reference i against hypothesis j."""
    if not _whole_seconds_overlap(ref[i], hyp[j]):
        return 0.0, 0.0, 0.0
    hit, fa = _taes_pair(ref[i], hyp[j])
    miss = 1.0 - hit
    rfree[i] = hfree[j] = False
    if hyp[j][1] >= ref[i][1]:
        # the hypothesis runs past this reference event: later ones it touches are full misses
        for k in range(i + 1, len(ref)):
            if ref[k][2] == hyp[j][2] and _whole_seconds_overlap(ref[k], hyp[j]):
                rfree[k] = False
                miss += 1.0
    else:
        # the reference event runs on: later hypothesis events inside it add their share
        for k in range(j + 1, len(hyp)):
            if hyp[k][2] == ref[i][2] and _whole_seconds_overlap(ref[i], hyp[k]):
                hfree[k] = False
                h, f = _taes_pair(ref[i], hyp[k])
                hit, miss, fa = hit + h, miss - h, fa + f
    return hit, miss, fa


def _taes(ref: list, hyp: list) -> dict[str, _Counts]:
    c = {lab: _Counts() for lab in NEDC_LABELS}
    rfree, hfree = [True] * len(ref), [True] * len(hyp)
    for i, (r0, r1, lab) in enumerate(ref):
        c[lab].targets += 1
        touched = any(hl == lab and h1 > r0 and h0 < r1 for h0, h1, hl in hyp)
        if not (touched and rfree[i]):
            continue
        for j in range(len(hyp)):
            if hyp[j][2] == lab and hfree[j]:
                hit, miss, fa = _taes_partial(ref, hyp, i, j, rfree, hfree)
                c[lab].hits += hit
                c[lab].misses += miss
                c[lab].false_alarms += fa
                c[lab].fp += fa
    for i, (_, _, lab) in enumerate(ref):
        c[lab].misses += rfree[i]
    for j, (_, _, lab) in enumerate(hyp):
        c[lab].false_alarms += hfree[j]
        c[lab].fp += hfree[j]
    return c


def _epoch_labels(events: list, times: np.ndarray) -> np.ndarray:
    # NEDC time_to_index: the first event with start <= t <= stop (an event ending at t wins);
    # none found gives index -1, the last event
    stops = np.array([b for _, b, _ in events])
    idx = np.searchsorted(stops, times, side="left")
    idx[idx >= len(events)] = len(events) - 1
    return np.array([lab == SEIZ for _, _, lab in events])[idx]


def _epoch(ref: list, hyp: list) -> dict[str, _Counts]:
    stop = ref[-1][1]
    n = int(stop / EPOCH_S) + 2
    times = EPOCH_S / 2 + EPOCH_S * np.arange(n)
    times = times[times <= stop]
    r, h = _epoch_labels(ref, times), _epoch_labels(hyp, times)
    ss, sb, bs, bb = (float(np.sum(a & b)) for a in (r, ~r) for b in (h, ~h))
    return {
        SEIZ: _Counts(ss + sb, ss, sb, bs, bs),
        BCKG: _Counts(bs + bb, bb, bs, 0.0, sb),
    }


def _rates(c: _Counts, duration_s: float, fa_unit_s: float = 1.0) -> LabelScore:
    """NEDC's derived measures: zero denominators give 0."""
    sens = c.hits / (c.hits + c.misses) if c.hits + c.misses else 0.0
    prec = c.hits / (c.hits + c.fp) if c.hits + c.fp else 0.0
    f1 = 2 * prec * sens / (prec + sens) if round(prec + sens, 10) else 0.0
    fa = c.fp * fa_unit_s / duration_s * DAY_S if round(duration_s, 10) else 0.0
    return LabelScore(c.targets, c.hits, c.misses, c.false_alarms, sens, prec, f1, fa)


_NEDC = {"nedc-ovlp": _ovlp, "nedc-taes": _taes, "nedc-epoch": _epoch}


def score(
    refs: Sequence[np.ndarray | Sequence[Event]],
    hyps: Sequence[np.ndarray | Sequence[Event]],
    durations_s: Sequence[float],
    method: str = "nedc-ovlp",
    names: Sequence[str] | None = None,
) -> Score:
    """Score hypothesis seizure events against reference ones, recording by recording.

    refs[i], hyps[i]: recording i's seizure events, (n, 2) [onset_s, offset_s] or Events;
    durations_s[i]: its length in seconds (events are clipped to it).
    """
    if method not in METHODS:
        raise BrainpipeError(f"scoring method {method!r} is not one of {', '.join(METHODS)}")
    if not len(refs) == len(hyps) == len(durations_s):
        raise BrainpipeError(
            f"{len(refs)} references, {len(hyps)} hypotheses, {len(durations_s)} durations"
        )
    names = list(names) if names is not None else [str(i) for i in range(len(refs))]
    pairs = [
        (as_intervals(r, d), as_intervals(h, d), float(d))
        for r, h, d in zip(refs, hyps, durations_s, strict=True)
    ]
    if method == "szcore":
        return _szcore(pairs, names)
    totals = {lab: _Counts() for lab in NEDC_LABELS}
    per_rec, total_s = [], 0.0
    for name, (r, h, d) in zip(names, pairs, strict=True):
        ref, hyp = nedc_events(r, d), nedc_events(h, d)
        c = _NEDC[method](ref, hyp)
        for lab in NEDC_LABELS:
            totals[lab].add(c[lab])
        total_s += ref[-1][1]
        s = c[SEIZ]
        per_rec.append(RecordingScore(name, ref[-1][1], s.hits, s.misses, s.false_alarms))
    unit = EPOCH_S if method == "nedc-epoch" else 1.0
    labels = {lab: _rates(totals[lab], total_s, unit) for lab in NEDC_LABELS}
    both = _Counts()
    for lab in NEDC_LABELS:
        both.add(totals[lab])
    total = _rates(both, total_s, unit)
    # NEDC's summary F1 divides by the last label's precision + sensitivity, not its own
    last = labels[NEDC_LABELS[-1]]
    denom = last.precision + last.sensitivity
    f1 = 2 * total.precision * total.sensitivity / denom if round(denom, 10) else 0.0
    total = dataclasses.replace(total, f1=f1)
    return Score(method, total_s, len(pairs), labels, tuple(per_rec), total)


def _szcore(pairs: list, names: list[str]) -> Score:
    from timescoring.annotations import Annotation
    from timescoring.scoring import EventScoring

    # SzCORE's published rules; EventScoring works at 10 Hz whatever rate it is given
    params = EventScoring.Parameters(
        toleranceStart=30, toleranceEnd=60, minOverlap=0, maxEventDuration=300,
        minDurationBetweenEvents=90,
    )  # fmt: skip
    fs = 10
    tp = fp = ref_true = total_s = 0.0
    per_rec = []
    for name, (r, h, d) in zip(names, pairs, strict=True):
        n = round(d * fs)
        es = EventScoring(
            Annotation([tuple(x) for x in r.tolist()], fs, n),
            Annotation([tuple(x) for x in h.tolist()], fs, n),
            params,
        )
        tp, fp, ref_true, total_s = tp + es.tp, fp + es.fp, ref_true + es.refTrue, total_s + d
        per_rec.append(
            RecordingScore(name, d, float(es.tp), float(es.refTrue - es.tp), float(es.fp))
        )
    nan = float("nan")
    sens = tp / ref_true if ref_true else nan
    prec = tp / (tp + fp) if tp + fp else nan
    f1 = 2 * tp / (2 * tp + fp + (ref_true - tp)) if ref_true + fp else nan
    fa = fp / (total_s / DAY_S) if total_s else nan
    seiz = LabelScore(ref_true, tp, ref_true - tp, fp, sens, prec, f1, fa)
    return Score("szcore", total_s, len(pairs), {SEIZ: seiz}, tuple(per_rec))


# ---------------------------------------------------------------------------------------------
# References stored in a cache
# ---------------------------------------------------------------------------------------------


def recording_name(path: str) -> str:
    """A recording's name as pairing uses it: its file name without the suffix (TUSZ's bname)."""
    return Path(path).stem


@dataclass(frozen=True)
class CacheReferences:
    """The reference events a cache stores, per finished recording (`cache_references`)."""

    rows: np.ndarray  # the recordings' rows in the cache's recordings table
    names: list[str]
    splits: list[str]
    events: list[np.ndarray]  # (n, 2) seizure onset_s, offset_s, seconds of the recording
    durations_s: list[float]  # what the cache holds of each: t0_s + length / sfreq


def cache_references(reader: Any) -> CacheReferences:
    """Each finished recording's seizure events and scored length, from a `CacheReader`.

    The events are the annotations the index read (seconds from the recording's start); the
    length is what the cache holds, from the start of the recording (t0_s, the crop) to its
    last stored sample, so references and `predict`'s hypotheses cover the same span.
    """
    from brainpipe.cachefile import STATUS_DONE

    r, ev = reader.recordings, reader.events
    rows = np.flatnonzero(r["status"] == STATUS_DONE)
    durations = r["t0_s"][rows] + r["length"][rows] / reader.sfreq
    order = np.argsort(ev["recording"], kind="stable")
    ev_rec = ev["recording"][order]
    spans = np.column_stack([ev["onset_s"][order], ev["offset_s"][order]]).reshape(-1, 2)
    lo = np.searchsorted(ev_rec, rows, side="left")
    hi = np.searchsorted(ev_rec, rows, side="right")
    return CacheReferences(
        rows,
        [recording_name(p) for p in r["path"][rows].tolist()],
        r["split"][rows].tolist(),
        [spans[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True)],
        durations.astype(np.float64).tolist(),
    )


# ---------------------------------------------------------------------------------------------
# Operating points
# ---------------------------------------------------------------------------------------------


def sweep(
    refs: Sequence[np.ndarray],
    hyps: Sequence[np.ndarray],
    durations_s: Sequence[float],
    method: str = "nedc-ovlp",
    max_thresholds: int = 100,
) -> list[dict[str, float]]:
    """The detection curve: one row per confidence threshold (hyps[i]: (m, 3) on, off, conf)."""
    conf = np.concatenate([np.asarray(h).reshape(-1, 3)[:, 2] for h in hyps] or [np.zeros(0)])
    thresholds = np.unique(conf)
    if len(thresholds) > max_thresholds:
        thresholds = np.unique(np.quantile(conf, np.linspace(0, 1, max_thresholds)))
    rows = []
    for t in [*thresholds.tolist(), math.inf]:
        kept = [np.asarray(h).reshape(-1, 3) for h in hyps]
        kept = [h[h[:, 2] >= t, :2] for h in kept]
        seiz = score(refs, kept, durations_s, method).labels[SEIZ]
        rows.append(
            {
                "threshold": t,
                "sensitivity": seiz.sensitivity,
                "precision": seiz.precision,
                "f1": seiz.f1,
                "false_alarms": seiz.false_alarms,
                "fa_per_24h": seiz.fa_per_24h,
            }
        )
    return rows


def operating_points(
    curve: Sequence[dict[str, float]], targets: Sequence[float] = OPERATING_POINTS
) -> list[dict[str, Any]]:
    """Sensitivity at each target FA/24h, interpolated on the curve's upper envelope."""
    fa = np.array([r["fa_per_24h"] for r in curve], dtype=np.float64)
    sens = np.array([r["sensitivity"] for r in curve], dtype=np.float64)
    ok = np.isfinite(fa) & np.isfinite(sens)
    fa, sens = fa[ok], sens[ok]
    if not len(fa):
        return [{"fa_per_24h": t, "sensitivity": None, "beyond_curve": True} for t in targets]
    order = np.argsort(fa, kind="stable")
    fa, env = fa[order], np.maximum.accumulate(sens[order])
    xs = np.unique(fa)
    ys = env[np.searchsorted(fa, xs, side="right") - 1]
    return [
        {
            "fa_per_24h": t,
            "sensitivity": float(np.interp(t, xs, ys)),
            "beyond_curve": bool(t > xs[-1]),
        }
        for t in targets
    ]


def write_curve(path: str | Path, curves: dict[str, list[dict[str, float]]]) -> None:
    """One CSV of every method's curve: method, threshold, sensitivity, ..., fa_per_24h."""
    cols = ["method", "threshold", "sensitivity", "precision", "f1", "false_alarms", "fa_per_24h"]
    with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for method, rows in curves.items():
            for r in rows:
                w.writerow({"method": method, **r})


def plot_curves(
    path: str | Path,
    curves: dict[str, list[dict[str, float]]],
    points: dict[str, list[dict[str, Any]]],
) -> None:
    """Sensitivity against FA/24h, one line per method, operating points marked (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise BrainpipeError("--plot needs matplotlib: pip install 'brainpipe[plot]'") from e
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, rows in curves.items():
        pts = sorted((r["fa_per_24h"], r["sensitivity"]) for r in rows)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=method)
        op = [
            (p["fa_per_24h"], p["sensitivity"])
            for p in points[method]
            if p["sensitivity"] is not None
        ]
        ax.scatter([p[0] for p in op], [p[1] for p in op], marker="x", color="k", zorder=3)
    ax.set_xlabel("false alarms per 24 h")
    ax.set_ylabel("sensitivity")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
