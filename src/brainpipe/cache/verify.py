"""`brainpipe verify`: a finished cache checked against itself and against its raw files.

The tables must agree (contiguous recording offsets, windows inside written recordings and
grouped by them, subject and per-recording window counts), /signals must be finite and vary,
and randomly drawn windows must match a fresh preprocessing of their raw file
(`workers.process_recording`, read the way the build's worker read it: reader options, BIDS bad
channels, object storage). A cache set is verified member by member.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.bids import BidsLayout, sidecar
from brainpipe.cache.workers import locate_raw_root, process_recording, remote_sources
from brainpipe.cachefile import STATUS_DONE, CacheReader
from brainpipe.cacheset import CacheSetReader, is_cache_set
from brainpipe.config import Config, PreprocessConfig, config_from_dict
from brainpipe.errors import BrainpipeError
from brainpipe.objectstore import ObjectStore, RecordingObjects, remote_worker


def _reprocess(
    root: Path | str, rel: str, cfg: PreprocessConfig, length: int, source: dict
) -> np.ndarray:
    """`process_recording` of a raw file again, local or fetched from object storage."""
    if isinstance(root, Path):
        return process_recording(root / rel, cfg, expected_length=length, **source)[0]
    store = ObjectStore(root)
    src = remote_sources(root, [rel], [0], store)[0]
    if isinstance(src, RecordingObjects):
        job = (0, src, cfg, length, source)

        def run(j: tuple) -> tuple:
            try:
                return j[0], process_recording(j[1], j[2], expected_length=j[3], **j[4])[0], "", 0
            except BrainpipeError as e:  # the temp dir's name is taken out of the reason
                return j[0], None, str(e), 0

        _, x, reason, _ = remote_worker(run, job)
        if x is None:
            raise BrainpipeError(f"{root}/{rel}: {reason}")
        return x
    with store.fetch_to_spool(store.info(rel)) as got:
        return process_recording(got.path, cfg, expected_length=length, **source)[0]


def _scan_signals(r: CacheReader, n_rows: int) -> list[str]:
    """Non-finite values and a constant /signals, streamed in blocks to keep memory bounded."""
    problems = []
    step = max(1, 4_000_000 // max(1, r.n_channels))
    lo_v, hi_v = np.inf, -np.inf
    for lo in range(0, n_rows, step):
        block = r.read(lo, min(step, n_rows - lo))
        if not np.isfinite(block).all():
            problems.append(f"non-finite values in /signals rows {lo}..{lo + len(block)}")
            return problems
        if block.size:
            lo_v, hi_v = min(lo_v, float(block.min())), max(hi_v, float(block.max()))
    # preprocess.clip=0 once wrote an all-zero cache (clip=-1 all -1) that matched its own
    # re-preprocessing window for window; a signal that never varies is no EEG.
    if n_rows and lo_v == hi_v:
        problems.append(
            f"constant: every sample of /signals is {lo_v:g}, so every window is too; "
            "check preprocess.clip and the raw files"
        )
    return problems


@dataclass
class VerifyReport:
    """What verify found (text: `reporting.verify_text`)."""

    path: str
    problems: list[str]
    checked_windows: int
    max_abs_error: float

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "checked_windows": self.checked_windows,
            "max_abs_error": self.max_abs_error,
        }


def _source(cfg: Config, root: Path | str, relpath: str) -> dict:
    """How build-cache's worker read a recording (reader options, BIDS bad channels), again."""
    opts = {"reader_options": dict(cfg.corpus.reader_options), "bad": ()}
    if cfg.corpus.layout != "bids":
        return opts
    if isinstance(root, Path):
        return {**opts, "bad": BidsLayout(root, cfg.corpus).bad_channels(str(relpath))}
    # Object storage: the layout reads its files from a temp copy of the ones it needs.
    store = ObjectStore(root)
    listing = {o.key: o for o in store.list()}
    want = ["dataset_description.json", "participants.tsv", sidecar(str(relpath), "channels")]
    with tempfile.TemporaryDirectory(prefix="brainpipe-verify-") as tmp:
        store.fetch_into([listing[k] for k in want if k in listing], tmp)
        if "dataset_description.json" not in listing:
            raise BrainpipeError(f"{root}: not a BIDS dataset root (no dataset_description.json)")
        return {**opts, "bad": BidsLayout(tmp, cfg.corpus).bad_channels(str(relpath))}


