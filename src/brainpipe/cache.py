"""The `build-cache` stage: preprocess indexed recordings into one HDF5 cache.

Reads:  an index (`brainpipe index`) and the raw recordings it names.
Writes: one HDF5 cache (docs/cache-format.md): continuous preprocessed signal per recording,
        windows as offsets into it, tables, and the full config.

    brainpipe build-cache --index data/index.npz --cache data/cache.h5 --config configs/tuab.yaml

How it stays fast, bounded and safe:
- Sizes are known from the index, so the plan (channels present, output length, labels) and the
  file's layout are fixed before any signal is read; recordings that cannot work (missing
  channels, too short) are skipped up front with their reason.
- `--workers N` processes read and preprocess one recording each; the main process is the one
  writer. At most 2N recordings are in flight, so memory is bounded by a few recordings.
- Signal bytes go straight into the pre-allocated dataset at its file offset (pwrite + fdatasync)
  and each finished recording is appended to a journal (fsync). HDF5 metadata is written only at
  creation and at the end, so kill -9 at any moment leaves a partial file that reopens; the same
  command resumes from the journal. The cache is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe import __version__
from brainpipe.cachefile import (
    STATUS_DONE,
    STATUS_PENDING,
    STATUS_SKIPPED,
    CacheReader,
    Layout,
    create_layout,
    finalize,
    repack,
    signals_offset,
)
from brainpipe.config import Config, PreprocessConfig, config_from_dict
from brainpipe.corpus import TASK_LABELS, TUAB_LABELS, TUSZ_LABELS
from brainpipe.errors import BrainpipeError, reason_kind
from brainpipe.fsutil import check_writable_dir, fsync_dir

CONFIG_SECTIONS = ("corpus", "preprocess", "window", "cache")


# ---------------------------------------------------------------------------------------------
# Reading and preprocessing one recording (runs in worker processes; pure of global state)
# ---------------------------------------------------------------------------------------------


def load_recording(path: str | os.PathLike, cfg: PreprocessConfig) -> tuple[np.ndarray, float, Any]:
    """Read what the preprocessing of `path` needs: (block in Volts, its sample rate, the plan).

    EDF/BDF go through our memmap reader (only the picked channels' bytes); other formats
    through mne. The plan is made from the file's own header, so a file edited since indexing
    is caught by the length check in `process_recording`.
    """
    from brainpipe.preprocess import plan_channels

    path = str(path)
    if path.lower().endswith((".edf", ".bdf")):
        from brainpipe.edf import read_header, read_signals

        h = read_header(path)
        sig = h.signal_indices
        labels = [h.labels[i] for i in sig]
        plan = plan_channels(labels, cfg)
        picks = [sig[j] for j in plan.source]
        rates = {h.sfreq(i) for i in picks}
        if len(rates) > 1:
            raise BrainpipeError(
                f"{path}: the picked channels have different sample rates {sorted(rates)}"
            )
        sfreq = rates.pop() if rates else h.sfreq(sig[0])
        n = h.n_samples(picks[0]) if picks else 0
        return read_signals(h, picks, 0, n), float(sfreq), plan
    import mne

    try:
        raw = mne.io.read_raw(path, preload=False, verbose="error")
    except Exception as e:  # mne raises many types for unreadable files
        raise BrainpipeError(
            f"{path}: unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    plan = plan_channels(raw.ch_names, cfg, raw.get_channel_types())
    data = raw.get_data(picks=list(plan.source)) if plan.source else np.zeros((0, raw.n_times))
    return data, float(raw.info["sfreq"]), plan


def process_recording(
    path: str | os.PathLike, cfg: PreprocessConfig, expected_length: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed signal of one recording, time-major (n_samples, n_channels) float32, and its mask."""
    from brainpipe.preprocess import preprocess

    data, sfreq, plan = load_recording(path, cfg)
    if data.size and not np.isfinite(data).all():
        raise BrainpipeError(f"{path}: non-finite samples (NaN/Inf) in the raw signal")
    out = preprocess(data, sfreq, plan, cfg)
    if expected_length is not None and out.shape[1] != expected_length:
        raise BrainpipeError(
            f"{path}: changed since indexing ({out.shape[1]} samples after preprocessing, the index planned {expected_length}); re-run `brainpipe index`"
        )
    return np.ascontiguousarray(out.T), np.asarray(plan.mask, dtype=bool)


def _worker(job: tuple[int, str, dict, int, str]) -> tuple[int, bytes | None, str, int]:
    """Process one recording; returns (row, signal bytes or None, error reason, raw bytes read)."""
    i, path, pcfg, length, dtype = job
    cfg = PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in pcfg.items()})
    try:
        x, _mask = process_recording(path, cfg, expected_length=length)
        return i, x.astype(dtype).tobytes(), "", os.path.getsize(path)
    except BrainpipeError as e:
        return i, None, _strip_path(str(e), path), 0
    except (OSError, ValueError, MemoryError) as e:
        return i, None, f"unreadable: {e}", 0


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    # Linux writes at most ~2 GiB per call, and a long MEG recording is more than that.
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


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


