"""Writing a cache crash-safely: `CacheWriter`, the one way a cache file comes into being.

The sequence (docs/cache-format.md): take an exclusive flock on `<cache>.journal` (a second
build on the path fails at once naming the holder's pid), create or resume `<cache>.partial`
with every table of the plan and a contiguous, pre-allocated /signals, put each recording's
rows at their reserved offset with pwrite + fdatasync (`write`, or a worker process through
`target(row)` -> `RowTarget`) and append `row<TAB>reason` to the journal with fsync, then
`finish`: snapshot every byte outside /signals to `<cache>.finalizing`, write the window,
subject and skipped tables and `complete` last, optionally repack compressed, fsync, rename.

HDF5's own metadata is untouched between create and finish, so kill -9 at any moment leaves a
partial file that reopens and a journal saying which rows are written; a finalize that was
killed, torn or ran out of disk is undone from the snapshot at the next open and redone from
the journal without preprocessing anything again.

Long because the sequence is one protocol: the lock, the journal, the reserved
offsets, the snapshot and the finalize each rely on an ordering the others keep, and a reader of
one step needs the others beside it to see that it is crash-safe. The layout constants it
shares with the reader are in `layout.py`. h5py is imported inside functions because it costs
about 0.3 s and `brainpipe.cachefile` is imported on paths that never open a cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.cachefile.layout import (
    COMPRESSION,
    FORMAT_VERSION,
    RESUME_KEYS,
    STATUS_DONE,
    STATUS_PENDING,
    STATUS_SKIPPED,
    Layout,
    compute_windows,
    decode_strings,
    plan_hash,
    str_array,
    task_events,
    task_of,
)
from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import fsync_dir


@dataclass(frozen=True)
class Written:
    """What `CacheWriter.finish` put under the final name."""

    path: Path
    n_windows: int
    counts: dict[str, dict[str, int]]  # windows per split and label name
    bytes: int


@dataclass(frozen=True)
class RowTarget:
    """A recording's reserved rows in a partial cache: a file, a byte offset, a shape, a dtype.

    Picklable; `open()` gives the sink `preprocess.preprocess_chunked` fills (`sink[t0:t1] =
    rows`, in time order), which pwrites each block at its place and fdatasyncs on close.
    """

    path: str
    offset: int
    length: int
    item_bytes: int
    n_channels: int
    dtype: str

    @contextlib.contextmanager
    def open(self) -> Iterator[_RowSink]:
        fd = os.open(self.path, os.O_WRONLY)
        try:
            sink = _RowSink(self, fd)
            yield sink
            if sink.next != self.length:
                raise ValueError(f"{sink.next} rows written, the layout reserves {self.length}")
            os.fdatasync(fd)
        finally:
            os.close(fd)


class _RowSink:
    def __init__(self, target: RowTarget, fd: int):
        self.target, self.fd, self.next = target, fd, 0
        self._row_bytes = target.item_bytes * target.n_channels

    def __setitem__(self, rows: slice, block: np.ndarray) -> None:
        t = self.target
        start = rows.start or 0
        if start != self.next or len(block) != (rows.stop - start):
            raise ValueError(f"rows {start}..{rows.stop} out of order (next is {self.next})")
        data = np.ascontiguousarray(block, dtype=t.dtype).tobytes()
        _pwrite_all(self.fd, data, t.offset + start * self._row_bytes)
        self.next = rows.stop


class CacheWriter:
    """Write one cache crash-safely: create or resume `<cache>.partial`, fill it, rename it.

        with CacheWriter("cache.h5", layout) as writer:
            for row in writer.pending_rows():
                writer.write(row, x)          # (length, n_channels) array, or its bytes
                # or: writer.skip(row, "unreadable: ...")
            writer.finish(window=400, stride=200, label_overlap=0.5)

    Entering creates `<cache>.partial` from `layout` (every table of the plan, a contiguous
    /signals allocated up front) or, when one with the same RESUME_KEYS is there, resumes it:
    the rows in `<cache>.journal` are `done_rows` and are not pending. `write` pwrites one
    recording's rows at their reserved file offset and fdatasyncs; `write` and `skip` append
    `row<TAB>reason` to the journal and fsync it. HDF5 metadata is untouched until `finish`, so
    kill -9 at any moment leaves a partial file that reopens. `finish` writes the window, subject
    and skipped tables and `complete`, optionally repacks compressed, fsyncs and renames to the
    final name. On an exception the partial file and the journal stay for the next run to resume.
    """

    def __init__(self, path: str | os.PathLike, layout: Layout, *, overwrite: bool = False):
        self.path = Path(path)
        self.layout = layout
        self.overwrite = overwrite
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.journal = self.path.with_name(self.path.name + ".journal")
        self.plan_hash = plan_hash(layout)
        lengths = layout.recordings["length"].astype(np.int64)
        self._lengths = lengths
        self._offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.status = np.full(len(lengths), STATUS_PENDING, np.uint8)
        self.done_rows: dict[int, str] = {}  # from the journal: row -> "" (written) or skip reason
        self.skipped: list[tuple[str, str]] = []  # (path, reason) of rows skipped while writing
        self.snapshot = self.path.with_name(self.path.name + ".finalizing")
        self._fd: int | None = None
        self._jf = None

    # opening: create or resume ------------------------------------------------------------
    def __enter__(self) -> CacheWriter:
        self._lock_journal()
        try:
            self._open()
        except BaseException:
            self._close()
            raise
        return self

    def _open(self) -> None:
        self.path.with_name(self.path.name + ".packed").unlink(missing_ok=True)
        _restore_snapshot(self.snapshot, self.partial, None if self.overwrite else self.plan_hash)
        self.done_rows = {} if self.overwrite else self._resumable_rows()
        if not self.done_rows:
            for p in (self.partial, self.snapshot):
                p.unlink(missing_ok=True)
            os.ftruncate(self._jf.fileno(), 0)
            try:
                _create(self.partial, self.layout, self.plan_hash)
            except OSError as e:
                self.partial.unlink(missing_ok=True)
                raise BrainpipeError(f"{self.partial}: cannot create the cache ({e})") from e
        for row, reason in self.done_rows.items():
            self.status[row] = STATUS_SKIPPED if reason else STATUS_DONE
            if reason:
                self.skipped.append((str(self.layout.recordings["path"][row]), reason))
        self._base, shape, dtype = _signals_offset(self.partial)
        self._row_bytes = shape[1] * dtype.itemsize
        try:
            self._fd = os.open(self.partial, os.O_WRONLY)
        except OSError as e:
            raise BrainpipeError(f"{self.partial}: cannot open for writing ({e.strerror})") from e
        # Also locked: a reader (or HDF5 in another process) cannot open it while rows land.
        _flock(self._fd, self.partial)

    def _lock_journal(self) -> None:
        """Take the build's exclusive lock: the journal, held from open to the final rename.

        Two builds on one path once wrote the same partial file at once (one marked rows written
        that held zeros). The journal is never replaced during a build, so its lock is stable;
        a second build fails here, before touching anything, naming the process that holds it.
        """
        try:
            self._jf = open(self.journal, "a")  # noqa: SIM115 -- closed by __exit__ / finish
        except OSError as e:
            raise BrainpipeError(f"{self.journal}: cannot open for writing ({e.strerror})") from e
        try:
            _flock(self._jf.fileno(), self.journal)
        except BrainpipeError:
            self._jf.close()
            self._jf = None
            raise

    def _resumable_rows(self) -> dict[int, str]:
        """The journal of a partial file this layout may resume, or {} to start over."""
        if not self.partial.exists():
            return {}
        import h5py

        try:
            with h5py.File(self.partial, "r") as f:
                stamp = {k: f.attrs.get(k) for k in RESUME_KEYS}
        except OSError:
            return {}  # unreadable (killed while being created): start over
        want = {**{k: self.layout.attrs.get(k) for k in RESUME_KEYS}, "plan_hash": self.plan_hash}
        if stamp != want:
            raise BrainpipeError(
                f"{self.partial}: an unfinished build with a different config or index is here; pass --force to discard it and rebuild"
            )
        return _read_journal(self.journal)

    def __exit__(self, *exc) -> None:
        self._close()  # on an exception, the partial file and journal stay for a resume

    def discard(self) -> None:
        """Remove the partial file and its journal (a build that wrote nothing worth resuming)."""
        self._close_partial()
        for p in (self.partial, self.snapshot, self.journal):
            p.unlink(missing_ok=True)
        self._close()

    def _close(self) -> None:
        self._close_partial()
        if self._jf is not None:
            self._jf.close()  # releases the build's lock
            self._jf = None

    def _close_partial(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # rows ---------------------------------------------------------------------------------
    @property
    def resumed(self) -> int:
        """Rows the journal of a resumed partial file already had."""
        return len(self.done_rows)

    @property
    def n_written(self) -> int:
        return int((self.status == STATUS_DONE).sum())

    def pending_rows(self) -> list[int]:
        return np.flatnonzero(self.status == STATUS_PENDING).tolist()

    def write(self, row: int, x: np.ndarray | bytes) -> None:
        """Store recording `row`: (length, n_channels) rows, or those rows' bytes in the dtype."""
        data = x if isinstance(x, bytes) else np.ascontiguousarray(x, self.layout.dtype).tobytes()
        want = int(self._lengths[row]) * self._row_bytes
        if len(data) != want:
            raise ValueError(f"row {row}: {len(data)} bytes given, the layout reserves {want}")
        try:
            _pwrite_all(self._fd, data, self._base + int(self._offsets[row]) * self._row_bytes)
            os.fdatasync(self._fd)
        except OSError as e:
            raise BrainpipeError(
                f"{self.partial}: cannot write ({e.strerror}); free space or choose another --cache path, then re-run to resume"
            ) from e
        self.status[row] = STATUS_DONE
        self._journal(row, "")

    def target(self, row: int) -> RowTarget:
        """Where recording `row`'s bytes go, for a worker process that writes them itself
        (`RowTarget.open()`), so a long recording's result never has to be held or sent."""
        item = np.dtype(self.layout.dtype).itemsize
        return RowTarget(
            str(self.partial),
            self._base + int(self._offsets[row]) * self._row_bytes,
            int(self._lengths[row]),
            item,
            self._row_bytes // item,
            str(np.dtype(self.layout.dtype)),
        )

    def written(self, row: int) -> None:
        """Record that a worker wrote recording `row` through its `target` (and fdatasynced)."""
        self.status[row] = STATUS_DONE
        self._journal(row, "")

    def write_failed(self, strerror: str) -> None:
        """A worker could not write its rows (a full disk): the build stops, resumable."""
        raise BrainpipeError(
            f"{self.partial}: cannot write ({strerror}); free space or choose another --cache path, then re-run to resume"
        )

    def skip(self, row: int, reason: str) -> None:
        """Leave recording `row` out; its reserved rows stay zeros no window points at."""
        self.status[row] = STATUS_SKIPPED
        self.skipped.append((str(self.layout.recordings["path"][row]), reason))
        self._journal(row, reason)

    def _journal(self, row: int, reason: str) -> None:
        self._jf.write(f"{row}\t{reason}\n")
        self._jf.flush()
        os.fsync(self._jf.fileno())

    # finishing ----------------------------------------------------------------------------
    def finish(
        self,
        window: int,
        stride: int,
        label_overlap: float,
        *,
        skipped: list[tuple[str, str]] | tuple = (),
        compression: str = "none",
        check: Callable[[dict[str, dict[str, int]]], None] | None = None,
        anchor: str = "grid",
    ) -> Written:
        """Finalize the tables, `complete` last, then repack (compression), fsync, rename.

        `skipped` are (path, reason) left out before writing (the plan's); the writer adds its
        own. `check(counts)` sees the windows per split and label of the finalized partial file
        and may raise to stop before the rename (the partial file then stays, finished).
        """
        pending = self.pending_rows()
        if pending:
            raise ValueError(f"rows {pending[:5]}... were neither written nor skipped")
        self._close_partial()  # HDF5 locks the file itself from here; the journal lock stays
        all_skipped = list(skipped) + self.skipped
        try:
            # Every row is in: keep the file's metadata as it is now, so a finalize that is
            # killed or torn half-way is undone at the next open and redone from the journal.
            _write_snapshot(self.snapshot, self.partial, self.plan_hash, self._signals_span())
            n_windows = _finalize(
                self.partial, self.status, all_skipped, window, stride, label_overlap, anchor
            )
            counts = _label_counts(self.partial)
        except OSError as e:
            raise _finalize_error(self.partial, e) from None
        if check is not None:
            check(counts)
        try:
            final_src = self.partial
            if compression != "none":
                final_src = self.path.with_name(self.path.name + ".packed")
                _repack(self.partial, final_src, compression)
            _fsync_file(final_src)
            os.replace(final_src, self.path)
            fsync_dir(self.path.parent)
        except OSError as e:
            raise _finalize_error(self.partial, e) from None
        for p in (self.partial, self.snapshot, self.journal):
            p.unlink(missing_ok=True)
        self._close()
        return Written(self.path, n_windows, counts, self.path.stat().st_size)

    def _signals_span(self) -> tuple[int, int]:
        """File offset and byte length of /signals: the part finalize never writes."""
        return self._base, int(self._lengths.sum()) * self._row_bytes


