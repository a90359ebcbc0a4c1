"""`brainpipe report`: one static HTML page (index.html + PNGs) of one or more run dirs.

Reads only files (`runfiles`: summary.json, metrics.jsonl, predictions.npz; a protocol's
parent run dir: protocol.json and its cells), never torch. Per run dir, side by side:
learning curves (loss and the selection metric, val and eval, per epoch), the eval confusion
matrix, ROC and precision-recall curves (from best.pt's probabilities), window accuracy per
subject, for a seizure run the sensitivity-vs-FA/24h curve, and the metrics table (a
protocol's: mean ± std over its seeds/folds, then each cell). Matplotlib draws through its Agg
canvas (`Figure`, no pyplot state). Also `protocol_text`, the table `train --seeds/--folds`
prints.

    write_report(["runs/a", "runs/b"], "runs/report")   # -> runs/report/index.html
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output
from brainpipe.protocols import mean_std_text
from brainpipe.runfiles import read_history, read_predictions, read_summary

# The metrics of the tables, in this order, where the runs have them.
TABLE_METRICS = (
    "balanced_accuracy", "auroc", "auprc", "cohen_kappa", "f1_macro", "f1_weighted", "loss",
    "recording_balanced_accuracy", "recording_auroc", "recording_cohen_kappa",
    "recording_f1_weighted", "sensitivity", "specificity", "eer", "pair_auroc",
    "identification_top1",
)  # fmt: skip


def protocol_text(summary: dict[str, Any]) -> str:
    """The aggregate of a protocol as lines: each metric's mean ± std over the runs."""
    p = summary["protocol"]
    head = f"{p['n_runs']} runs" + (f", seeds {p['seeds']}" if p.get("seeds") else "")
    head += f", {p['folds']} subject-wise folds" if p.get("folds") else ""
    lines = [head]
    for split in ("eval", "val"):
        m = summary.get(split) or {}
        cells = [f"{k} {mean_std_text(m[k])}" for k in TABLE_METRICS if k in m]
        if m.get("events", {}).get("mean_sensitivity"):
            cells.append(f"ovlp-sens {mean_std_text(m['events']['mean_sensitivity'])}")
        lines.append(f"{split}: " + (", ".join(cells) if cells else "(none)"))
    lines.append(f"wrote {Path(summary['run_dir']) / 'summary.json'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading a run dir
# ---------------------------------------------------------------------------------------------


def _load(run_dir: Path) -> dict[str, Any]:
    """A run: name, summary, and its cells (one for a plain run; each with history and
    predictions)."""
    summary = read_summary(run_dir)
    plan = None
    if (run_dir / "protocol.json").exists():
        plan = json.loads((run_dir / "protocol.json").read_text())
    protocol = plan is not None
    names = list(plan["cells"]) if plan else [""]
    if summary is None and not protocol:
        raise BrainpipeError(
            f"{run_dir}: no summary.json; pass a finished run dir (brainpipe train --run-dir)"
        )
    cells = []
    for name in names:
        d = run_dir / name if name else run_dir
        cells.append(
            {
                "name": name or run_dir.name,
                "summary": read_summary(d) or {},
                "history": read_history(d),
                "predictions": read_predictions(d),
            }
        )
    return {"dir": run_dir, "summary": summary or {}, "protocol": plan, "cells": cells}


def _metric(m: dict[str, Any] | None, name: str) -> float:
    v: Any = m or {}
    for part in name.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return math.nan if v is None or isinstance(v, dict | list) else float(v)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

MAX_NAMED_SUBJECTS = 60  # more subjects than this: one unlabelled bar each, sorted


def _figure(width: float = 4.8, height: float = 3.4):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, out: Path, name: str) -> str:
    with atomic_output(out / name) as tmp:
        fig.savefig(tmp, format="png")
    return name