def label_names_for(layout: str, labels: list[str]) -> tuple[str, ...]:
    if layout == "tuab":
        return TUAB_LABELS
    if layout == "tusz":
        return TUSZ_LABELS
    return tuple(sorted(set(labels) - {""}))


def make_plan(index, cfg: Config) -> Plan:
    from brainpipe.preprocess import output_length, plan_channels

    p, w = cfg.preprocess, cfg.window
    a = index.arrays
    window = int(round(w.seconds * p.sfreq))
    stride = int(round(w.stride_seconds * p.sfreq))
    layout_name = index.meta.get("layout", cfg.corpus.layout)
    names = label_names_for(layout_name, a["label"].tolist())
    lookup = {n: k for k, n in enumerate(names)}
    skipped: list[tuple[str, str]] = [(e["path"], e["reason"]) for e in index.errors]
    # Group recordings by subject (then path) so each subject's windows are one contiguous run.
    order = np.lexsort((a["path"], a["subject"])) if len(index) else np.zeros(0, np.int64)
    rows, lengths, masks, rates, t0 = [], [], [], [], []
    plans: dict[int, Any] = {}
    for i in order.tolist():
        path = str(a["path"][i])
        s = int(a["chanset"][i])
        try:
            if s not in plans:
                labels, types = index.channels(i), index.channel_types(i)
                plans[s] = plan_channels(labels, p, types if p.montage == "meg" else None)
            plan = plans[s]
        except BrainpipeError as e:
            plans[s] = e
            plan = e
        if isinstance(plan, BrainpipeError):
            skipped.append((path, str(plan)))
            continue
        srates = (
            index.channel_sfreqs(i)[list(plan.source)] if plan.source else np.array([a["sfreq"][i]])
        )
        if len(set(srates.tolist())) > 1:
            skipped.append(
                (
                    path,
                    f"picked channels have different sample rates {sorted(set(srates.tolist()))}",
                )
            )
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
            skipped.append(
                (
                    path,
                    f"too short: {length / p.sfreq:.1f} s after cropping, one window is {w.seconds:g} s",
                )
            )
            continue
        rows.append(i)
        lengths.append(length)
        masks.append(plan.mask)
        rates.append(sf)
        t0.append(min(p.crop_start_s, n_in / sf))
    rows_a = np.array(rows, dtype=np.int64)
    channels = _output_channels(index, rows_a, plans, p)
    n_ch = len(channels)
    recs = {
        "path": a["path"][rows_a],
        "subject": a["subject"][rows_a],
        "session": a["session"][rows_a],
        "split": a["split"][rows_a],
        "label": np.array([lookup.get(x, -1) for x in a["label"][rows_a].tolist()], dtype=np.int8),
        "sfreq_orig": np.array(rates, dtype=np.float64),
        "length": np.array(lengths, dtype=np.int64),
        "t0_s": np.array(t0, dtype=np.float64),
        "mask": np.array(masks, dtype=bool).reshape(len(rows), n_ch),
    }
    # Events re-keyed to planned rows; a TUSZ recording's label comes from its events.
    ev_rec = a["event_recording"]
    pos = np.full(len(index), -1, np.int64)
    pos[rows_a] = np.arange(len(rows_a))
    keep = pos[ev_rec] >= 0 if len(ev_rec) else np.zeros(0, bool)
    events = {
        "recording": pos[ev_rec][keep],
        "onset_s": a["event_onset_s"][keep],
        "offset_s": a["event_offset_s"][keep],
        "label": a["event_label"][keep],
    }
    order_ev = np.argsort(events["recording"], kind="stable")
    events = {k: v[order_ev] for k, v in events.items()}
    attrs = {
        "config": json.dumps({s: cfg.to_dict()[s] for s in CONFIG_SECTIONS}),
        "config_hash": cfg.section_hash(*CONFIG_SECTIONS),
        "index_hash": index.index_hash,
        "raw_root": index.raw_root,
        "brainpipe_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "layout": layout_name,
    }
    layout = Layout(channels, p.sfreq, cfg.cache.dtype, recs, events, names, attrs)
    return Plan(layout, rows_a, skipped, a["size"][rows_a], window, stride)