def _finalize_error(partial: Path, e: OSError) -> BrainpipeError:
    """One line for a finalize that failed on the file system (disk full, quota, I/O error)."""
    why = os.strerror(e.errno) if e.errno else (str(e).splitlines() or [type(e).__name__])[0]
    return BrainpipeError(
        f"{partial}: cannot finalize the cache ({why}); every written recording is kept: free "
        "space or choose another --cache path, then re-run to resume"
    )


def _flock(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _flock_holder(fd)
        who = f"process {pid}" if pid else "another process"
        raise BrainpipeError(
            f"{path}: this cache is being built by {who} right now; wait for it to finish or stop it, "
            "then re-run (a second build on the same path would corrupt it)"
        ) from None
    except OSError:
        pass  # a file system without flock (some network mounts): nothing to lock with


def _flock_holder(fd: int) -> int | None:
    """The pid holding a flock on `fd`'s file, from /proc/locks (Linux), else None."""
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        f = line.split()
        if len(f) >= 6 and f[1] == "FLOCK" and f[3] == "WRITE" and f[5].lower() == dev:
            return int(f[4])
    return None


_SNAPSHOT_MAGIC = b"brainpipe-finalize-1\n"


def _write_snapshot(snapshot: Path, partial: Path, plan: str, span: tuple[int, int]) -> None:
    """Save the partial file's bytes outside /signals (its HDF5 metadata), atomically."""
    base, nbytes = span
    with open(partial, "rb") as f:
        head = f.read(base)
        f.seek(base + nbytes)
        tail = f.read()
    meta = {
        "plan_hash": plan,
        "base": base,
        "nbytes": nbytes,
        "size": base + nbytes + len(tail),
        "sha256": hashlib.sha256(head + tail).hexdigest(),
    }
    tmp = snapshot.with_name(snapshot.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_SNAPSHOT_MAGIC + json.dumps(meta).encode() + b"\n" + head + tail)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, snapshot)
        fsync_dir(snapshot.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _restore_snapshot(snapshot: Path, partial: Path, plan: str | None) -> None:
    """Undo a finalize that did not reach the rename: put the saved metadata back.

    Only /signals is kept as it is (finalize never writes it), so the tables are redone from
    the journal and no recording is preprocessed again. A snapshot of another plan (or with
    `plan=None`: start over) is dropped.
    """
    snapshot.with_name(snapshot.name + ".tmp").unlink(missing_ok=True)
    if not snapshot.exists():
        return
    data = snapshot.read_bytes()
    head_len = len(_SNAPSHOT_MAGIC)
    nl = data.find(b"\n", head_len)
    try:
        meta = json.loads(data[head_len:nl]) if data.startswith(_SNAPSHOT_MAGIC) else {}
    except ValueError:
        meta = {}
    body = data[nl + 1 :]
    if plan is not None and meta.get("plan_hash") not in (plan, None) and partial.exists():
        return  # another plan's: kept for that plan; opening refuses to mix them anyway
    ok = (
        plan is not None
        and meta.get("plan_hash") == plan
        and partial.exists()
        and hashlib.sha256(body).hexdigest() == meta.get("sha256")
    )
    if ok:
        base, end = int(meta["base"]), int(meta["base"]) + int(meta["nbytes"])
        fd = os.open(partial, os.O_WRONLY)
        try:
            _pwrite_all(fd, body[:base], 0)
            _pwrite_all(fd, body[base:], end)
            os.ftruncate(fd, int(meta["size"]))
            os.fsync(fd)
        finally:
            os.close(fd)
    snapshot.unlink()


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


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    # Linux writes at most ~2 GiB per call, and a long MEG recording is more than that.
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path, layout: Layout, plan_hash: str) -> None:
    """Create the partial file: tables of the plan and a contiguous, pre-allocated /signals."""
    import h5py

    r = layout.recordings
    lengths = r["length"].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    total = int(lengths.sum())
    n_ch = len(layout.channels)
    with h5py.File(path, "w", libver="latest") as f:
        space = h5py.h5s.create_simple((max(total, 1), n_ch))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.CONTIGUOUS)
        # Early allocation gives the dataset its final file offset now, so the build can write
        # rows with plain pwrite and never touch HDF5 metadata again until the end.
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        h5py.h5d.create(
            f.id, b"signals", h5py.h5t.py_create(np.dtype(layout.dtype)), space, dcpl=dcpl
        )
        g = f.create_group("recordings")
        for k in ("path", "subject", "session", "split"):
            g.create_dataset(k, data=str_array(r[k]))
        g.create_dataset("label", data=r["label"].astype(np.int8))
        g.create_dataset("sfreq_orig", data=r["sfreq_orig"].astype(np.float64))
        g.create_dataset("offset", data=offsets)
        g.create_dataset("length", data=lengths)
        g.create_dataset("t0_s", data=r["t0_s"].astype(np.float64))
        g.create_dataset("mask", data=r["mask"].astype(bool).reshape(len(lengths), n_ch))
        g.create_dataset("status", data=np.zeros(len(lengths), np.uint8))
        e = f.create_group("events")
        e.create_dataset("recording", data=layout.events["recording"].astype(np.int64))
        e.create_dataset("onset_s", data=layout.events["onset_s"].astype(np.float64))
        e.create_dataset("offset_s", data=layout.events["offset_s"].astype(np.float64))
        e.create_dataset("label", data=str_array(layout.events["label"]))
        for k, v in layout.attrs.items():
            f.attrs[k] = v
        f.attrs["plan_hash"] = plan_hash
        f.attrs["task"] = layout.task
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["channels"] = json.dumps(list(layout.channels))
        f.attrs["sfreq"] = float(layout.sfreq)
        f.attrs["dtype"] = layout.dtype
        f.attrs["label_names"] = json.dumps(list(layout.label_names))
        f.attrs["complete"] = False