def learning_curves(run: dict[str, Any], out: Path, stem: str) -> str | None:
    """Loss (train, val, eval) and the selection metric (val, eval) per epoch, every cell."""
    cells = [c for c in run["cells"] if c["history"]]
    if not cells:
        return None
    select = (run["summary"].get("select_by") or cells[0]["summary"].get("select_by")) or (
        "balanced_accuracy"
    )
    fig = _figure(9.6, 3.4)
    ax_loss, ax_sel = fig.subplots(1, 2)
    colors = {"train": "tab:gray", "val": "tab:blue", "eval": "tab:orange"}
    for c in cells:
        epochs = [h["epoch"] for h in c["history"]]
        alpha = 1.0 if len(cells) == 1 else 0.5
        for split in ("train", "val", "eval"):
            loss = [_metric(h.get(split), "loss") for h in c["history"]]
            if not all(math.isnan(v) for v in loss):
                ax_loss.plot(epochs, loss, color=colors[split], alpha=alpha, label=split)
            if split != "train":
                v = [_metric(h.get(split), select) for h in c["history"]]
                if not all(math.isnan(x) for x in v):
                    ax_sel.plot(epochs, v, color=colors[split], alpha=alpha, label=split)
    for ax, title in ((ax_loss, "loss"), (ax_sel, select)):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        if unique:
            ax.legend(unique.values(), unique.keys())
    return _save(fig, out, f"{stem}-curves.png")


def _eval_predictions(run: dict[str, Any]) -> list[tuple[str, dict[str, np.ndarray]]]:
    return [
        (c["name"], c["predictions"]["splits"]["eval"])
        for c in run["cells"]
        if c["predictions"] and "eval" in c["predictions"]["splits"]
    ]


def _label_names(run: dict[str, Any]) -> list[str]:
    for c in run["cells"]:
        if c["predictions"]:
            return c["predictions"]["label_names"]
    return list(
        run["summary"].get("label_names") or run["cells"][0]["summary"].get("label_names", [])
    )


def confusion(run: dict[str, Any], out: Path, stem: str) -> str | None:
    """The eval confusion matrix (summed over a protocol's cells), counts and row shares."""
    from sklearn.metrics import confusion_matrix

    names = _label_names(run)
    preds = _eval_predictions(run)
    if preds:
        cm = sum(
            confusion_matrix(p["label"], p["probs"].argmax(1), labels=np.arange(len(names)))
            for _, p in preds
        )
    else:
        stored = [c["summary"].get("eval", {}).get("confusion_matrix") for c in run["cells"]]
        stored = [np.asarray(x) for x in stored if x]
        if not stored:
            return None
        cm = sum(stored)
    cm = np.asarray(cm)
    fig = _figure(max(4.0, 1.6 + 0.7 * len(names)), 1.4 + 0.6 * len(names))
    ax = fig.subplots()
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}", ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    n = len(preds) if preds else len(run["cells"])
    ax.set_title("eval confusion matrix" + (f" (sum of {n} runs)" if n > 1 else ""))
    return _save(fig, out, f"{stem}-confusion.png")


