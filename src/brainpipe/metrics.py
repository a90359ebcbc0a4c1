"""Metrics of a model's predictions, torch-free (numpy and scikit-learn), as TUAB/TUSZ papers report them.

Owns `compute_metrics` (per window and per recording, from class probabilities: balanced
accuracy, AUROC, AUPRC, Cohen's kappa, macro and weighted F1, the confusion matrix; all from
scikit-learn), `event_metrics` (seizure events scored against the cache's reference events,
NEDC OVLP, the metric TUSZ results are reported in) and `selection_score`, the rule that picks
best.pt among epochs (`train.select_by`, `default_select_by` per task); for the subject tasks `subject_metrics` (pair AUROC, EER, identification top-1 of
embeddings) and `subject_selection_score`. The task ("abnormal", "seizure" or "" for another
cache) comes from the cache (`CacheReader.task`), never from label names.

    m = compute_metrics(probs, labels, recordings, task="seizure")
    m["balanced_accuracy"], m["auroc"], m["sensitivity"], m["recording_auroc"]
    m["events"] = event_metrics(probs[:, 1], ds.recording, window_starts_s(reader, ds.recording,
                                ds.start), window_s, cache_references(reader), cfg.postprocess)
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from brainpipe.corpus import TUSZ_LABELS
from brainpipe.detection import detect_events
from brainpipe.errors import BrainpipeError
from brainpipe.scoring import CacheReferences, operating_points, score

EVENT_METHOD = "nedc-ovlp"  # the fast one; the same rules `brainpipe score` applies
# Detection thresholds an event curve is swept over (with the postprocess smoothing, minimum
# duration and merge gap); the configured threshold is added to them.
SWEEP_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def compute_metrics(
    probs: np.ndarray, labels: np.ndarray, recordings: np.ndarray, task: str = ""
) -> dict[str, Any]:
    """Window and recording metrics of class probabilities `(n_windows, n_classes)`.

    Per window: loss, balanced accuracy (argmax), AUROC, AUPRC (of the last class for two
    classes; one-vs-rest macro averages otherwise), Cohen's kappa, macro and weighted F1 and
    the confusion matrix (rows: true class, columns: predicted, every class of the cache); the
    seizure task adds sensitivity and specificity. Per recording (`recording_*`, the same
    metrics): the mean of its windows' probabilities against its label. A recording's label is
    the highest of its windows' labels on abnormal and seizure caches (the TUAB recording
    label, "has a seizure" for TUSZ); on any other cache recording metrics exist only where
    every recording has one label (an events cache whose recordings hold several classes has
    none: NaN, and `recording_confusion_matrix` None). NaN where undefined (one class only).
    """
    labels = np.asarray(labels, dtype=np.int64)
    k = probs.shape[1] if probs.ndim == 2 else 0
    with warnings.catch_warnings():
        # one-class subsets (a TUSZ eval set where every recording has a seizure) are expected
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        m: dict[str, Any] = {}
        p_true = probs[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
        m["loss"] = float(-np.log(np.clip(p_true, 1e-12, None)).mean()) if len(labels) else math.nan
        m.update(_scores(probs, labels, k))
        if task == "seizure":
            pred = probs.argmax(1)
            pos, neg = labels == 1, labels == 0
            m["sensitivity"] = float((pred[pos] == 1).mean()) if pos.any() else math.nan
            m["specificity"] = float((pred[neg] == 0).mean()) if neg.any() else math.nan
        rec_ids, inverse = np.unique(recordings, return_inverse=True)
        rec_probs = np.zeros((len(rec_ids), k))
        np.add.at(rec_probs, inverse, probs)
        rec_probs /= np.maximum(np.bincount(inverse, minlength=len(rec_ids)), 1)[:, None]
        rec_labels = np.full(len(rec_ids), -1, np.int64)
        np.maximum.at(rec_labels, inverse, labels)
        rec_low = np.full(len(rec_ids), np.iinfo(np.int64).max, np.int64)
        np.minimum.at(rec_low, inverse, labels)
        one_label = task in ("abnormal", "seizure") or bool((rec_low == rec_labels).all())
        rec = _scores(rec_probs, rec_labels, k) if one_label else _scores(probs[:0], labels[:0], k)
        if not one_label:
            rec["confusion_matrix"] = None
        m.update({f"recording_{name}": v for name, v in rec.items()})
    m["n_windows"] = int(len(labels))
    m["n_recordings"] = int(len(rec_ids))
    return m


def _scores(p: np.ndarray, y: np.ndarray, k: int) -> dict[str, Any]:
    """Balanced accuracy, AUROC, AUPRC, Cohen's kappa, macro/weighted F1 and the confusion
    matrix of probabilities `p` (n, k) against labels `y`; AUROC and AUPRC NaN with one class
    present, kappa NaN where sklearn's is undefined (one class predicted and present)."""
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        f1_score,
        roc_auc_score,
    )

    names = ("balanced_accuracy", "auroc", "auprc", "cohen_kappa", "f1_macro", "f1_weighted")
    out: dict[str, Any] = dict.fromkeys(names, math.nan)
    out["confusion_matrix"] = np.zeros((k, k), np.int64).tolist()
    if len(y) == 0:
        return out
    pred = p.argmax(1)
    out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
    out["cohen_kappa"] = float(cohen_kappa_score(y, pred))
    out["f1_macro"] = float(f1_score(y, pred, average="macro", zero_division=0))
    out["f1_weighted"] = float(f1_score(y, pred, average="weighted", zero_division=0))
    out["confusion_matrix"] = confusion_matrix(y, pred, labels=np.arange(k)).tolist()
    if len(np.unique(y)) < 2:
        return out
    if k == 2:
        out["auroc"] = float(roc_auc_score(y, p[:, 1]))
        out["auprc"] = float(average_precision_score(y, p[:, 1]))
        return out
    onehot = np.eye(k)[y]
    present = onehot.sum(0) > 0
    out["auroc"] = float(roc_auc_score(onehot[:, present], p[:, present], average="macro"))
    out["auprc"] = float(
        average_precision_score(onehot[:, present], p[:, present], average="macro")
    )
    return out