def verify_cache(
    path: str | os.PathLike,
    n_windows: int = 8,
    raw_root: str | os.PathLike | None = None,
    seed: int = 0,
) -> VerifyReport:
    """Tables consistent, no NaN/Inf, and random windows match a fresh preprocessing of the raw file.

    A cache set is verified member by member (after its manifest's own checks)."""
    if is_cache_set(path):
        with CacheSetReader(path) as s:  # a missing or changed member fails here, by name
            reports = [verify_cache(r.path, n_windows, raw_root, seed) for r in s.members]
        return VerifyReport(
            str(path),
            [f"{Path(r.path).name}: {p}" for r in reports for p in r.problems],
            sum(r.checked_windows for r in reports),
            max(r.max_abs_error for r in reports),
        )
    with CacheReader(path) as r:
        problems = _check_tables(r)
        # Non-finite values, streamed in blocks to keep memory bounded.
        problems += _scan_signals(r, r.shape[0])
        cfg = config_from_dict(json.loads(r.attrs["config"]))
        root = locate_raw_root(raw_root or r.attrs.get("raw_root", ""))
        found, checked, max_err = _compare_windows(r, cfg, root, n_windows, seed)
    return VerifyReport(str(path), problems + found, checked, max_err)


def _check_tables(r: CacheReader) -> list[str]:
    """The tables agree with each other and with /signals."""
    problems: list[str] = []
    rec, win = r.recordings, r.windows
    n_rows = r.shape[0]
    off, length = rec["offset"], rec["length"]
    if len(off) and (off[1:] != off[:-1] + length[:-1]).any():
        problems.append("recording offsets are not contiguous")
    if len(off) and off[-1] + length[-1] > n_rows:
        problems.append("recordings extend past /signals")
    wr, ws = win["recording"], win["start"]
    if len(wr):
        if (rec["status"][wr] != STATUS_DONE).any():
            problems.append("windows point into recordings that were not written")
        if ((ws < off[wr]) | (ws + r.window_samples > off[wr] + length[wr])).any():
            problems.append("windows extend outside their recording")
        if (np.diff(wr) < 0).any():
            problems.append("windows are not grouped by recording")
    subj = r.subjects
    if int(subj["n_windows"].sum()) != len(wr):
        problems.append(
            f"subject table counts {int(subj['n_windows'].sum())} windows, window table has {len(wr)}"
        )
    if (np.bincount(wr, minlength=len(off)) != rec["n_windows"]).any():
        problems.append("per-recording window counts disagree with the window table")
    return problems


def _compare_windows(
    r: CacheReader, cfg: Config, root: Path | str, n_windows: int, seed: int
) -> tuple[list[str], int, float]:
    """(problems, windows checked, largest error) of `n_windows` random windows compared with a
    fresh preprocessing of their raw file."""
    rec, win = r.recordings, r.windows
    off, length = rec["offset"], rec["length"]
    wr, ws = win["recording"], win["start"]
    problems: list[str] = []
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(wr), size=min(n_windows, len(wr)), replace=False) if len(wr) else []
    max_err = 0.0
    checked = 0
    cache_recs: dict[int, np.ndarray] = {}
    for k in sorted(int(x) for x in picks):
        i = int(wr[k])
        try:
            if i not in cache_recs:
                cache_recs[i] = _reprocess(
                    root,
                    str(rec["path"][i]),
                    cfg.preprocess,
                    int(length[i]),
                    _source(cfg, root, rec["path"][i]),
                )
        except BrainpipeError as e:
            problems.append(f"window {k}: {e}")
            continue
        local = int(ws[k] - off[i])
        fresh = cache_recs[i][local : local + r.window_samples].astype(r.dtype).astype(np.float32)
        stored = r.read(int(ws[k]), r.window_samples).astype(np.float32)
        err = float(np.max(np.abs(fresh - stored))) if fresh.size else 0.0
        max_err = max(max_err, err)
        checked += 1
        # Same code, same input: equal up to float16 rounding of FFT results that may differ in
        # their last float32 bit between thread counts.
        if not np.allclose(fresh, stored, rtol=2e-3, atol=2e-3):
            problems.append(
                f"window {k} ({rec['path'][i]} at sample {local}) differs from the raw file by up to {err:.3g}"
            )
    return problems, checked, max_err