def _signals_offset(path: Path) -> tuple[int, tuple[int, int], np.dtype]:
    """File offset, shape and dtype of a contiguous /signals (for pwrite)."""
    import h5py

    with h5py.File(path, "r") as f:
        d = f["signals"]
        off = d.id.get_offset()
        if off is None:
            raise BrainpipeError(f"{path}: /signals has no contiguous storage (compressed cache?)")
        return int(off), tuple(d.shape), d.dtype


def _finalize(
    partial: Path,
    status: np.ndarray,
    skipped: list[tuple[str, str]],
    window: int,
    stride: int,
    label_overlap: float,
    anchor: str = "grid",
) -> int:
    """Write the window/subject/skipped tables and, last, `complete`; returns the window count."""
    import h5py

    with h5py.File(partial, "r+") as f:
        # A finalize killed half-way is simply redone: drop what it had written.
        for name in (
            "windows",
            "subjects",
            "skipped",
            "signals_c",
            "recordings/n_windows",
            "recordings/first_window",
        ):
            if name in f:
                del f[name]
        g = f["recordings"]
        g["status"][...] = status
        offsets, lengths = g["offset"][()], g["length"][()]
        subjects = decode_strings(g["subject"][()])
        names = tuple(json.loads(f.attrs["label_names"]))
        events = task_events(
            task_of(dict(f.attrs), names), names, {k: v[()] for k, v in f["events"].items()}
        )
        win = compute_windows(
            offsets,
            lengths,
            window,
            stride,
            g["label"][()],
            events,
            float(f.attrs["sfreq"]),
            g["t0_s"][()],
            label_overlap,
            keep=status == STATUS_DONE,
            anchor=anchor,
        )
        g.create_dataset("n_windows", data=win["counts"])
        g.create_dataset("first_window", data=win["first"])
        w = f.create_group("windows")
        w.create_dataset("recording", data=win["recording"])
        w.create_dataset("start", data=win["start"])
        w.create_dataset("label", data=win["label"])
        _write_subjects(f, subjects, win["counts"])
        k = f.create_group("skipped")
        k.create_dataset("path", data=str_array([p for p, _ in skipped]))
        k.create_dataset("reason", data=str_array([r for _, r in skipped]))
        f.attrs["window_samples"] = int(window)
        f.attrs["stride_samples"] = int(stride)
        f.attrs["label_overlap"] = float(label_overlap)
        f.attrs["window_anchor"] = anchor
        f.attrs["n_skipped"] = len(skipped)
        f.attrs["complete"] = True
        f.flush()
        return len(win["start"])


