"""The `build-cache` stage: preprocess indexed recordings into one HDF5 cache.

Reads:  an index (`brainpipe index`) and the raw recordings it names.
Writes: one HDF5 cache (docs/cache-format.md) through `cachefile.CacheWriter`.

    brainpipe build-cache --index data/index.npz --cache data/cache.h5 --config configs/tuab.yaml

Owns the stage only: the plan (`make_plan`), the worker jobs (`load_recording`,
`process_recording`), their scheduling, the label sanity check and `verify_cache`. The file, its
crash safety and its resume belong to the writer; the text printed belongs to `reporting`.

How it stays fast, bounded and safe:
- Sizes are known from the index, so the plan (channels present, output length, labels) and the
  file's layout are fixed before any signal is read; recordings that cannot work (missing
  channels, too short) are skipped up front with their reason.
- `--workers N` processes read and preprocess one recording each; the main process hands each
  result to the one CacheWriter. One recording is in flight per worker (the next is sent
  before the result is written), so memory is bounded by a few recordings.
- The writer pwrites each recording at its reserved offset and journals it, so kill -9 at any
  moment leaves a partial file the same command resumes; the cache is renamed into place only
  when complete.

What a long build meets (issue 16; replayed by tests/test_cache_faults.py, scripts/chaos.sh):
- A worker killed with a recording in flight (the OOM killer): `workers.run_jobs` sees its exit at
  once, prints one line (pid, signal, recording), retries the recording once in a fresh worker
  and skips it with the reason if that one dies too. The build goes on.
- Ctrl-C (to the whole process group) and SIGTERM (`docker stop`): workers ignore SIGINT and
  die with their parent; the main process stops them without waiting on one and raises
  `Interrupted` ("interrupted; re-run to resume ..."); the partial file is kept.
- Two builds on one path, kill -9 or a full disk while finalizing: the writer's lock and
  crash-safe finalize (cachefile.CacheWriter).
- Labels and layout are checked at plan time, from the index, before any signal is read.

About 930 lines, over the ~500 guideline: the stage's three steps (plan with its checks before
any signal is read, build, verify) and the worker-side reading that build and verify share;
none of them is a format or a piece another stage needs. The watched worker pool is
`workers.py`."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe import __version__
from brainpipe.cachefile import STATUS_DONE, CacheReader, CacheWriter, Layout
from brainpipe.config import Config, PreprocessConfig, config_from_dict
from brainpipe.corpus import TASK_LABELS, TUAB_LABELS, TUSZ_LABELS, event_label_names
from brainpipe.errors import BrainpipeError, reason_kind
from brainpipe.fsutil import check_writable_dir
from brainpipe.reporting import window_counts_text
from brainpipe.splits import overlap_warning
from brainpipe.workers import run_jobs

CONFIG_SECTIONS = ("corpus", "preprocess", "window", "cache")


# ---------------------------------------------------------------------------------------------
# Reading and preprocessing one recording (runs in worker processes; pure of global state)
# ---------------------------------------------------------------------------------------------


def load_recording(
    path: str | os.PathLike,
    cfg: PreprocessConfig,
    reader_options: dict | None = None,
    bad: Collection[str] = (),
) -> tuple[np.ndarray, float, Any]:
    """Read what the preprocessing of `path` needs: (block in Volts, its sample rate, the plan).

    The whole recording at once (float64: 8.8 GB for an hour of 306-channel 1 kHz MEG);
    `process_recording` reads it a time slice at a time through `open_recording` instead.
    """
    read, n, sfreq, plan = open_recording(path, cfg, reader_options, bad)
    return read(0, n), sfreq, plan


def open_recording(
    path: str | os.PathLike,
    cfg: PreprocessConfig,
    reader_options: dict | None = None,
    bad: Collection[str] = (),
) -> tuple[Callable[[int, int], np.ndarray], int, float, Any]:
    """(read, n_samples, sample rate, plan) for `path`; read(start, stop) returns samples
    [start, stop) of the planned channels, (len(plan.source), stop - start) float64 Volts.

    EDF/BDF go through our memmap reader (only the picked channels' bytes); other formats
    through mne without preloading (only the slice's data buffers). The plan is made from the
    file's own header, so a file edited since indexing is caught by the length check in
    `process_recording`. `reader_options` are `corpus.reader_options`; `bad` the channel labels
    the index marks bad (BIDS), planned as missing.
    """
    from brainpipe.channels import channel_types, mark_bad
    from brainpipe.preprocess import plan_channels

    path = str(path)
    if path.lower().endswith((".edf", ".bdf")):
        from brainpipe.edf import read_header, read_signals

        h = read_header(path)
        sig = h.signal_indices
        labels = [h.labels[i] for i in sig]
        plan = plan_channels(labels, cfg, mark_bad(labels, channel_types(tuple(labels)), bad))
        picks = [sig[j] for j in plan.source]
        rates = {h.sfreq(i) for i in picks}
        if len(rates) > 1:
            raise BrainpipeError(
                f"{path}: the picked channels have different sample rates {sorted(rates)}"
            )
        sfreq = rates.pop() if rates else h.sfreq(sig[0])
        n = h.n_samples(picks[0]) if picks else 0
        return (lambda start, stop: read_signals(h, picks, start, stop)), n, float(sfreq), plan
    from brainpipe.readers import open_raw

    raw = open_raw(path, reader_options)
    plan = plan_channels(raw.ch_names, cfg, mark_bad(raw.ch_names, raw.get_channel_types(), bad))
    picks = list(plan.source)

    def read(start: int, stop: int) -> np.ndarray:
        if not picks:
            return np.zeros((0, stop - start))
        return raw.get_data(picks=picks, start=start, stop=stop)

    return read, raw.n_times, float(raw.info["sfreq"]), plan


def process_recording(
    path: str | os.PathLike,
    cfg: PreprocessConfig,
    expected_length: int | None = None,
    reader_options: dict | None = None,
    bad: Collection[str] = (),
    *,
    dtype: np.typing.DTypeLike = np.float32,
    out: Any = None,
) -> tuple[Any, np.ndarray]:
    """Preprocessed signal of one recording, time-major (n_samples, n_channels) in `dtype`, and its mask.

    Read and filtered in time chunks (`preprocess.preprocess_chunked`), so the memory a worker
    needs is the result (in `dtype`: pass the cache's) plus a few hundred MB at any length;
    given `out` (`out[t0:t1] = rows` in time order, e.g. pwrites at the row's reserved offset
    in the cache), the result goes there and is not held at all.
    """
    from brainpipe.preprocess import output_length, preprocess_chunked

    read_raw, n, sfreq, plan = open_recording(path, cfg, reader_options, bad)

    def read(start: int, stop: int) -> np.ndarray:
        data = read_raw(start, stop)
        if data.size and not np.isfinite(data).all():
            raise BrainpipeError(f"{path}: non-finite samples (NaN/Inf) in the raw signal")
        return data

    n_out = output_length(n, sfreq, cfg)
    if expected_length is not None and n_out and n_out != expected_length:  # 0: too short
        raise BrainpipeError(
            f"{path}: changed since indexing ({n_out} samples after preprocessing, the index planned {expected_length}); re-run `brainpipe index`"
        )
    out = preprocess_chunked(read, n, sfreq, plan, cfg, dtype=dtype, out=out)
    return out, np.asarray(plan.mask, dtype=bool)


# A worker's result payload when it wrote the recording's rows into the cache itself.
WRITTEN = "written"


def _worker(job: tuple) -> tuple[int, Any, str, int]:
    """Process one recording; returns (row, payload, error reason, raw bytes read).

    job: (row, recording, preprocess config, length, dtype, how to read it, RowTarget or None).
    With a target the worker pwrites its rows into the partial cache as they come out of the
    chunked preprocessing (a 60-minute 306-channel recording is never held whole) and the
    payload is WRITTEN, or ("write-error", strerror) when the disk refuses; without one the
    payload is the rows' bytes. None: skipped, with the reason. The recording is a path, or an
    `objectstore.ObjectInfo`: fetched whole with one GET into a spool file (TMPDIR), read like
    a local file, removed; the bucket is never written."""
    i, path, pcfg, length, dtype, source, *rest = job
    if not isinstance(path, str):
        from brainpipe.objectstore import remote_worker

        return remote_worker(_worker, job)
    target = rest[0] if rest else None
    cfg = PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in pcfg.items()})
    try:
        if target is None:
            x, _mask = process_recording(path, cfg, expected_length=length, dtype=dtype, **source)
            return i, x.tobytes(), "", os.path.getsize(path)
        try:
            with target.open() as sink:
                process_recording(
                    path, cfg, expected_length=length, dtype=dtype, out=sink, **source
                )
        except OSError as e:
            if e.filename is None:  # the cache's disk, not the recording
                return i, ("write-error", e.strerror or str(e)), "", 0
            raise
        return i, WRITTEN, "", os.path.getsize(path)
    except BrainpipeError as e:
        return i, None, _strip_path(str(e), path), 0
    except (OSError, ValueError, MemoryError) as e:
        return i, None, f"unreadable: {e}", 0


def _strip_path(msg: str, path: str) -> str:
    msg = msg.splitlines()[0] if msg else msg
    return msg[len(path) + 2 :] if msg.startswith(path + ": ") else msg


# ---------------------------------------------------------------------------------------------
# Plan: everything known from the index before reading any signal
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    layout: Layout
    index_rows: np.ndarray  # index row of each planned recording
    skipped: list[tuple[str, str]]
    raw_bytes: np.ndarray  # file size per planned recording
    window: int
    stride: int
    # planned row -> channel labels the index marks bad (BIDS channels.tsv): read as missing
    bad_channels: dict[int, tuple[str, ...]] = field(default_factory=dict)


def label_names_for(layout: str, labels: list[str]) -> tuple[str, ...]:
    if layout == "tuab":
        return TUAB_LABELS
    if layout == "tusz":
        return TUSZ_LABELS
    return tuple(sorted(set(labels) - {""}))


def make_plan(index, cfg: Config) -> Plan:
    """The cache's layout from the index and the config alone: rows, lengths, channels, labels."""
    p, w = cfg.preprocess, cfg.window
    window = int(round(w.seconds * p.sfreq))
    stride = int(round(w.stride_seconds * p.sfreq))
    layout_name = index.meta.get("layout", cfg.corpus.layout)
    if layout_name and cfg.corpus.layout != "generic" and layout_name != cfg.corpus.layout:
        # Labels, splits and events mean different things per layout: a TUSZ index built into a
        # TUAB config labels nothing and was only refused after the whole build. A config that
        # names no corpus layout (generic, the default) builds an index by the index's layout.
        raise BrainpipeError(
            f"the index was built with corpus.layout={layout_name}, the config has "
            f"corpus.layout={cfg.corpus.layout}; build with the config the index was made with, or re-index"
        )
    names = label_names_for(layout_name, index.arrays["label"].tolist())
    if cfg.cache.task == "events":
        names = event_label_names(cfg.corpus.event_labels)
    skipped: list[tuple[str, str]] = [(e["path"], e["reason"]) for e in index.errors]
    kept, plans = _plan_recordings(index, p, w, window, skipped)
    if cfg.cache.task == "seizure":
        kept = _annotated(index, kept, skipped)
    rows = np.array([k[0] for k in kept], dtype=np.int64)
    channels = _output_channels(plans, p)
    events = _planned_events(index, rows, cfg.cache.task, names)
    if cfg.cache.task == "events":
        _check_event_classes(index, cfg, events, names)
    layout = Layout(
        channels,
        p.sfreq,
        cfg.cache.dtype,
        _recording_table(index, kept, names, len(channels)),
        events,
        names,
        _provenance(index, cfg, layout_name),
        task="" if cfg.cache.task == "none" else cfg.cache.task,
    )
    return Plan(
        layout,
        rows,
        skipped,
        index.arrays["size"][rows],
        window,
        stride,
        _bad_channels(index, rows),
    )


def _bad_channels(index, rows: np.ndarray) -> dict[int, tuple[str, ...]]:
    from brainpipe.channels import BAD_TYPE

    if BAD_TYPE not in set(index.arrays["chanset_types"].tolist()):
        return {}
    out = {}
    for k, i in enumerate(rows.tolist()):
        bad = tuple(
            lab
            for lab, t in zip(index.channels(i), index.channel_types(i), strict=True)
            if t == BAD_TYPE
        )
        if bad:
            out[k] = bad
    return out


def _upsampling_warning(source_rates: np.ndarray, sfreq: float) -> list[str]:
    """A resampling up adds no information and makes the cache (and every epoch) larger."""
    low = [float(r) for r in source_rates.tolist() if r < sfreq - 1e-9]
    if not low:
        return []
    return [
        f"warning: preprocess.sfreq={sfreq:g} Hz is above the own rate of {len(low)} recordings (lowest "
        f"{min(low):g} Hz): they are upsampled, which adds no information and makes the cache "
        f"{sfreq / min(low):.1f}x larger for them; set preprocess.sfreq <= {min(low):g}"
    ]


def check_planned_labels(plan: Plan, task: str) -> None:
    """Refuse a task whose classes are empty in the plan, before any signal is read.

    The labels are known from the index: recordings' labels (abnormal) or their events
    (seizure). The same check on the finished windows (`_check_labels`) stays as the exact one.
    """
    need = TASK_LABELS.get(task)
    if need is None:
        return
    r, ev = plan.layout.recordings, plan.layout.events
    names = plan.layout.label_names
    counts: dict[str, Counter] = {}
    for split in sorted(set(r["split"].tolist())):
        m = r["split"] == split
        if task == "seizure":
            # The index keeps seizure events only (background is dropped when it is read).
            rows = np.flatnonzero(m)
            seiz = np.isin(ev["recording"], rows) & (ev["offset_s"] > ev["onset_s"])
            counts[split] = Counter({need[0]: int(m.sum()), need[1]: int(seiz.sum())})
        else:
            labels = r["label"][m]
            counts[split] = Counter(
                {names[k]: int((labels == k).sum()) for k in range(len(names)) if names[k] in need}
            )
    total = sum(counts.values(), Counter())
    empty = [k for k in need if total.get(k, 0) == 0]
    if empty:
        what = "seizure events" if task == "seizure" else "recordings"
        table = window_counts_text(
            {s: {k: v for k, v in c.items() if v} for s, c in counts.items()}
        )
        raise BrainpipeError(
            f"cache.task={task} needs {' and '.join(need)} windows but {', '.join(empty)} came out empty "
            f"in the plan ({what} per split: {table}); check the labels/annotations in the index "
            "(refused before reading any signal)"
        )


def _plan_recordings(
    index, p: PreprocessConfig, w, window: int, skipped: list
) -> tuple[list, dict]:
    """(index row, output length, channel mask, source rate, t0_s) of each recording that can work.

    Recordings that cannot (missing channels, mixed rates, too short) are appended to `skipped`
    with their reason. Grouped by subject (then path), so each subject's windows are one run.
    """
    from brainpipe.preprocess import output_length, plan_channels

    a = index.arrays
    order = np.lexsort((a["path"], a["subject"])) if len(index) else np.zeros(0, np.int64)
    kept: list[tuple[int, int, np.ndarray, float, float]] = []
    plans: dict[int, Any] = {}  # channel set -> its channel plan, or why it cannot work
    for i in order.tolist():
        path = str(a["path"][i])
        s = int(a["chanset"][i])
        if s not in plans:
            try:
                labels, types = index.channels(i), index.channel_types(i)
                plans[s] = plan_channels(labels, p, types)
            except BrainpipeError as e:
                plans[s] = e
        plan = plans[s]
        if isinstance(plan, BrainpipeError):
            plan = plans[s] = _with_closest_channels(plan, index.channels(i), p)
            skipped.append((path, str(plan)))
            continue
        srates = (
            index.channel_sfreqs(i)[list(plan.source)] if plan.source else np.array([a["sfreq"][i]])
        )
        if len(set(srates.tolist())) > 1:
            reason = f"picked channels have different sample rates {sorted(set(srates.tolist()))}"
            skipped.append((path, reason))
            continue
        sf = float(srates[0])
        n_in = (
            int(a["n_samples"][i])
            if np.isclose(sf, a["sfreq"][i])
            else int(round(a["duration_s"][i] * sf))
        )
        try:
            length = output_length(n_in, sf, p)
        except BrainpipeError as e:
            skipped.append((path, str(e)))
            continue
        if length < window:
            reason = (
                f"too short: {length / p.sfreq:.1f} s after cropping, one window is {w.seconds:g} s"
            )
            skipped.append((path, reason))
            continue
        kept.append((i, length, plan.mask, sf, min(p.crop_start_s, n_in / sf)))
    return kept, plans


def _with_closest_channels(e: BrainpipeError, labels, p: PreprocessConfig) -> BrainpipeError:
    """Add, to "none of the required channels", the recording's names closest to those asked for."""
    import difflib

    from brainpipe.channels import canonical_name
    from brainpipe.preprocess import TCP_PAIRS

    if "none of the required channels" not in str(e) or "; closest found" in str(e):
        return e
    asked = (
        list(dict.fromkeys(x for pair in TCP_PAIRS for x in pair))
        if p.montage == "tcp"
        else [canonical_name(c) for c in p.channels]
    )
    have = {canonical_name(str(x)): str(x) for x in labels}
    close = []
    for name in asked:
        hit = difflib.get_close_matches(name, list(have), n=1, cutoff=0.5)
        if hit:
            close.append(f"{name}~{have[hit[0]]}")
    hint = f"; closest found: {', '.join(close[:8]) or 'none'}"
    return BrainpipeError(f"{e}{hint}")


def _recording_table(index, kept: list, names: tuple[str, ...], n_ch: int) -> dict[str, np.ndarray]:
    a = index.arrays
    rows = np.array([k[0] for k in kept], dtype=np.int64)
    lookup = {n: k for k, n in enumerate(names)}
    return {
        "path": a["path"][rows],
        "subject": a["subject"][rows],
        "session": a["session"][rows],
        "split": a["split"][rows],
        "label": np.array([lookup.get(x, -1) for x in a["label"][rows].tolist()], dtype=np.int8),
        "sfreq_orig": np.array([k[3] for k in kept], dtype=np.float64),
        "length": np.array([k[1] for k in kept], dtype=np.int64),
        "t0_s": np.array([k[4] for k in kept], dtype=np.float64),
        "mask": np.array([k[2] for k in kept], dtype=bool).reshape(len(kept), n_ch),
    }


def _annotated(index, kept: list, skipped: list) -> list:
    """The planned recordings a seizure cache can label: one whose TUSZ annotation file is
    missing or unparsable is skipped with the index's reason, never taken as background."""
    from brainpipe.annotations import ANNOTATIONS_MISSING, ANNOTATIONS_UNPARSABLE

    bad = {
        w["path"]: w["reason"]
        for w in index.warnings
        if reason_kind(w["reason"]) in (ANNOTATIONS_MISSING, ANNOTATIONS_UNPARSABLE)
    }
    if not bad:
        return kept
    paths = index.arrays["path"]
    skipped += [(str(paths[k[0]]), bad[str(paths[k[0]])]) for k in kept if str(paths[k[0]]) in bad]
    return [k for k in kept if str(paths[k[0]]) not in bad]


def _check_event_classes(index, cfg: Config, events: dict, names: tuple[str, ...]) -> None:
    """cache.task=events, before any signal is read: the index's events were labelled by this
    corpus.event_labels, and every class has events in the planned recordings."""
    if index.event_labels != dict(cfg.corpus.event_labels):
        raise BrainpipeError(
            f"cache.task=events: the index's events were labelled by corpus.event_labels="
            f"{index.event_labels}, this config has {dict(cfg.corpus.event_labels)}; re-run "
            f"`brainpipe index` with this config"
        )
    have = Counter(events["label"].tolist())
    empty = [n for n in names if not have[n]]
    if empty:
        found = ", ".join(f"{n}={have[n]}" for n in names)
        raise BrainpipeError(
            f"cache.task=events: no event of class {', '.join(empty)} in the recordings to "
            f"cache (events per class: {found}); check corpus.event_labels against the "
            f"descriptions `brainpipe inspect` shows"
        )


def _planned_events(
    index, rows: np.ndarray, task: str = "", names: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """The index's events re-keyed to planned rows; a TUSZ recording's label comes from them.

    A seizure cache keeps the annotation files' events only (description ""): an EDF+ text
    annotation is never a seizure. An events cache keeps the events of its classes."""
    a = index.arrays
    ev_rec = a["event_recording"]
    pos = np.full(len(index), -1, np.int64)
    pos[rows] = np.arange(len(rows))
    keep = pos[ev_rec] >= 0 if len(ev_rec) else np.zeros(0, bool)
    if task == "seizure" and len(ev_rec):
        keep &= a["event_description"] == ""
    elif task == "events" and len(ev_rec):
        keep &= np.isin(a["event_label"], np.asarray(names, dtype=str))
    events = {
        "recording": pos[ev_rec][keep],
        "onset_s": a["event_onset_s"][keep],
        "offset_s": a["event_offset_s"][keep],
        "label": a["event_label"][keep],
    }
    order = np.argsort(events["recording"], kind="stable")
    return {k: v[order] for k, v in events.items()}


def _provenance(index, cfg: Config, layout_name: str) -> dict[str, Any]:
    """The attributes saying what a cache was built from (and when a partial file may resume)."""
    return {
        "config": json.dumps({s: cfg.to_dict()[s] for s in CONFIG_SECTIONS}),
        "config_hash": cfg.section_hash(*CONFIG_SECTIONS),
        "index_hash": index.index_hash,
        "raw_root": index.raw_root,
        "brainpipe_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "layout": layout_name,
        **({"shard": index.meta["shard"]} if "shard" in index.meta else {}),
    }


def _output_channels(plans: dict, p: PreprocessConfig) -> tuple[str, ...]:
    good = [v for v in plans.values() if not isinstance(v, BrainpipeError)]
    if p.montage != "meg":
        return tuple(good[0].names) if good else tuple(p.channels)
    names = {tuple(v.names) for v in good}
    if len(names) > 1:
        raise BrainpipeError(
            "MEG recordings have different channel sets; pick one system per cache"
        )
    return next(iter(names)) if names else ()


# ---------------------------------------------------------------------------------------------
# Build: schedule the workers, hand their results to the one CacheWriter
# ---------------------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a build; the message says what is kept."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (`docker stop`, Slurm's preemption) stops a build the way Ctrl-C does."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _report_lost_worker(path: str, pid: int, how: str, retried: bool) -> None:
    import sys

    from brainpipe.reporting import lost_worker_line

    print(lost_worker_line(path, pid, how, retried), file=sys.stderr, flush=True)


@dataclass
class BuildResult:
    """What a build did (text: `reporting.build_summary_text`)."""

    cache_path: Path
    n_written: int
    n_skipped: int
    skipped: list[tuple[str, str]]
    hours: float
    n_windows: int
    bytes: int
    seconds: float
    raw_bytes: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    resumed: int = 0
    up_to_date: bool = False
    warnings: list[str] = field(default_factory=list)  # e.g. subjects in several splits


def build_cache(
    index_path: str | os.PathLike,
    cache_path: str | os.PathLike,
    cfg: Config,
    workers: int | None = None,
    force: bool = False,
    raw_root: str | os.PathLike | None = None,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> BuildResult:
    """The `build-cache` stage; resumable, see the module docstring.

    `shard=(i, n)` builds only the recordings of the subjects `cacheset.shard_of` puts in
    shard i of n (their union over i is the whole cache; a cache set joins them).
    Ctrl-C and SIGTERM raise `Interrupted` (a KeyboardInterrupt saying what is kept); a
    BrainpipeError raised while the partial file exists says that it is kept for a resume.
    """
    from brainpipe.indexfile import Index

    t0 = time.perf_counter()
    cache_path = Path(cache_path)
    with _sigterm_as_interrupt():
        index = Index.load(index_path)
        if shard is not None:
            index = _shard_index(index, *shard)
        root = _raw_root(raw_root or index.raw_root)
        if not isinstance(root, str) and not root.is_dir():
            raise BrainpipeError(
                f"{root}: raw directory of the index not found; pass --raw with where the corpus is now"
            )
        check_writable_dir(cache_path)
        try:
            plan = make_plan(index, cfg)
        except BrainpipeError as e:
            raise BrainpipeError(f"{index_path}: {e}") from e
        if len(plan.index_rows) == 0:
            reasons = Counter(reason_kind(r) for _, r in plan.skipped).most_common(3)
            first = f"; first: {plan.skipped[0][0]}: {plan.skipped[0][1]}" if plan.skipped else ""
            raise BrainpipeError(
                f"{index_path}: no recording can be cached ({', '.join(f'{c} {r}' for r, c in reasons) or 'empty index'}){first}"
            )
        if shard is None:  # one shard may hold one class only; `cache-set` checks the whole set
            check_planned_labels(plan, cfg.cache.task)
        if cache_path.exists() and not force:
            return _up_to_date(cache_path, plan.layout)  # or refuses to mix
        result = _build(
            plan, index_path, cache_path, root, cfg, workers, force, progress, t0, shard
        )
    r = plan.layout.recordings
    result.warnings.extend(_upsampling_warning(r["sfreq_orig"], plan.layout.sfreq))
    return result


def _build(
    plan, index_path, cache_path, root, cfg, workers, force, progress, t0, shard=None
) -> BuildResult:
    """Write the planned rows through the one CacheWriter, then finish it."""
    with CacheWriter(cache_path, plan.layout, overwrite=force) as writer:
        try:
            jobs = _jobs(plan, writer, root, cfg)
            n_workers = max(1, workers or cfg.cache.workers)
            results = run_jobs(_worker, jobs, n_workers, on_lost=_report_lost_worker)
            raw_bytes = _write_results(writer, results, progress, t0)
            if writer.n_written == 0:
                # Resuming would only replay the same failures: start the next run clean.
                writer.discard()
                path, reason = writer.skipped[0]
                raise BrainpipeError(
                    f"{index_path}: every recording failed; first: {path}: {reason} "
                    f"(nothing was written: the partial cache {writer.partial} was removed)"
                )
            written = writer.finish(
                plan.window,
                plan.stride,
                cfg.window.label_overlap,
                skipped=plan.skipped,
                compression=cfg.cache.compression,
                anchor=cfg.window.anchor,
                # One shard may hold one class only; `cache-set` checks the classes of the set.
                check=None if shard else lambda counts: _check_labels(counts, cfg, writer.partial),
            )
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted; re-run to resume (the partial cache {writer.partial} is kept)"
            ) from None
        except BrainpipeError as e:
            if str(writer.partial) in str(e):
                raise
            raise BrainpipeError(
                f"{e} (the partial cache {writer.partial} is kept: re-run to resume, or pass --force to start over)"
            ) from e
    done = writer.status == STATUS_DONE
    skipped = plan.skipped + writer.skipped
    return BuildResult(
        cache_path,
        int(done.sum()),
        len(skipped),
        skipped,
        float(plan.layout.recordings["length"][done].sum() / plan.layout.sfreq / 3600),
        written.n_windows,
        written.bytes,
        time.perf_counter() - t0,
        raw_bytes,
        written.counts,
        writer.resumed,
        warnings=_overlap(plan.layout.recordings, done),
    )


def _overlap(recordings: dict, done: np.ndarray) -> list[str]:
    line = overlap_warning(recordings["split"][done], recordings["subject"][done])
    return [line] if line else []


def _shard_index(index, i: int, n: int):
    """The index rows of shard i of n (whole subjects); the index's errors go to shard 0 only."""
    from brainpipe.cacheset import shard_of

    a = index.arrays
    # A recording without a subject is its own subject.
    keys = np.where(
        a["subject"] == "", np.char.add("recording:", a["path"].astype(str)), a["subject"]
    )
    rows = np.flatnonzero(shard_of(keys, n) == i)
    if len(rows) == 0:
        k = len(np.unique(keys))
        raise BrainpipeError(
            f"--shard {i}/{n}: no subject falls in this shard, the index has {k} subjects; use N <= {k}"
        )
    part = index.take(rows)
    if i == 0:
        part.arrays["error_path"], part.arrays["error_reason"] = a["error_path"], a["error_reason"]
    part.meta["shard"] = f"{i}/{n}"
    return part


def _up_to_date(cache_path: Path, layout: Layout) -> BuildResult:
    """An existing finished cache built from the same config and index; any other is refused."""
    try:
        with CacheReader(cache_path) as old:
            same = (
                old.attrs.get("config_hash") == layout.attrs["config_hash"]
                and old.attrs.get("index_hash") == layout.attrs["index_hash"]
                and old.attrs.get("shard", "") == layout.attrs.get("shard", "")
            )
            summary = old.summary()
    except BrainpipeError:
        same, summary = False, None
    if not same or summary is None:
        raise BrainpipeError(
            f"{cache_path}: exists and was built from a different config or index; pass --force to rebuild it"
        )
    return BuildResult(
        cache_path,
        summary["n_recordings"],
        len(summary["skipped"]),
        [],
        summary["hours"],
        summary["n_windows"],
        summary["bytes"],
        0.0,
        0,
        up_to_date=True,
    )


def _raw_root(root: str | os.PathLike) -> Path | str:
    """A local raw root as a Path; an object-storage URL (s3://...) as it is."""
    from brainpipe.objectstore import is_url

    return str(root).rstrip("/") if is_url(root) else Path(root)


def _reprocess(
    root: Path | str, rel: str, cfg: PreprocessConfig, length: int, source: dict
) -> np.ndarray:
    """`process_recording` of a raw file again, local or fetched from object storage."""
    if isinstance(root, Path):
        return process_recording(root / rel, cfg, expected_length=length, **source)[0]
    from brainpipe.objectstore import ObjectStore, RecordingObjects, remote_worker

    store = ObjectStore(root)
    src = _remote_sources(root, [rel], [0], store)[0]
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


def _remote_sources(root: str, paths: list, sizes: list, store: Any = None) -> list:
    """What a worker fetches for each recording in object storage: the object of an EDF/BDF,
    or, for mne's formats, the `RecordingObjects` of every file that makes it up (a .vhdr's
    .vmrk and .eeg, a CTF .ds), found in one listing made only when there are such rows."""
    from brainpipe.objectstore import ObjectInfo, ObjectStore, RecordingObjects
    from brainpipe.readers import EDF_SUFFIXES, recording_files

    paths = [str(p) for p in paths]
    listing: dict = {}
    if not all(p.lower().endswith(EDF_SUFFIXES) for p in paths):
        listing = {o.key: o for o in (store or ObjectStore(root)).list()}
    out: list = []
    for p, n in zip(paths, sizes, strict=True):
        if p.lower().endswith(EDF_SUFFIXES):
            out.append(ObjectInfo(p, f"{root}/{p}", int(n), None, None))
            continue
        keys = recording_files(p, listing)
        if not keys or any(k not in listing for k in keys):
            raise BrainpipeError(f"{root}/{p}: not in the bucket any more; re-run index")
        out.append(RecordingObjects(root, p, tuple(listing[k] for k in keys)))
    return out


def _jobs(plan: Plan, writer: CacheWriter, root: Path | str, cfg: Config) -> list[tuple]:
    """One picklable worker job per row: (row, raw file or ObjectInfo, preprocess config, length,
    dtype, how to read the file: reader options and bad channels, where its rows go)."""
    r = plan.layout.recordings
    pcfg = cfg.to_dict()["preprocess"]
    opts = dict(cfg.corpus.reader_options)
    if isinstance(root, str):  # object storage: the worker fetches the objects it names
        src = _remote_sources(root, r["path"], plan.raw_bytes)
    else:
        src = [str(root / str(p)) for p in r["path"]]
    return [
        (
            row,
            src[row],
            pcfg,
            int(r["length"][row]),
            cfg.cache.dtype,
            {"reader_options": opts, "bad": plan.bad_channels.get(row, ())},
            writer.target(row),  # the worker writes its rows into the partial cache itself
        )  # fmt: skip
        for row in writer.pending_rows()
    ]


def _write_results(writer: CacheWriter, results, progress: bool, t0: float) -> int:
    """Hand each worker result to the writer; returns the raw bytes read for those written."""
    raw_bytes = 0
    bar = None
    if progress:
        from tqdm import tqdm

        n = len(writer.status)
        initial = n - len(writer.pending_rows())
        bar = tqdm(total=n, initial=initial, unit="rec", desc="build-cache", disable=None)
    try:
        for row, payload, reason, nbytes in results:
            if payload is None:
                writer.skip(row, reason)
                continue
            if payload == WRITTEN:
                writer.written(row)
            elif isinstance(payload, tuple):  # ("write-error", strerror): a full disk
                writer.write_failed(payload[1])
            else:
                writer.write(row, payload)
            raw_bytes += nbytes
            if bar is not None:
                bar.update(1)
                el = time.perf_counter() - t0
                bar.set_postfix_str(f"{raw_bytes / 1e6 / el:.1f} MB/s" if el > 0 else "")
    finally:
        if bar is not None:
            bar.close()
    return raw_bytes


def _check_labels(counts: dict[str, dict[str, int]], cfg: Config, partial: Path) -> None:
    """Fail when the task's classes came out empty (e.g. misparsed TUSZ annotations)."""
    need = TASK_LABELS.get(cfg.cache.task)
    if cfg.cache.task == "events":
        need = event_label_names(cfg.corpus.event_labels)
    if need is None:
        return
    total = Counter()
    for c in counts.values():
        total.update(c)
    empty = [k for k in need if total.get(k, 0) == 0]
    if empty:
        table = window_counts_text(counts)
        raise BrainpipeError(
            f"cache.task={cfg.cache.task} needs {' and '.join(need)} windows but {', '.join(empty)} came out empty "
            f"(windows per split: {table}); check the labels/annotations in the index. The finished file is left at {partial}"
        )


# ---------------------------------------------------------------------------------------------
# Verify
# ---------------------------------------------------------------------------------------------


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
    from brainpipe.bids import BidsLayout, sidecar

    if isinstance(root, Path):
        return {**opts, "bad": BidsLayout(root, cfg.corpus).bad_channels(str(relpath))}
    import tempfile

    from brainpipe.objectstore import ObjectStore

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
    from brainpipe.cacheset import CacheSetReader, is_cache_set

    if is_cache_set(path):
        with CacheSetReader(path) as s:  # a missing or changed member fails here, by name
            reports = [verify_cache(r.path, n_windows, raw_root, seed) for r in s.members]
        return VerifyReport(
            str(path),
            [f"{Path(r.path).name}: {p}" for r in reports for p in r.problems],
            sum(r.checked_windows for r in reports),
            max(r.max_abs_error for r in reports),
        )
    problems: list[str] = []
    with CacheReader(path) as r:
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
        # Non-finite values, streamed in blocks to keep memory bounded.
        problems += _scan_signals(r, n_rows)
        cfg = config_from_dict(json.loads(r.attrs["config"]))
        root = _raw_root(raw_root or r.attrs.get("raw_root", ""))
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
            fresh = (
                cache_recs[i][local : local + r.window_samples].astype(r.dtype).astype(np.float32)
            )
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
    return VerifyReport(str(path), problems, checked, max_err)
