"""The text of the data path: what `index`, `build-cache`, `cache-set`, `inspect` and `verify` print.

Renders `build_index`'s `ScanResult`, `Index.summary()`, `cache.BuildResult`,
`CacheReader.summary()` (of a cache or a set), `cache.VerifyReport` and a cache set's manifest;
the stages and formats return that data and never build these lines themselves.

    print(scan_line(build_index(raw, out, cfg)))
    print(index_table(Index.load(out).summary()))
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from brainpipe.channels import coverage_line
from brainpipe.config import STANDARD_1020
from brainpipe.errors import reason_kind
from brainpipe.splits import overlap_warning

# --- index ---


def scan_line(result: Any) -> str:
    """One line: what a scan (an `index.ScanResult`) indexed, read, reused, removed and skipped
    (by kind)."""
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
    line = (
        f"indexed {len(idx)} recordings ({hours:.1f} h, {len(set(idx.subject.tolist()))} subjects) in "
        f"{result.seconds:.2f} s: {result.n_read} read, {result.n_reused} unchanged, {result.n_removed} removed{skipped}{warned}"
        + (
            f"; {result.transferred / 1e6:.2f} MB in {result.requests} requests from {idx.raw_root}"
            if getattr(result, "requests", 0)
            else ""
        )
    )
    extra = [annotations_line(idx.warnings)]
    extra.append(overlap_warning(idx.split, idx.subject) if len(idx) else "")
    return "\n".join([line, *(x for x in extra if x)])


def annotations_line(warnings: list[dict[str, str]]) -> str:
    """One line counting a TUSZ index's annotation problems from its warnings ("" when none):
    missing and unparsable files (recordings indexed unlabelled), events clipped at the end of
    their recording, labels outside TUH's lists and what they were counted as."""
    from brainpipe.annotations import (
        ANNOTATIONS_MISSING,
        ANNOTATIONS_UNPARSABLE,
        EVENTS_CLIPPED,
        UNKNOWN_LABEL,
    )

    kinds = Counter()
    clipped = 0
    unknown: Counter[str] = Counter()
    for w in warnings:
        kind, _, detail = w["reason"].partition(": ")
        kinds[kind] += 1
        if kind == EVENTS_CLIPPED:
            clipped += int(detail.split()[0])
        elif kind == UNKNOWN_LABEL:
            unknown[detail] += 1
    parts = []
    bad = [f"{kinds[k]} {k.split()[1]}" for k in (ANNOTATIONS_MISSING, ANNOTATIONS_UNPARSABLE)]
    if kinds[ANNOTATIONS_MISSING] or kinds[ANNOTATIONS_UNPARSABLE]:
        parts.append(f"{', '.join(bad)} (recordings indexed unlabelled)")
    if clipped:
        n = kinds[EVENTS_CLIPPED]
        parts.append(f"{clipped} events clipped at the end of {n} recording{'s' if n != 1 else ''}")
    if unknown:
        parts.append(
            "unknown labels "
            + ", ".join(
                f"{d} in {n} recording{'s' if n != 1 else ''}" for d, n in sorted(unknown.items())
            )
        )
    return "annotations: " + "; ".join(parts) if parts else ""


def index_output_line(result: Any, index_path: str | os.PathLike) -> str:
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
    lines.append(coverage_line((r["channels"] for r in recs), STANDARD_1020))
    errs = summary["errors"]
    lines.append(f"errors: {len(errs)}")
    for e in errs[:20]:
        lines.append(f"  {e['path']}: {e['reason']}")
    if len(errs) > 20:
        lines.append(f"  ... and {len(errs) - 20} more (see --json)")
    warns = summary.get("warnings", [])
    ann = annotations_line(warns)
    if ann:
        lines.append(ann)
    if warns:  # indexed, with a repair or a doubt (e.g. an unparsable start date)
        lines.append(f"warnings: {len(warns)}")
        lines += [f"  {w['path']}: {w['reason']}" for w in warns[:20]]
        if len(warns) > 20:
            lines.append(f"  ... and {len(warns) - 20} more (see --json)")
    return "\n".join(lines)


# --- cache ---


def build_summary_text(result) -> str:
    """What `brainpipe build-cache` prints for a `cache.BuildResult`."""
    if result.up_to_date:
        return f"{result.cache_path} is up to date ({result.n_written} recordings, {result.n_windows} windows); pass --force to rebuild"
    mbps = result.raw_bytes / 1e6 / result.seconds if result.seconds > 0 else 0.0
    lines = [
        f"wrote {result.cache_path}: {result.n_written} recordings ({result.hours:.2f} h), {result.n_windows} windows, "
        f"{result.bytes / 1e6:.1f} MB on disk, {result.seconds:.1f} s, {mbps:.1f} MB/s of raw input"
        + (f", resumed after {result.resumed} done" if result.resumed else ""),
        f"skipped {result.n_skipped} recordings" + (":" if result.skipped else ""),
    ]
    reasons = Counter(reason_kind(r) for _, r in result.skipped)
    for reason, n in reasons.most_common(10):
        lines.append(f"  {n:>5}  {reason}")
    lines.append("windows per split and label: " + window_counts_text(result.counts))
    return "\n".join(lines + list(result.warnings))