def _write_subjects(f, subjects: np.ndarray, counts: np.ndarray) -> None:
    # Recordings are laid out grouped by subject, so each subject's windows are one run.
    names, first_rec = (
        np.unique(subjects, return_index=True)
        if len(subjects)
        else (np.zeros(0, str), np.zeros(0, np.int64))
    )
    order = np.argsort(first_rec)
    names, first_rec = names[order], first_rec[order]
    n_recs = np.diff(np.concatenate([first_rec, [len(subjects)]]))
    cum = np.concatenate([[0], np.cumsum(counts)])
    s = f.create_group("subjects")
    s.create_dataset("name", data=str_array(names))
    s.create_dataset("first_recording", data=first_rec.astype(np.int64))
    s.create_dataset("n_recordings", data=n_recs.astype(np.int64))
    s.create_dataset("first_window", data=cum[first_rec].astype(np.int64))
    s.create_dataset("n_windows", data=(cum[first_rec + n_recs] - cum[first_rec]).astype(np.int64))


def _label_counts(path: Path) -> dict[str, dict[str, int]]:
    """Windows per split and label name of a finalized file."""
    import h5py

    with h5py.File(path, "r") as f:
        names = json.loads(f.attrs["label_names"])
        split = decode_strings(f["recordings"]["split"][()])
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