def _output_channels(index, rows: np.ndarray, plans: dict, p: PreprocessConfig) -> tuple[str, ...]:
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
# Build
# ---------------------------------------------------------------------------------------------


@dataclass
class BuildResult:
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

    def summary_text(self) -> str:
        if self.up_to_date:
            head = f"{self.cache_path} is up to date ({self.n_written} recordings, {self.n_windows} windows); pass --force to rebuild"
            return head
        mbps = self.raw_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"wrote {self.cache_path}: {self.n_written} recordings ({self.hours:.2f} h), {self.n_windows} windows, "
            f"{self.bytes / 1e6:.1f} MB on disk, {self.seconds:.1f} s, {mbps:.1f} MB/s of raw input"
            + (f", resumed after {self.resumed} done" if self.resumed else ""),
            f"skipped {self.n_skipped} recordings" + (":" if self.skipped else ""),
        ]
        reasons = Counter(reason_kind(r) for _, r in self.skipped)
        for reason, n in reasons.most_common(10):
            lines.append(f"  {n:>5}  {reason}")
        lines.append(
            "windows per split and label: "
            + "; ".join(
                f"{s or '-'}: " + ", ".join(f"{k}={v}" for k, v in sorted(c.items()))
                for s, c in sorted(self.counts.items())
            )
        )
        return "\n".join(lines)


def _partial_paths(cache_path: Path) -> tuple[Path, Path]:
    return cache_path.with_name(cache_path.name + ".partial"), cache_path.with_name(
        cache_path.name + ".journal"
    )


def _read_journal(journal: Path) -> dict[int, str]:
    """Row -> "" (done) or skip reason; a torn last line (killed mid-append) is ignored."""
    done: dict[int, str] = {}
    if not journal.exists():
        return done
    for line in journal.read_text(errors="replace").splitlines():
        row, sep, reason = line.partition("\t")
        if not sep:
            continue  # a line is complete only with its tab; the kill may have cut it
        try:
            done[int(row)] = reason
        except ValueError:
            continue
    return done


def _plan_hash(layout: Layout) -> str:
    h = hashlib.sha256()
    for k in ("path", "length"):
        h.update(np.ascontiguousarray(layout.recordings[k]).tobytes())
    h.update(json.dumps(list(layout.channels)).encode())
    return h.hexdigest()[:16]