def window_counts_text(counts: dict[str, dict[str, int]]) -> str:
    """Windows per split and label on one line: `eval: abnormal=3, normal=4; train: ...`."""
    return "; ".join(
        f"{s or '-'}: " + ", ".join(f"{k}={v}" for k, v in sorted(c.items()))
        for s, c in sorted(counts.items())
    )


def verify_text(report) -> str:
    """What `brainpipe verify` prints for a `cache.VerifyReport`."""
    head = f"verify {report.path}: {'OK' if report.ok else 'FAILED'} ({report.checked_windows} windows re-preprocessed from raw, max |error| {report.max_abs_error:.4g})"
    return "\n".join([head] + [f"  {p}" for p in report.problems])


def verify_json(report) -> dict[str, Any]:
    """A `cache.VerifyReport` as `inspect --verify --json` prints it: its data and its text."""
    return {**report.as_dict(), "text": verify_text(report)}


def format_cache_table(s: dict[str, Any]) -> str:
    """`brainpipe inspect CACHE`: a `CacheReader.summary()`, with `verify` when it was run."""
    lines = [
        f"cache {s['path']}  format v{s['format_version']}  {s['bytes'] / 1e6:.1f} MB  {s['dtype']}",
        f"{s['n_recordings']} recordings, {s['n_subjects']} subjects, {s['hours']:.2f} h, {s['n_windows']} windows "
        f"of {s['window_samples']} samples (stride {s['stride_samples']}) at {s['sfreq']:g} Hz",
        f"channels ({len(s['channels'])}): "
        + (channel_type_summary(s["channels"]) or " ".join(s["channels"])),
        *(
            [
                f"set of {len(s['members'])} member caches: "
                + ", ".join(m["path"] for m in s["members"])
            ]
            if "members" in s
            else []
        ),
        "",
        f"{'split':<8} " + " ".join(f"{k:>10}" for k in sorted(s["labels"])),
    ]
    for split, counts in sorted(s["windows_by_split_label"].items()):
        lines.append(
            f"{split or '-':<8} " + " ".join(f"{counts.get(k, 0):>10}" for k in sorted(s["labels"]))
        )
    lines.append(f"skipped: {len(s['skipped'])}")
    for e in s["skipped"][:20]:
        lines.append(f"  {e['path']}: {e['reason']}")
    if "verify" in s:
        lines.append(s["verify"].get("text", ""))
    return "\n".join(lines)


def lost_worker_line(path: str, pid: int, how: str, retried: bool) -> str:
    """The line `build-cache` prints when a worker dies with a recording in flight."""
    then = (
        "retrying it in a fresh worker" if retried else "skipping it (its second worker died too)"
    )
    return f"build-cache: worker {pid} was killed ({how}) while preprocessing {path}; {then}"


def channel_type_summary(channels: list[str] | tuple[str, ...]) -> str | None:
    """ "306 MEG: 204 grad, 102 mag" for a cache of MEG channels; None when there is none.

    Types from Elekta/MEGIN (Neuromag) names, as mne assigns them: "MEG nnn1" is a magnetometer,
    "MEG nnn2"/"MEG nnn3" a planar gradiometer. Other channels are counted by their prefix.
    """
    meg = [c for c in channels if c.upper().startswith("MEG")]
    if not meg:
        return None
    mag = sum(1 for c in meg if c.rstrip()[-1:] == "1")
    grad = sum(1 for c in meg if c.rstrip()[-1:] in ("2", "3"))
    parts = [f"{grad} grad"] * bool(grad) + [f"{mag} mag"] * bool(mag)
    if len(meg) - mag - grad:
        parts.append(f"{len(meg) - mag - grad} other")
    text = f"{len(meg)} MEG: {', '.join(parts)}"
    rest = [c for c in channels if not c.upper().startswith("MEG")]
    if rest:
        kinds: dict[str, int] = {}
        for c in rest:
            kind = c.split()[0].upper() if c.split() else c
            kinds[kind] = kinds.get(kind, 0) + 1
        text += "; " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return text


def cache_set_line(manifest: dict[str, Any], out: str | os.PathLike) -> str:
    """What `brainpipe cache-set` prints for the manifest `write_cache_set` wrote."""
    n = sum(x["n_windows"] for x in manifest["members"])
    return f"wrote {out}: {len(manifest['members'])} member caches, {n} windows"
