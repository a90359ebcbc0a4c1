"""The `score` stage: hypothesis seizure events scored against references, read from trees.

Reads a hypothesis tree (`.csv_bi`/`.tse_bi`/`.tse` files, e.g. `brainpipe predict`'s `hyp/`)
and its references (a directory of annotation files, or a seizure cache's stored events), pairs
recordings by name and scores them with each method of `scoring` (NEDC OVLP/TAES/EPOCH,
SzCORE); `--sweep` adds the sensitivity at 1, 2.5, 5 and 10 FA/24h, a curve CSV and a plot.
Returns data (one dict per method); the text `score` prints is `reporting.score_report`.

    brainpipe score --ref tusz/edf/eval --hyp runs/x/hyp --method nedc-ovlp --json
    brainpipe score --ref tusz/edf/eval --hyp runs/x/hyp --sweep --curve c.csv --plot c.png
    brainpipe score --ref data/tusz.h5 --hyp runs/x/pred/hyp     # references stored in a cache

    from brainpipe.score import score_trees
    results = score_trees("tusz/edf/eval", "runs/x/hyp", ["nedc-ovlp"])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.annotations import Annotations, Event, merge_channel_events, read_annotations
from brainpipe.errors import BrainpipeError
from brainpipe.scoring import (
    METHODS,
    cache_references,
    no_nan,
    operating_points,
    plot_curves,
    score,
    sweep,
    write_curve,
)

# Reference files, in order of preference when several sit beside one recording; hypotheses
# are term-based files only (a curve.csv left among them is not a recording).
REF_SUFFIXES = (".csv_bi", ".tse_bi", ".tse", ".csv")
HYP_SUFFIXES = (".csv_bi", ".tse_bi", ".tse")
DURATION_TOLERANCE_S = 1.0


def score_trees(
    ref: str | Path,
    hyp: str | Path,
    methods: Sequence[str] = METHODS,
    sweep_curve: bool = False,
    curve_csv: str | Path | None = None,
    plot: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Score a hypothesis tree against a reference tree with each method; one dict per method
    (Score.to_dict(), plus `operating_points` with a sweep and `unpaired_references`)."""
    for m in methods:
        if m not in METHODS:
            raise BrainpipeError(f"scoring method {m!r} is not one of {', '.join(METHODS)}")
    pairs = load_pairs(ref, hyp)
    hyp_events = [h[:, :2] for h in pairs.hyps]
    results, curves, points = [], {}, {}
    for m in methods:
        d = score(pairs.refs, hyp_events, pairs.durations_s, m, pairs.names).to_dict()
        d["unpaired_references"] = pairs.unpaired_refs
        d["unknown_labels"] = list(pairs.unknown_labels)
        if sweep_curve or curve_csv or plot:
            curves[m] = sweep(pairs.refs, pairs.hyps, pairs.durations_s, m)
            points[m] = operating_points(curves[m])
            d["operating_points"] = no_nan(points[m])
        results.append(d)
    if curve_csv:
        write_curve(curve_csv, curves)
    if plot:
        plot_curves(plot, curves, points)
    return results


# ---------------------------------------------------------------------------------------------
# Annotation trees: pairing by recording name
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pairs:
    """Paired recordings: seizure intervals (n, 2), hypotheses with confidences (m, 3)."""

    names: list[str]
    refs: list[np.ndarray]
    hyps: list[np.ndarray]  # onset_s, offset_s, confidence
    durations_s: list[float]
    unpaired_refs: int = 0
    unknown_labels: tuple[str, ...] = ()


