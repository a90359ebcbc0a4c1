"""The text of `brainpipe score`: the per-method report and its `--json` form.

Renders the dicts `score.score_trees` returns (one per method: `scoring.Score.to_dict()` with
`unpaired_references`, `unknown_labels` and, with a sweep, `operating_points`).

    print(score_json(results) if as_json else score_report(results))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) and not float(v).is_integer() else f"{v:g}"


def score_report(results: Sequence[dict[str, Any]]) -> str:
    """The text `score` prints: per method, the label totals, operating points, recordings."""
    out = []
    for r in results:
        hours = r["duration_s"] / 3600
        head = f"{r['method']}: {r['n_recordings']} recordings, {hours:.2f} h scored"
        if r["unpaired_references"]:
            head += f" ({r['unpaired_references']} reference recordings without a hypothesis)"
        out.append(head)
        cols = [
            "targets",
            "hits",
            "misses",
            "false_alarms",
            "sensitivity",
            "precision",
            "f1",
            "fa_per_24h",
        ]
        out.append("  label " + " ".join(f"{c:>12}" for c in cols))
        rows = [*r["labels"].items(), *([("total", r["total"])] if r.get("total") else [])]
        for lab, v in rows:
            out.append(f"  {lab:<5} " + " ".join(f"{_fmt(v[c]):>12}" for c in cols))
        for p in r.get("operating_points", []):
            mark = " (no threshold reaches this FA rate)" if p["beyond_curve"] else ""
            out.append(
                f"  sensitivity at {p['fa_per_24h']:g} FA/24h: {_fmt(p['sensitivity'])}{mark}"
            )
        out.append("  recording hits misses false_alarms")
        for rec in r["recordings"]:
            out.append(
                f"  {rec['name']} {_fmt(rec['hits'])} {_fmt(rec['misses'])} {_fmt(rec['false_alarms'])}"
            )
        if r["unknown_labels"]:
            out.append(
                f"  labels counted as seizure but not TUSZ seizure types: {r['unknown_labels']}"
            )
    return "\n".join(out)


def score_json(results: Sequence[dict[str, Any]]) -> str:
    """`--json`: one object for one method, an array for several."""
    return json.dumps(results[0] if len(results) == 1 else list(results), indent=2)
