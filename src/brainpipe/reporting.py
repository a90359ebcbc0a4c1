"""Text for people: the summaries and tables the CLI prints. Formats and stages return data.

Each section renders the data of one stage or format; none reads a file.
"""

from __future__ import annotations

from typing import Any

# --- cache ---
# Renders `cachefile.CacheReader.summary()`, `cache.BuildResult` and `cache.VerifyReport`;
# imports inside the functions keep the section self-contained.


def build_summary_text(result) -> str:
    """What `brainpipe build-cache` prints for a `cache.BuildResult`."""
    from collections import Counter

    from brainpipe.errors import reason_kind

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
    return "\n".join(lines)


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
        f"channels ({len(s['channels'])}): {' '.join(s['channels'])}",
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
