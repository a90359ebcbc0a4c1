"""Write a seeded synthetic TUAB / TUSZ / MEG corpus (see `brainpipe.synthetic`).

    python scripts/make_synthetic_corpus.py --layout tuab --out /tmp/tuab --n-subjects 20 --seed 0
    python scripts/make_synthetic_corpus.py --layout tusz --out /tmp/tusz --n-subjects 12
    python scripts/make_synthetic_corpus.py --layout tuab --out /tmp/tuab_bench \\
        --n-subjects 2000 --n-recordings 2717 --duration 10 30
"""

from __future__ import annotations

import argparse
import sys
import time

from brainpipe.errors import BrainpipeError
from brainpipe.synthetic import make_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layout", required=True, choices=("tuab", "tusz", "meg"))
    parser.add_argument(
        "--out", required=True, help="output directory (new, empty, or a previous synthetic corpus)"
    )
    parser.add_argument("--n-subjects", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--duration",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="seconds per recording (default 60 180; meg 10 30)",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(1, 2),
        help="sessions per subject",
    )
    parser.add_argument(
        "--n-recordings", type=int, help="exact number of recordings (default: from sessions)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty directory that is not a synthetic corpus",
    )
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    try:
        summary = make_corpus(
            args.out,
            args.layout,
            n_subjects=args.n_subjects,
            seed=args.seed,
            duration_s=tuple(args.duration) if args.duration else None,
            sessions_per_subject=tuple(args.sessions),
            n_recordings=args.n_recordings,
            overwrite=args.overwrite,
        )
    except BrainpipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0

    n = len(summary.recordings)
    print(
        f"wrote {n} recordings ({summary.n_subjects} subjects, {summary.total_seconds / 3600:.2f} h, "
        f"{summary.n_bytes / 1e6:.1f} MB) to {summary.root} in {elapsed:.1f} s ({n / elapsed:.0f} files/s)"
    )
    for (split, label), count in summary.counts.items():
        print(f"  {split or '-':6} {label or '-':9} {count}")
    if summary.layout == "tusz":
        print(f"  {summary.n_seizures} seizures; {len(summary.annotation_files)} annotation files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