def _tree(root: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Recording name (file stem) -> its annotation file, preferring `suffixes`' order."""
    if not root.is_dir():
        raise BrainpipeError(f"{root}: not a directory of annotation files")
    rank = {s: i for i, s in enumerate(suffixes)}
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        suffix = p.suffix.lower()
        if suffix not in rank or not p.is_file():
            continue
        name = p.name[: -len(p.suffix)]
        prev = found.get(name)
        if prev is not None and prev.suffix.lower() == suffix:
            raise BrainpipeError(
                f"{root}: recording {name} has two annotation files ({prev} and {p}); "
                "point at a directory holding each recording once"
            )
        if prev is None or rank[suffix] < rank[prev.suffix.lower()]:
            found[name] = p
    return found


def _read(path: Path) -> Annotations:
    ann = read_annotations(path)
    if path.suffix.lower() == ".csv":  # per channel: the union over channels is the term event
        conf = max((e.confidence for e in ann.events), default=1.0)
        merged = [
            Event(e.onset_s, e.offset_s, e.label, "TERM", conf)
            for e in merge_channel_events(list(ann.events))
        ]
        ann = Annotations(
            ann.path, tuple(merged), ann.duration_s, ann.unknown_labels, ann.n_clipped
        )
    return ann


def reference_tree(ref: str | Path) -> dict[str, Path]:
    """The reference recordings of a directory of annotation files, by recording name."""
    return _tree(Path(ref), REF_SUFFIXES)


def _cache_reference_pairs(ref: Path) -> dict[str, tuple[np.ndarray, float, str]]:
    """Recording name -> (seizure events, duration, split) of a seizure cache."""
    from brainpipe.cachefile import CacheReader

    with CacheReader(ref) as reader:
        if reader.task != "seizure":
            raise BrainpipeError(
                f"{ref}: a {reader.task or 'task-less'} cache holds no seizure events; pass a "
                "seizure cache (cache.task: seizure) or a directory of reference annotations"
            )
        refs = cache_references(reader)
    found: dict[str, tuple[np.ndarray, float, str]] = {}
    for name, ev, d, split in zip(
        refs.names, refs.events, refs.durations_s, refs.splits, strict=True
    ):
        if name in found:
            raise BrainpipeError(
                f"{ref}: two recordings are named {name}; hypotheses cannot be paired by name"
            )
        found[name] = (ev, d, split)
    return found


def load_pairs(ref: str | Path, hyp: str | Path) -> Pairs:
    """Read both sides and pair every hypothesis with its reference by recording name.

    ref: a directory of reference annotation files, or a seizure cache (its events; unpaired
    references are then counted within the splits the hypotheses come from).
    """
    ref = Path(ref)
    from_cache = ref.is_file()
    cached = _cache_reference_pairs(ref) if from_cache else {}
    refs = {} if from_cache else reference_tree(ref)
    hyps = _tree(Path(hyp), HYP_SUFFIXES)
    if not hyps:
        raise BrainpipeError(f"{hyp}: no hypothesis annotation files ({', '.join(HYP_SUFFIXES)})")
    known = cached if from_cache else refs
    missing = sorted(set(hyps) - set(known))
    if missing:
        raise BrainpipeError(
            f"{hyp}: {len(missing)} hypothesis recording(s) have no reference in {ref} "
            f"(e.g. {', '.join(missing[:3])}); check --ref"
        )
    names = sorted(hyps)
    out_r, out_h, durations, unknown = [], [], [], set()
    for name in names:
        h = _read(hyps[name])
        if from_cache:
            events, d, _ = cached[name]
            where = f"{ref} (recording {name})"
        else:
            r = _read(refs[name])
            d, where = r.duration_s, str(refs[name])
            if d is None:
                raise BrainpipeError(
                    f"{refs[name]}: no '# duration' header; the recording's length is needed to "
                    "count background and false alarms per 24 h"
                )
            unknown.update(r.unknown_labels)
            events = np.array([(e.onset_s, e.offset_s) for e in r.events]).reshape(-1, 2)
        if h.duration_s is not None and abs(h.duration_s - d) > DURATION_TOLERANCE_S:
            raise BrainpipeError(
                f"{hyps[name]}: duration {h.duration_s} s differs from the reference's {d} s "
                f"({where}); is it the same recording?"
            )
        out_r.append(events)
        out_h.append(
            np.array([(e.onset_s, e.offset_s, e.confidence) for e in h.events]).reshape(-1, 3)
        )
        durations.append(d)
    if from_cache:
        splits = {cached[n][2] for n in names}
        unpaired = sum(1 for v in cached.values() if v[2] in splits) - len(names)
    else:
        unpaired = len(refs) - len(names)
    return Pairs(names, out_r, out_h, durations, unpaired, tuple(sorted(unknown)))
