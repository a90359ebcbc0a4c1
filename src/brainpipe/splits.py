"""Subjects across splits: a subject in two splits leaks its recordings from training into
evaluation, and the scores then measure memory of the subject instead of generalization.

Owns the one rule for finding such subjects, the warning line `index` and `build-cache` print
under their summaries, and the check `train` runs before any work (an error unless
`train.allow_subject_overlap` is set). Recordings without a subject or without a split are never
counted.

    overlap = subjects_in_several_splits(index.split, index.subject)   # {"aaaaaaab": ("eval", "train")}
    line = overlap_warning(index.split, index.subject)                  # "" when none
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from brainpipe.errors import BrainpipeError


def subjects_in_several_splits(
    split: Sequence[str] | np.ndarray, subject: Sequence[str] | np.ndarray
) -> dict[str, tuple[str, ...]]:
    """Each subject found in more than one split, with those splits (sorted)."""
    split = np.asarray(split, dtype=str)
    subject = np.asarray(subject, dtype=str)
    known = (split != "") & (subject != "") & ~np.char.startswith(subject, "recording:")
    if not known.any():
        return {}
    # sets, not np.unique: numpy 2.4's unique loads numpy.ma (~10 ms of every index's start-up)
    splits_of: dict[str, set[str]] = {}
    for s, sp in zip(subject[known].tolist(), split[known].tolist(), strict=True):
        splits_of.setdefault(s, set()).add(sp)
    return {s: tuple(sorted(v)) for s, v in sorted(splits_of.items()) if len(v) > 1}


def _describe(overlap: dict[str, tuple[str, ...]]) -> str:
    first = ", ".join(f"{s} ({'/'.join(v)})" for s, v in list(overlap.items())[:3])
    more = f" and {len(overlap) - 3} more" if len(overlap) > 3 else ""
    return f"{len(overlap)} subjects are in more than one split: {first}{more}"


def overlap_warning(split, subject) -> str:
    """The summary line for a table with subjects in several splits; "" when there are none."""
    overlap = subjects_in_several_splits(split, subject)
    if not overlap:
        return ""
    return f"warning: {_describe(overlap)}; their windows leak between training and evaluation"


def check_subject_overlap(split, subject, allow: bool, source: str) -> None:
    """Raise `BrainpipeError` naming `source` when a subject is in several splits, unless `allow`."""
    overlap = subjects_in_several_splits(split, subject)
    if overlap and not allow:
        raise BrainpipeError(
            f"{source}: {_describe(overlap)}; fix the splits (corpus.subject_splits, the manifest "
            "or the layout) and rebuild, or set train.allow_subject_overlap=true to train anyway"
        )


def check_cache_subjects(reader, train_cfg) -> None:
    """`check_subject_overlap` over a cache's finished recordings (what `train` calls)."""
    from brainpipe.cachefile import STATUS_DONE  # h5py stays off the `index` start-up path

    # recordings without a subject count as their own subject and so never overlap
    done = reader.recordings["status"] == STATUS_DONE
    subject = reader.recordings["subject"].astype(str)[done]
    split = reader.recordings["split"].astype(str)[done]
    check_subject_overlap(split, subject, train_cfg.allow_subject_overlap, str(reader.path))