def build_cache(
    index_path: str | os.PathLike,
    cache_path: str | os.PathLike,
    cfg: Config,
    workers: int | None = None,
    force: bool = False,
    raw_root: str | os.PathLike | None = None,
    progress: bool = True,
) -> BuildResult:
    """The `build-cache` stage; resumable, see the module docstring."""
    from brainpipe.indexfile import Index

    t0 = time.perf_counter()
    cache_path = Path(cache_path)
    index = Index.load(index_path)
    root = Path(raw_root) if raw_root else Path(index.raw_root)
    if not root.is_dir():
        raise BrainpipeError(
            f"{root}: raw directory of the index not found; pass --raw with where the corpus is now"
        )
    check_writable_dir(cache_path)
    plan = make_plan(index, cfg)
    n = len(plan.index_rows)
    if n == 0:
        reasons = Counter(reason_kind(r) for _, r in plan.skipped).most_common(3)
        raise BrainpipeError(
            f"{index_path}: no recording can be cached ({', '.join(f'{c} {r}' for r, c in reasons) or 'empty index'})"
        )
    layout = plan.layout
    layout.attrs["plan_hash"] = _plan_hash(layout)
    partial, journal = _partial_paths(cache_path)

    # An existing finished cache: up to date, or refuse to mix.
    if cache_path.exists() and not force:
        try:
            with CacheReader(cache_path) as old:
                same = (
                    old.attrs.get("config_hash") == layout.attrs["config_hash"]
                    and old.attrs.get("index_hash") == layout.attrs["index_hash"]
                )
                summary = old.summary()
        except BrainpipeError:
            same, summary = False, None
        if same and summary is not None:
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
        raise BrainpipeError(
            f"{cache_path}: exists and was built from a different config or index; pass --force to rebuild it"
        )

    done: dict[int, str] = {}
    if partial.exists() and not force:
        try:
            import h5py

            with h5py.File(partial, "r") as f:
                stamp = {k: f.attrs.get(k) for k in ("config_hash", "index_hash", "plan_hash")}
        except OSError:
            stamp = None  # unreadable (killed while being created): start over
        want = {k: layout.attrs[k] for k in ("config_hash", "index_hash", "plan_hash")}
        if stamp is not None and stamp != want:
            raise BrainpipeError(
                f"{partial}: an unfinished build with a different config or index is here; pass --force to discard it and rebuild"
            )
        if stamp is not None:
            done = _read_journal(journal)
    if not done:
        for p in (partial, journal):
            p.unlink(missing_ok=True)
        try:
            create_layout(partial, layout)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise BrainpipeError(f"{partial}: cannot create the cache ({e})") from e
    resumed = len(done)
    base, shape, dtype = signals_offset(partial)
    row_bytes = shape[1] * dtype.itemsize
    offsets = np.concatenate([[0], np.cumsum(layout.recordings["length"])[:-1]])
    status = np.full(n, STATUS_PENDING, np.uint8)
    skipped_runtime: list[tuple[str, str]] = []
    for row, reason in done.items():
        status[row] = STATUS_SKIPPED if reason else STATUS_DONE
        if reason:
            skipped_runtime.append((str(layout.recordings["path"][row]), reason))

    pending = [r for r in range(n) if status[r] == STATUS_PENDING]
    pcfg = cfg.to_dict()["preprocess"]
    jobs = [
        (
            r,
            str(root / str(layout.recordings["path"][r])),
            pcfg,
            int(layout.recordings["length"][r]),
            cfg.cache.dtype,
        )
        for r in pending
    ]
    n_workers = max(1, workers or cfg.cache.workers)
    raw_bytes = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, initial=n - len(pending), unit="rec", desc="build-cache", disable=None)
    try:
        fd = os.open(partial, os.O_WRONLY)
    except OSError as e:
        raise BrainpipeError(f"{partial}: cannot open for writing ({e.strerror})") from e
    try:
        with open(journal, "a") as jf:
            for row, payload, reason, nbytes in _run_jobs(jobs, n_workers):
                if payload is not None:
                    try:
                        _pwrite_all(fd, payload, base + int(offsets[row]) * row_bytes)
                        os.fdatasync(fd)
                    except OSError as e:
                        raise BrainpipeError(
                            f"{partial}: cannot write ({e.strerror}); free space or choose another --cache path, then re-run to resume"
                        ) from e
                    status[row] = STATUS_DONE
                    raw_bytes += nbytes
                    jf.write(f"{row}\t\n")
                else:
                    status[row] = STATUS_SKIPPED
                    skipped_runtime.append((str(layout.recordings["path"][row]), reason))
                    jf.write(f"{row}\t{reason}\n")
                jf.flush()
                os.fsync(jf.fileno())
                if bar is not None:
                    bar.update(1)
                    el = time.perf_counter() - t0
                    bar.set_postfix_str(f"{raw_bytes / 1e6 / el:.1f} MB/s" if el > 0 else "")
    finally:
        os.close(fd)
        if bar is not None:
            bar.close()

    skipped = plan.skipped + skipped_runtime
    if not (status == STATUS_DONE).any():
        raise BrainpipeError(
            f"{index_path}: every recording failed; first: {skipped_runtime[0][0]}: {skipped_runtime[0][1]}"
        )
    finalize(
        partial,
        status,
        skipped,
        plan.window,
        plan.stride,
        cfg.window.label_overlap,
        {"n_skipped": len(skipped)},
    )
    counts = _label_counts(partial)
    _check_labels(counts, cfg, partial)
    final_src = partial
    if cfg.cache.compression != "none":
        packed = cache_path.with_name(cache_path.name + ".packed")
        repack(partial, packed, cfg.cache.compression)
        final_src = packed
    _fsync_file(final_src)
    os.replace(final_src, cache_path)
    fsync_dir(cache_path.parent)
    for p in (partial, journal):
        p.unlink(missing_ok=True)
    done_mask = status == STATUS_DONE
    with CacheReader(cache_path) as r:
        n_windows = len(r.windows["start"])
    return BuildResult(
        cache_path,
        int(done_mask.sum()),
        len(skipped),
        skipped,
        float(layout.recordings["length"][done_mask].sum() / layout.sfreq / 3600),
        n_windows,
        cache_path.stat().st_size,
        time.perf_counter() - t0,
        raw_bytes,
        counts,
        resumed,
    )


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _run_jobs(jobs: list, n_workers: int):
    """Yield worker results; at most 2 * n_workers recordings in flight (bounded memory)."""
    if n_workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield _worker(job)
        return
    import multiprocessing as mp

    ctx = mp.get_context()
    with ctx.Pool(n_workers, maxtasksperchild=200) as pool:
        pending = []
        it = iter(jobs)
        for job in it:
            pending.append(pool.apply_async(_worker, (job,)))
            if len(pending) >= 2 * n_workers:
                break
        while pending:
            # Take whichever result is ready first, so one long recording does not stall the rest.
            while True:
                ready = [k for k, p in enumerate(pending) if p.ready()]
                if ready:
                    break
                pending[0].wait(0.01)
            for k in reversed(ready):
                res = pending.pop(k).get()
                yield res
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.apply_async(_worker, (nxt,)))


