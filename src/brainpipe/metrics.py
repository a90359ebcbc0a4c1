"""Metrics of a model's predictions, torch-free (numpy and scikit-learn), as TUAB/TUSZ papers report them.

Owns `compute_metrics` (per window and per recording, from class probabilities) and
`selection_score`, the rule that picks best.pt among epochs. The task ("abnormal", "seizure" or
"" for another cache) comes from the cache (`CacheReader.task`), never from label names.

    m = compute_metrics(probs, labels, recordings, task="seizure")
    m["balanced_accuracy"], m["auroc"], m["sensitivity"], m["recording_auroc"]
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np


def compute_metrics(
    probs: np.ndarray, labels: np.ndarray, recordings: np.ndarray, task: str = ""
) -> dict[str, Any]:
    """Window and recording metrics of class probabilities `(n_windows, n_classes)`.

    Per window: loss, balanced accuracy (argmax), AUROC, AUPRC (of the last class for two
    classes; one-vs-rest macro averages otherwise); the seizure task adds sensitivity and
    specificity. Per recording: the mean of its windows' probabilities against its label (the
    highest of its windows' labels: the TUAB recording label, "has a seizure" for TUSZ). NaN
    where undefined (one class only).
    """
    labels = np.asarray(labels, dtype=np.int64)
    with warnings.catch_warnings():
        # one-class subsets (a TUSZ eval set where every recording has a seizure) are expected
        warnings.simplefilter("ignore", UserWarning)
        m: dict[str, Any] = {}
        p_true = probs[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
        m["loss"] = float(-np.log(np.clip(p_true, 1e-12, None)).mean()) if len(labels) else math.nan
        m["balanced_accuracy"], m["auroc"], m["auprc"] = _scores(probs, labels)
        if task == "seizure":
            pred = probs.argmax(1)
            pos, neg = labels == 1, labels == 0
            m["sensitivity"] = float((pred[pos] == 1).mean()) if pos.any() else math.nan
            m["specificity"] = float((pred[neg] == 0).mean()) if neg.any() else math.nan
        rec_ids, inverse = np.unique(recordings, return_inverse=True)
        rec_probs = np.zeros((len(rec_ids), probs.shape[1]))
        np.add.at(rec_probs, inverse, probs)
        rec_probs /= np.maximum(np.bincount(inverse, minlength=len(rec_ids)), 1)[:, None]
        rec_labels = np.full(len(rec_ids), -1, np.int64)
        np.maximum.at(rec_labels, inverse, labels)
        (
            m["recording_balanced_accuracy"],
            m["recording_auroc"],
            m["recording_auprc"],
        ) = _scores(rec_probs, rec_labels)
    m["n_windows"] = int(len(labels))
    m["n_recordings"] = int(len(rec_ids))
    return m


def _scores(p: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(balanced accuracy, AUROC, AUPRC); the last two NaN with one class present."""
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

    if len(y) == 0:
        return math.nan, math.nan, math.nan
    bacc = float(balanced_accuracy_score(y, p.argmax(1)))
    if len(np.unique(y)) < 2:
        return bacc, math.nan, math.nan
    k = p.shape[1]
    if k == 2:
        return bacc, float(roc_auc_score(y, p[:, 1])), float(average_precision_score(y, p[:, 1]))
    onehot = np.eye(k)[y]
    present = onehot.sum(0) > 0
    return (
        bacc,
        float(roc_auc_score(onehot[:, present], p[:, present], average="macro")),
        float(average_precision_score(onehot[:, present], p[:, present], average="macro")),
    )


def selection_score(val: dict[str, Any]) -> list[float]:
    """What best.pt maximizes, compared as a list: balanced accuracy first, then -loss.

    The loss breaks ties because small validation sets saturate at balanced accuracy 1.0; NaN
    (undefined) counts as the worst score.
    """
    score = [val["balanced_accuracy"], -val["loss"]]
    return [-math.inf if math.isnan(v) else v for v in score]