def roc_pr(run: dict[str, Any], out: Path, stem: str) -> str | None:
    """ROC and precision-recall of eval: the positive (last) class for two classes, each class
    one-vs-rest otherwise; one curve per cell of a protocol."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    preds = _eval_predictions(run)
    names = _label_names(run)
    if not preds:
        return None
    fig = _figure(9.6, 3.6)
    ax_roc, ax_pr = fig.subplots(1, 2)
    classes = [len(names) - 1] if len(names) == 2 else list(range(len(names)))
    drawn = 0
    for cell, p in preds:
        for k in classes:
            y = p["label"] == k
            if y.all() or not y.any():
                continue
            label = (cell + " " if len(preds) > 1 else "") + (names[k] if len(classes) > 1 else "")
            fpr, tpr, _ = roc_curve(y, p["probs"][:, k])
            prec, rec, _ = precision_recall_curve(y, p["probs"][:, k])
            ax_roc.plot(fpr, tpr, label=label.strip() or None)
            ax_pr.plot(rec, prec, label=label.strip() or None)
            drawn += 1
    if not drawn:
        return None
    ax_roc.plot([0, 1], [0, 1], color="lightgray", linestyle="--")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="eval ROC")
    ax_pr.set(xlabel="recall", ylabel="precision", title="eval precision-recall")
    if drawn <= 12 and (len(preds) > 1 or len(classes) > 1):
        ax_roc.legend(fontsize=7)
    return _save(fig, out, f"{stem}-roc-pr.png")


def per_subject(run: dict[str, Any], out: Path, stem: str) -> str | None:
    """Window accuracy of each eval subject (averaged over the cells a subject is scored in)."""
    preds = _eval_predictions(run)
    if not preds:
        return None
    scores: dict[str, list[float]] = {}
    for _, p in preds:
        right = p["probs"].argmax(1) == p["label"]
        for s in np.unique(p["subject"]).tolist():
            scores.setdefault(s, []).append(float(right[p["subject"] == s].mean()))
    subjects = sorted(scores)
    values = [float(np.mean(scores[s])) for s in subjects]
    named = len(subjects) <= MAX_NAMED_SUBJECTS
    if not named:  # too many to name: sorted, so the spread shows
        order = np.argsort(values)
        subjects, values = [subjects[i] for i in order], [values[i] for i in order]
    fig = _figure(max(4.8, 0.25 * len(subjects) + 1.5) if named else 9.6, 3.2)
    ax = fig.subplots()
    ax.bar(range(len(subjects)), values, color="tab:blue")
    if named:
        ax.set_xticks(range(len(subjects)), subjects, rotation=90, fontsize=6)
    else:
        ax.set_xlabel("subjects, sorted by accuracy")
    ax.set_ylim(0, 1)
    ax.set_ylabel("window accuracy")
    ax.set_title(f"eval subjects ({len(subjects)})")
    return _save(fig, out, f"{stem}-subjects.png")


def seizure_curve(run: dict[str, Any], out: Path, stem: str) -> str | None:
    """Sensitivity vs FA/24h (NEDC OVLP over detection thresholds) of a seizure run's eval."""
    curves = [
        (c["name"], c["summary"].get("eval", {}).get("events", {}).get("curve"))
        for c in run["cells"]
    ]
    curves = [(n, cv) for n, cv in curves if cv]
    if not curves:
        return None
    fig = _figure()
    ax = fig.subplots()
    for name, cv in curves:
        pts = sorted((p["fa_per_24h"], p["sensitivity"]) for p in cv if p["fa_per_24h"] is not None)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=".", label=name if len(curves) > 1 else None)
    ax.set(xscale="symlog", xlabel="false alarms per 24 h", ylabel="sensitivity (OVLP)")
    ax.set_ylim(0, 1.02)
    ax.set_title("eval seizure detection")
    return _save(fig, out, f"{stem}-seizure.png")