# `train.select_by`: metrics best.pt may be chosen by; lower is better for these.
LOWER_IS_BETTER = frozenset({"loss", "recording_loss", "eer"})
WINDOW_METRICS = (
    "balanced_accuracy", "auroc", "auprc", "cohen_kappa", "f1_macro", "f1_weighted", "loss",
)  # fmt: skip
SELECTABLE = {
    "classify": (
        *WINDOW_METRICS,
        *(f"recording_{n}" for n in WINDOW_METRICS if n != "loss"),
        "sensitivity",
        "specificity",
        "events.mean_sensitivity",
        "events.f1",
        "events.sensitivity",
    ),
    "subject": ("eer", "pair_auroc", "identification_top1"),
}


def default_select_by(task: str, cache_task: str = "") -> str:
    """`train.select_by` when unset: `events.mean_sensitivity` on a seizure cache (what TUSZ
    results are compared by), `balanced_accuracy` on any other classification cache, `eer` for
    the subject tasks (pairs, contrastive)."""
    if task != "classify":
        return "eer"
    return "events.mean_sensitivity" if cache_task == "seizure" else "balanced_accuracy"


def check_select_by(select_by: str, task: str) -> None:
    """One BrainpipeError when `train.select_by` names no metric of `train.task`."""
    names = SELECTABLE["classify" if task == "classify" else "subject"]
    if select_by and select_by not in names:
        raise BrainpipeError(
            f"train.select_by={select_by!r} is not a metric of train.task={task!r}; choose one "
            f"of {', '.join(names)} (or leave it unset for the task's default)"
        )


def _metric(val: dict[str, Any], name: str) -> float:
    """`name` (dotted for nested: events.mean_sensitivity) of a split's metrics, signed so that
    higher is better; NaN when the split lacks it."""
    v: Any = val
    for part in name.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    if v is None:
        return math.nan
    return -float(v) if name.split(".")[-1] in LOWER_IS_BETTER else float(v)