def _label_counts(path: Path) -> dict[str, dict[str, int]]:
    import h5py

    from brainpipe.cachefile import _decode

    with h5py.File(path, "r") as f:
        names = json.loads(f.attrs["label_names"])
        split = _decode(f["recordings"]["split"][()])
        rec, lab = f["windows"]["recording"][()], f["windows"]["label"][()]
    out: dict[str, dict[str, int]] = {}
    ws = split[rec] if len(rec) else np.zeros(0, str)
    for s in sorted(set(ws.tolist())):
        m = ws == s
        out[s] = {
            (names[int(v)] if 0 <= v < len(names) else "none"): int(c)
            for v, c in zip(*np.unique(lab[m], return_counts=True), strict=True)
        }
    return out


def _check_labels(counts: dict[str, dict[str, int]], cfg: Config, partial: Path) -> None:
    """Fail when the task's classes came out empty (e.g. misparsed TUSZ annotations)."""
    need = TASK_LABELS.get(cfg.cache.task)
    if need is None:
        return
    total = Counter()
    for c in counts.values():
        total.update(c)
    empty = [k for k in need if total.get(k, 0) == 0]
    if empty:
        table = "; ".join(
            f"{s or '-'}: " + ", ".join(f"{k}={v}" for k, v in sorted(c.items()))
            for s, c in sorted(counts.items())
        )
        raise BrainpipeError(
            f"cache.task={cfg.cache.task} needs {' and '.join(need)} windows but {', '.join(empty)} came out empty "
            f"(windows per split: {table}); check the labels/annotations in the index. The finished file is left at {partial}"
        )


# ---------------------------------------------------------------------------------------------
# Verify
# ---------------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    path: str
    problems: list[str]
    checked_windows: int
    max_abs_error: float

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        head = f"verify {self.path}: {'OK' if self.ok else 'FAILED'} ({self.checked_windows} windows re-preprocessed from raw, max |error| {self.max_abs_error:.4g})"
        return "\n".join([head] + [f"  {p}" for p in self.problems])

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "checked_windows": self.checked_windows,
            "max_abs_error": self.max_abs_error,
            "text": self.text(),
        }


def verify_cache(
    path: str | os.PathLike,
    n_windows: int = 8,
    raw_root: str | os.PathLike | None = None,
    seed: int = 0,
) -> VerifyReport:
    """Tables consistent, no NaN/Inf, and random windows match a fresh preprocessing of the raw file."""
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
        step = max(1, 4_000_000 // max(1, r.n_channels))
        for lo in range(0, n_rows, step):
            block = r.read(lo, min(step, n_rows - lo))
            if not np.isfinite(block).all():
                problems.append(f"non-finite values in /signals rows {lo}..{lo + len(block)}")
                break
        cfg = config_from_dict(json.loads(r.attrs["config"]))
        root = Path(raw_root or r.attrs.get("raw_root", ""))
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(wr), size=min(n_windows, len(wr)), replace=False) if len(wr) else []
        max_err = 0.0
        checked = 0
        cache_recs: dict[int, np.ndarray] = {}
        for k in sorted(int(x) for x in picks):
            i = int(wr[k])
            src = root / str(rec["path"][i])
            try:
                if i not in cache_recs:
                    cache_recs[i] = process_recording(
                        src, cfg.preprocess, expected_length=int(length[i])
                    )[0]
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