FIGURES = (learning_curves, confusion, roc_pr, per_subject, seizure_curve)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
.table { overflow-x: auto; max-width: 100%; }
th:first-child, td:first-child { text-align: left; }
.runs { display: flex; gap: 2em; align-items: flex-start; overflow-x: auto; }
.run { flex: 1 1 0; min-width: 30em; overflow: hidden; }
.run img { max-width: 100%; display: block; margin: 0.5em 0; }
"""
# Written into the DOM once every image has loaded: the browser test reads it.
CHECK = """
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
  document.title = "images " + ok + "/" + imgs.length + " - " + document.title;
});
"""


def _value(m: dict[str, Any] | None, key: str, aggregated: bool) -> str:
    v = (m or {}).get(key)
    if aggregated:
        return mean_std_text(v if isinstance(v, dict) else None)
    return "n/a" if v is None or isinstance(v, dict | list) or not math.isfinite(v) else f"{v:.3f}"


def metrics_table(rows: list[tuple[str, dict[str, Any] | None, bool]], by_metric=False) -> str:
    """An HTML table of (name, metrics, aggregated) runs and the TABLE_METRICS they have: one
    row per run, or with `by_metric` one row per metric (narrow: a run's column)."""
    keys = [k for k in TABLE_METRICS if any(k in (m or {}) for _, m, _ in rows)]
    if not keys:
        return "<p>no metrics</p>"
    cells = [[_value(m, k, agg) for k in keys] for _, m, agg in rows]
    names = [html.escape(name) for name, _, _ in rows]
    if by_metric:
        head = "<tr><th>metric</th>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"
        body = "".join(
            f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{c[i]}</td>" for c in cells) + "</tr>"
            for i, k in enumerate(keys)
        )
    else:
        head = "<tr><th>run</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"
        body = "".join(
            f"<tr><td>{n}</td>" + "".join(f"<td>{v}</td>" for v in c) + "</tr>"
            for n, c in zip(names, cells, strict=True)
        )
    return f'<div class="table"><table>{head}{body}</table></div>'


def _run_section(run: dict[str, Any], out: Path, stem: str) -> str:
    """One run's column: what it is, its metrics table(s), its figures."""
    s, d = run["summary"], run["dir"]
    parts = [f"<h2>{html.escape(d.name)}</h2><p><code>{html.escape(str(d))}</code></p>"]
    if run["protocol"]:
        p = run["protocol"]
        what = f"{len(p['cells'])} runs" + (f", seeds {p['seeds']}" if p.get("seeds") else "")
        what += f", {p['folds']} subject-wise folds" if p.get("folds") else ""
        parts.append(f"<p>{html.escape(what)}</p>")
        for split in ("eval", "val"):
            rows = [("mean ± std", s.get(split), True)] if s else []
            rows += [(c["name"], c["summary"].get(split), False) for c in run["cells"]]
            parts.append(f"<h3>{split}</h3>" + metrics_table(rows, by_metric=True))
    else:
        parts.append(
            f"<p>best epoch {s.get('best_epoch', '?')} of {s.get('epochs', '?')}, selected by "
            f"{html.escape(str(s.get('select_by', 'balanced_accuracy')))}</p>"
        )
        rows = [("eval", s.get("eval"), False), ("val", s.get("val"), False)]
        parts.append(metrics_table(rows, by_metric=True))
    for draw in FIGURES:
        name = draw(run, out, stem)
        if name:
            parts.append(f'<img src="{html.escape(name)}" alt="{html.escape(draw.__name__)}">')
    return '<div class="run">' + "".join(parts) + "</div>"


def write_report(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """index.html and its PNGs in `out`, the runs side by side; returns index.html's path."""
    out = Path(out)
    runs = []
    for d in run_dirs:
        if not Path(d).is_dir():
            raise BrainpipeError(f"{d}: no such run dir")
        runs.append(_load(Path(d)))
    out.mkdir(parents=True, exist_ok=True)
    columns = [_run_section(r, out, f"run{i}") for i, r in enumerate(runs)]
    aggregated = [bool(r["protocol"]) for r in runs]
    compare = metrics_table(
        [
            (r["dir"].name, r["summary"].get("eval"), a)
            for r, a in zip(runs, aggregated, strict=True)
        ]
    )
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>brainpipe report</title>'
        f"<style>{STYLE}</style><script>{CHECK}</script></head><body>"
        f"<h1>brainpipe report</h1><h2>eval, side by side</h2>{compare}"
        f'<div class="runs">{"".join(columns)}</div></body></html>\n'
    )
    index = out / "index.html"
    with atomic_output(index) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return index


def report_line(index: Path) -> str:
    """What `brainpipe report` prints."""
    return f"wrote {index} (open it in a browser)"