def _repack(src: Path, dst: Path, compression: str) -> None:
    """Copy a finished cache to `dst` with a chunked, compressed /signals (slower reads).

    A new file, because HDF5 never gives back the space of a deleted dataset.
    """
    import h5py

    with h5py.File(src, "r") as fin, h5py.File(dst, "w", libver="latest") as fout:
        sig = fin["signals"]
        n, c = sig.shape
        chunk_rows = max(1, min(n, int(fin.attrs["window_samples"])))
        if compression == "blosc":
            try:
                import hdf5plugin
            except ImportError as e:
                raise BrainpipeError(
                    "cache.compression=blosc needs hdf5plugin: pip install 'brainpipe[blosc]'"
                ) from e
            kwargs: dict[str, Any] = dict(
                hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)
            )
        else:
            kwargs = {"compression": COMPRESSION[compression]}
        dst_sig = fout.create_dataset(
            "signals", shape=(n, c), dtype=sig.dtype, chunks=(chunk_rows, c), **kwargs
        )
        step = chunk_rows * max(1, 8_000_000 // max(1, chunk_rows * c * sig.dtype.itemsize))
        for lo in range(0, n, step):
            dst_sig[lo : lo + step] = sig[lo : lo + step]
        for name in fin:
            if name != "signals":
                fin.copy(fin[name], fout, name=name)
        for k, v in fin.attrs.items():
            if k != "complete":
                fout.attrs[k] = v
        fout.attrs["compression"] = compression
        fout.attrs["complete"] = True  # last, as in _finalize