def selection_score(val: dict[str, Any], select_by: str = "") -> list[float]:
    """What best.pt maximizes, compared as a list: `select_by` first, then -loss.

    Unset (`default_select_by`): balanced accuracy; on a seizure cache (validation `events`
    present) the event metric comes first: the mean NEDC OVLP sensitivity at 1, 2.5, 5 and 10
    FA/24h (`event_metrics`' `mean_sensitivity`), because that is what TUSZ results are
    compared by and window accuracy does not track it, then balanced accuracy. The loss breaks
    ties because small validation sets saturate at balanced accuracy 1.0; NaN (undefined)
    counts as the worst score.
    """
    if select_by:
        score = [_metric(val, select_by), -val["loss"]]
    else:
        score = [val["balanced_accuracy"], -val["loss"]]
        if val.get("events"):
            score.insert(0, val["events"]["mean_sensitivity"])
    return [-math.inf if v is None or math.isnan(v) else v for v in score]


# ---------------------------------------------------------------------------------------------
# Seizure events
# ---------------------------------------------------------------------------------------------


def window_starts_s(reader: Any, recording: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Each window's start in seconds of its recording (a cache row -> the recording's clock)."""
    r = reader.recordings
    return (start - r["offset"][recording]) / reader.sfreq + r["t0_s"][recording]


def detect_recordings(
    prob: np.ndarray,
    recording: np.ndarray,
    starts_s: np.ndarray,
    window_s: float,
    durations_s: dict[int, float],
    pp: Any,
    threshold: float | None = None,
) -> dict[int, np.ndarray]:
    """Per recording (every key of `durations_s`), its detected events (n, 3): onset_s,
    offset_s, confidence; `pp` a PostprocessConfig, `threshold` overriding its own."""
    order = np.lexsort((starts_s, recording))
    rec, st, p = recording[order], starts_s[order], prob[order]
    keys = np.array(sorted(durations_s), dtype=np.int64)
    lo = np.searchsorted(rec, keys, side="left")
    hi = np.searchsorted(rec, keys, side="right")
    th = pp.threshold if threshold is None else threshold
    out = {}
    for k, a, b in zip(keys.tolist(), lo.tolist(), hi.tolist(), strict=True):
        d = detect_events(
            p[a:b], st[a:b], window_s, th, pp.smooth_windows, pp.min_duration_s,
            pp.merge_gap_s, durations_s[k],
        )  # fmt: skip
        out[k] = np.column_stack([d.onset_s, d.offset_s, d.confidence]).reshape(-1, 3)
    return out


def event_metrics(
    prob: np.ndarray,
    recording: np.ndarray,
    starts_s: np.ndarray,
    window_s: float,
    refs: CacheReferences,
    pp: Any,
) -> dict[str, Any]:
    """Seizure events from window probabilities, scored (NEDC OVLP) against the cache's events.

    prob: each window's seizure probability; recording: its row in the cache's recordings
    table; starts_s: its start in seconds of the recording; refs: `scoring.cache_references`;
    pp: a PostprocessConfig. The recordings scored are those with windows here. Returns the
    scores at `pp.threshold` (sensitivity, precision, f1, fa_per_24h), the sensitivity at 1,
    2.5, 5 and 10 FA/24h read off the curve of detection thresholds `SWEEP_THRESHOLDS`
    (`scoring.operating_points`: interpolated on the curve's upper envelope), their mean, and
    `curve`, the (fa_per_24h, sensitivity) of every swept threshold (the report plots it).
    """
    pos = {int(r): i for i, r in enumerate(refs.rows.tolist())}
    rows = [int(r) for r in np.unique(recording).tolist() if int(r) in pos]
    durations = {r: refs.durations_s[pos[r]] for r in rows}
    ref_events = [refs.events[pos[r]] for r in rows]
    curve, at = [], None
    for th in sorted({*SWEEP_THRESHOLDS, float(pp.threshold)}):
        hyp = detect_recordings(prob, recording, starts_s, window_s, durations, pp, th)
        s = score(ref_events, [hyp[r][:, :2] for r in rows], list(durations.values()))
        seiz = s.labels["seiz"]
        point = {
            "threshold": th,
            "sensitivity": seiz.sensitivity,
            "precision": seiz.precision,
            "f1": seiz.f1,
            "fa_per_24h": seiz.fa_per_24h,
        }
        curve.append(point)
        if th == float(pp.threshold):
            at = point
    assert at is not None
    ops = operating_points(curve)
    at_fa = {f"{p['fa_per_24h']:g}": p["sensitivity"] for p in ops}
    return {
        "method": EVENT_METHOD,
        **at,
        "n_recordings": len(rows),
        "duration_s": float(sum(durations.values())),
        "sensitivity_at_fa_per_24h": at_fa,
        "mean_sensitivity": float(np.mean(list(at_fa.values()))),
        "curve": [{"fa_per_24h": p["fa_per_24h"], "sensitivity": p["sensitivity"]} for p in curve],
    }


def seizure_column(label_names: tuple[str, ...]) -> int:
    """The column of the seizure class in a seizure cache's probabilities."""
    return list(label_names).index(TUSZ_LABELS[1])


# ---------------------------------------------------------------------------------------------
# Subject tasks: embeddings of held-out subjects
# ---------------------------------------------------------------------------------------------

# Pairs scored per kind (same / different subject): enough for EER to +-0.005, bounded cost.
MAX_PAIRS = 20_000


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> float:
    """The error rate where false accepts equal false rejects (ROC: fpr = 1 - tpr)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(same, scores)
    fnr = 1 - tpr
    k = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[k] + fnr[k]) / 2)


def subject_metrics(embeddings: np.ndarray, subject: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Verification and identification scores of window embeddings `(n, d)` by subject.

    - pair_auroc, eer: cosine similarity of up to MAX_PAIRS same-subject and as many
      different-subject pairs (drawn with `seed`, so every epoch scores the same pairs);
    - identification_top1: each subject enrolled as the centroid of the first half of its
      windows (in dataset order: by recording, then time), each window of the second half
      identified by its nearest centroid (cosine).
    NaN where undefined (fewer than two subjects).
    """
    from sklearn.metrics import roc_auc_score

    subject = np.asarray(subject)
    z = np.asarray(embeddings, dtype=np.float64)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    names, code = np.unique(subject, return_inverse=True)
    m: dict[str, Any] = {"n_windows": int(len(z)), "n_subjects": int(len(names))}
    count = np.bincount(code, minlength=len(names))
    if len(names) < 2 or not (count >= 2).any():
        return {**m, "pair_auroc": math.nan, "eer": math.nan, "identification_top1": math.nan}
    rng = np.random.default_rng(seed)
    order = np.argsort(code, kind="stable")
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    multi = np.flatnonzero(count >= 2)
    s = multi[rng.integers(0, len(multi), MAX_PAIRS)]
    k1 = (rng.random(MAX_PAIRS) * count[s]).astype(np.int64)
    k2 = (k1 + 1 + (rng.random(MAX_PAIRS) * (count[s] - 1)).astype(np.int64)) % count[s]
    same_a, same_b = order[first[s] + k1], order[first[s] + k2]
    diff_a = rng.integers(0, len(z), MAX_PAIRS)
    diff_b = rng.integers(0, len(z), MAX_PAIRS)
    keep = code[diff_a] != code[diff_b]
    a = np.concatenate([same_a, diff_a[keep]])
    b = np.concatenate([same_b, diff_b[keep]])
    same = np.concatenate([np.ones(len(same_a)), np.zeros(int(keep.sum()))])
    scores = (z[a] * z[b]).sum(1)
    m["pair_auroc"] = float(roc_auc_score(same, scores))
    m["eer"] = equal_error_rate(scores, same)
    # Identification: enroll the first half of each subject's windows, identify the rest.
    rank_in_subject = np.empty(len(z), np.int64)
    rank_in_subject[order] = np.arange(len(z)) - np.repeat(first, count)
    enroll = rank_in_subject < (count[code] + 1) // 2
    probe = ~enroll
    centroids = np.zeros((len(names), z.shape[1]))
    np.add.at(centroids, code[enroll], z[enroll])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    guess = (z[probe] @ centroids.T).argmax(1)
    m["identification_top1"] = float((guess == code[probe]).mean()) if probe.any() else math.nan
    return m


def subject_selection_score(val: dict[str, Any], select_by: str = "") -> list[float]:
    """What best.pt maximizes for the subject tasks: `select_by` (default -EER), then
    identification top-1."""
    first = _metric(val, select_by) if select_by else -val["eer"]
    score = [first, val["identification_top1"]]
    return [-math.inf if math.isnan(v) else v for v in score]
