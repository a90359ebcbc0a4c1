"""The BIDS layout (`corpus.layout: bids`): what a BIDS dataset says about its recordings.

Owns reading a BIDS tree's own description of its recordings, through mne-bids where it parses
names: subject, session, task and run from each file name's entities; the label of each
subject from a `participants.tsv` column (`corpus.label_column`); the split from another
column (`corpus.split_column`; else `corpus.subject_splits`, which the index stage applies to
every layout); events from the recording's
`*_events.tsv` (onset, duration, `trial_type`, else `value`); bad channels from its
`*_channels.tsv` (`status` = bad), which the index types `channels.BAD_TYPE` so that every
consumer treats them as missing. This is how OpenNeuro datasets and CamCAN-style MEG arrive.

    brainpipe index --raw /data/ds002778 --index work/index.npz \\
        --set corpus.layout=bids --set corpus.label_column=group \\
        --set "corpus.extensions=[.edf, .bdf, .vhdr, .set, .fif, .ds]"

The index stores subject "01" for `sub-01`, session "a" for `ses-a`, and the task and run as
the recording's token (`task-rest_run-01`). Only files under `sub-*` directories are
recordings (not `derivatives/`, `sourcedata/`); the second and later parts of a split FIF
(`_split-02_meg.fif`) belong to the first and are not indexed on their own. Edits to a
sidecar (`events.tsv`, `channels.tsv`, `participants.tsv`) do not change a recording's size
or mtime: re-index with `--force` after them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from brainpipe.annotations import Event
from brainpipe.channels import mark_bad
from brainpipe.corpus import Facts
from brainpipe.errors import BrainpipeError

_NA = ("", "n/a", "N/A", "NaN", "nan")


def read_tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A BIDS `.tsv` (tab-separated, header row) as its columns and rows; errors name the file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t")
            rows = [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BrainpipeError(f"{path}: cannot read ({e})") from e


def bids_recordings(candidates: Iterable[str]) -> list[str]:
    """The scan's candidate paths that are BIDS recordings: under `sub-*`, first split part only."""
    from mne_bids import get_entities_from_fname

    out = []
    for rel in candidates:
        parts = rel.split("/")
        if not parts[0].startswith("sub-"):
            continue  # derivatives/, sourcedata/, code/, stimuli/ ...
        split = get_entities_from_fname(parts[-1], on_error="ignore").get("split")
        if split is None or int(split) == 1:
            out.append(rel)
    return out


def sidecar(relpath: str, suffix: str) -> str:
    """`sub-01_task-rest_run-01_eeg.edf` -> `sub-01_task-rest_run-01_<suffix>.tsv`, same folder."""
    head, _, name = relpath.rstrip("/").rpartition("/")
    stem = name.split(".", 1)[0]
    entities = stem.rsplit("_", 1)[0] if "_" in stem else stem
    parts = [p for p in entities.split("_") if not p.startswith("split-")]
    return f"{head}/{'_'.join(parts)}_{suffix}.tsv" if head else f"{'_'.join(parts)}_{suffix}.tsv"


class BidsLayout:
    """Facts, events and bad channels of a BIDS dataset's recordings (see the module doc)."""

    def __init__(self, root: str | Path, corpus: Any):
        self.root = Path(root)
        if not (self.root / "dataset_description.json").is_file():
            raise BrainpipeError(
                f"{self.root}: not a BIDS dataset root (no dataset_description.json); pass --raw "
                "with the folder that holds it, or use corpus.layout=generic"
            )
        self.label_column = corpus.label_column
        self.split_column = corpus.split_column
        self.by_subject: dict[str, dict[str, str]] = {}
        wanted = [c for c in (self.label_column, self.split_column) if c]
        participants = self.root / "participants.tsv"
        if participants.is_file():
            columns, rows = read_tsv(participants)
            self.by_subject = {r.get("participant_id", "").removeprefix("sub-"): r for r in rows}
            absent = [c for c in wanted if c not in columns]
            if absent:
                raise BrainpipeError(
                    f"{participants}: no column {', '.join(map(repr, absent))} (corpus.label_column/"
                    f"split_column); its columns: {', '.join(columns)}"
                )
        elif wanted:
            raise BrainpipeError(
                f"{participants}: not found; corpus.label_column/split_column read it"
            )

    def _column(self, subject: str, column: str | None) -> str:
        if not column:
            return ""
        value = self.by_subject.get(subject, {}).get(column, "")
        return "" if value in _NA else value

    def __call__(self, relpath: str) -> Facts:
        from mne_bids import get_entities_from_fname

        name = relpath.rstrip("/").rpartition("/")[2]
        ent = get_entities_from_fname(name, on_error="ignore")
        subject = ent.get("subject") or ""
        token = "_".join(
            f"{key}-{ent[full]}"
            for key, full in (("task", "task"), ("acq", "acquisition"), ("run", "run"))
            if ent.get(full)
        )
        return Facts(
            split=self._column(subject, self.split_column),
            label=self._column(subject, self.label_column),
            subject=subject,
            session=ent.get("session") or "",
            token=token,
        )

    def events(self, relpath: str) -> tuple[Event, ...]:
        """The recording's `*_events.tsv` as events (label: trial_type, else value)."""
        path = self.root / sidecar(relpath, "events")
        if not path.is_file():
            return ()
        columns, rows = read_tsv(path)
        if "onset" not in columns:
            raise BrainpipeError(f"{path}: no 'onset' column; its columns: {', '.join(columns)}")
        out = []
        for k, row in enumerate(rows):
            try:
                onset = float(row["onset"])
                duration = 0.0 if row.get("duration", "") in _NA else float(row["duration"])
            except ValueError as e:
                raise BrainpipeError(
                    f"{path}: row {k + 2}: onset/duration not a number ({e})"
                ) from e
            label = next(
                (row[c] for c in ("trial_type", "value") if row.get(c, "") not in _NA), "event"
            )
            out.append(Event(onset, onset + duration, label))
        return tuple(out)

    def bad_channels(self, relpath: str) -> frozenset[str]:
        """Channel names the recording's `*_channels.tsv` marks `status` bad."""
        path = self.root / sidecar(relpath, "channels")
        if not path.is_file():
            return frozenset()
        _, rows = read_tsv(path)
        return frozenset(r.get("name", "") for r in rows if r.get("status", "").lower() == "bad")

    def sidecars(self, relpath: str, read: tuple) -> tuple[tuple[Event, ...], tuple]:
        """Events of a recording, and its index row with bad channels typed `BAD_TYPE`.

        `read` is the index stage's header tuple: labels at 7, channel types at 9."""
        bad = self.bad_channels(relpath)
        if bad:
            read = (*read[:9], mark_bad(read[7], read[9], bad), *read[10:])
        return self.events(relpath), read
