"""Summaries and tables for people; formats return data.

Owns every text rendering of what a stage did or what a file holds: the line `brainpipe index`
prints, the table `brainpipe inspect INDEX` prints. File formats (`indexfile`, `cachefile`)
return plain data (`Index.summary()`); the CLI prints what these functions return.

    print(scan_line(build_index(raw, out, cfg)))
    print(index_table(Index.load(out).summary()))
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any

from brainpipe.errors import reason_kind

if TYPE_CHECKING:
    from brainpipe.index import ScanResult

# --- index ---


def scan_line(result: ScanResult) -> str:
    """One line: what a scan indexed, read, reused, removed and skipped (by kind)."""
    idx = result.index
    errs = Counter(reason_kind(e["reason"]) for e in idx.errors)
    skipped = (
        f", skipped {sum(errs.values())} ({', '.join(f'{n} {k}' for k, n in errs.most_common())})"
        if errs
        else ""
    )
    n_warn = len(idx.warnings)
    warned = f", {n_warn} warning{'s' if n_warn != 1 else ''} (see inspect)" if n_warn else ""
    hours = float(idx.duration_s.sum()) / 3600 if len(idx) else 0.0
    return (
        f"indexed {len(idx)} recordings ({hours:.1f} h, {len(set(idx.subject.tolist()))} subjects) in "
        f"{result.seconds:.2f} s: {result.n_read} read, {result.n_reused} unchanged, {result.n_removed} removed{skipped}{warned}"
    )


def index_output_line(result: ScanResult, index_path: str | os.PathLike) -> str:
    """Whether `build_index` wrote the index file or left an unchanged one as it was."""
    return f"wrote {index_path}" if result.written else f"index unchanged: {index_path}"


def index_table(summary: dict[str, Any]) -> str:
    """The human summary `brainpipe inspect INDEX` prints, from `Index.summary()`."""
    recs = summary["recordings"]
    lines = [
        f"index {summary['index_hash']}  layout={summary['layout'] or '-'}  root={summary['raw_root']}",
        f"{summary['n_recordings']} recordings, {summary['n_subjects']} subjects, {summary['hours']:.2f} h, {summary['n_events']} events",
        "",
        f"{'split':<8} {'label':<10} {'recordings':>10} {'hours':>8}",
    ]
    groups: dict[tuple[str, str], list[float]] = {}
    for r in recs:
        groups.setdefault((r["split"] or "-", r["label"] or "-"), []).append(r["duration_s"])
    for (split, label), durs in sorted(groups.items()):
        lines.append(f"{split:<8} {label:<10} {len(durs):>10} {sum(durs) / 3600:>8.2f}")
    rates = Counter(r["sfreq"] for r in recs)
    lines.append("")
    lines.append("sample rates: " + ", ".join(f"{s:g} Hz ({n})" for s, n in sorted(rates.items())))
    errs = summary["errors"]
    lines.append(f"errors: {len(errs)}")
    for e in errs[:20]:
        lines.append(f"  {e['path']}: {e['reason']}")
    if len(errs) > 20:
        lines.append(f"  ... and {len(errs) - 20} more (see --json)")
    warns = summary.get("warnings", [])
    if warns:  # indexed, with a repair or a doubt (e.g. an unparsable start date)
        lines.append(f"warnings: {len(warns)}")
        lines += [f"  {w['path']}: {w['reason']}" for w in warns[:20]]
        if len(warns) > 20:
            lines.append(f"  ... and {len(warns) - 20} more (see --json)")
    return "\n".join(lines)
