"""Raw recordings in object storage (`s3://bucket/prefix`, or any fsspec URL): list, head, fetch.

Owns the remote-read path of the raw tree, nothing else: stages call it only for URL roots
(`fsutil.is_url`), so a local root keeps its direct `os.open` path untouched.

- `ObjectStore(root).list()`: ONE recursive listing with size, ETag and mtime per object.
- `read_heads(objects, n=16 KiB)`: the first n bytes of many objects, `max_in_flight` range GETs
  at once; a second range read only where the header is longer (`header_length(head)` says so).
  A FUSE mount or fsspec's default `open()` (50 MiB read-ahead) would download whole files.
- `fetch(obj)` / `fetch_to_spool(obj, dir)` / `fetch_into(objs, dir)`: whole objects with one
  GET each, to memory, a spool file or a folder under their own names (a recording of several
  files), with retries and exponential backoff on transient errors.
- Every result carries the bytes it transferred and its request count (`Transfer`).

Credentials come from the backend's own chain (environment, config files, instance role); this
module never receives, logs or stores one. Backends are optional extras: `pip install
'brainpipe[s3]'` for `s3://` (fsspec + s3fs).

Example:
    store = ObjectStore("s3://tuh/tuab/v3.0.1/edf")
    objects = store.list(suffixes=(".edf",))
    heads = store.read_heads(objects, header_length=lambda b: int(b[184:192]))
    with store.fetch_to_spool(objects[0]) as got:
        got.path  # a local file, removed on exit
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import URL_SCHEME

HEAD_BYTES = 16 * 1024  # holds an EDF header of up to 63 signals: one GET for nearly every file
SPOOL_CHUNK = 64 * 1024 * 1024  # whole-object reads up to this size are one GET
# fetch_into runs max_in_flight downloads at once: 64 x 8 MiB bounds its memory at 512 MiB.
FOLDER_CHUNK = 8 * 1024 * 1024

# Which install brings a protocol's backend; the s3 extra is ours, the others are fsspec's own.
_INSTALL = {
    "s3": "pip install 'brainpipe[s3]'",
    "s3a": "pip install 'brainpipe[s3]'",
    "gs": "pip install gcsfs",
    "gcs": "pip install gcsfs",
    "az": "pip install adlfs",
    "abfs": "pip install adlfs",
    "abfss": "pip install adlfs",
}

# Errors no retry can fix; anything else from a backend (timeouts, resets, 5xx, throttling,
# which s3fs/aiohttp raise under many types) is tried again.
_PERMANENT = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    BrainpipeError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    NotImplementedError,
)


class ObjectStoreError(BrainpipeError):
    """A remote read that failed for good; the message is one line naming the URL."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object from a listing. `key` is relative to the store root, with `/` separators."""

    key: str
    url: str
    size: int
    etag: str | None  # without quotes; None where the backend has none (local files)
    mtime_ns: int | None


@dataclass(frozen=True, slots=True)
class Transfer:
    """What one call cost: payload bytes received, requests sent, of which retries."""

    bytes: int = 0
    requests: int = 0
    retries: int = 0

    def __add__(self, other: Transfer) -> Transfer:
        return Transfer(
            self.bytes + other.bytes, self.requests + other.requests, self.retries + other.retries
        )


@dataclass(frozen=True, slots=True)
class Head:
    """The leading bytes of one object, or the one-line reason they could not be read."""

    obj: ObjectInfo
    data: bytes
    transfer: Transfer
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """One whole object: `data` in memory, or `path` to a spool file."""

    obj: ObjectInfo
    transfer: Transfer
    data: bytes | None = None
    path: Path | None = None


def _filesystem(
    root: str, storage_options: dict[str, Any] | None, max_in_flight: int
) -> tuple[Any, str]:
    protocol = URL_SCHEME.match(root).group(1).lower() if URL_SCHEME.match(root) else "file"
    options = dict(storage_options or {})
    if protocol in ("s3", "s3a"):
        # botocore's pool holds 10 connections by default, which silently caps requests in
        # flight at 10: 600 header reads at 100 ms latency took 7.0 s with it, 2.1 s with 64.
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("max_pool_connections", max_in_flight)
        options["config_kwargs"] = config
    hint = _INSTALL.get(protocol, f"install the fsspec backend for {protocol}://")
    try:
        import fsspec
    except ImportError as e:
        raise ObjectStoreError(f"{root}: reading {protocol}:// needs fsspec: {hint}") from e
    try:
        fs, path = fsspec.core.url_to_fs(root, **options)
    except ImportError as e:
        raise ObjectStoreError(f"{root}: reading {protocol}:// needs its backend: {hint}") from e
    except ValueError as e:  # unknown protocol
        raise ObjectStoreError(f"{root}: {e}") from e
    return fs, path.rstrip("/")


def _etag(info: dict) -> str | None:
    for k in ("ETag", "etag", "md5Hash", "content_settings.content_md5"):
        v = info.get(k)
        if v:
            return str(v).strip('"')
    return None


def _mtime_ns(info: dict) -> int | None:
    for k in ("LastModified", "mtime", "updated", "last_modified", "last-modified"):
        v = info.get(k)
        if v is None:
            continue
        if isinstance(v, datetime.datetime):
            return int(v.timestamp() * 1e9)
        if isinstance(v, int | float):
            return int(v * 1e9)
        with contextlib.suppress(ValueError):
            return int(
                datetime.datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp() * 1e9
            )
    return None


class ObjectStore:
    """A read-only view of an fsspec URL root: shared by threads, pickled by root, fork-safe.

    `max_in_flight` bounds concurrent requests; `retries` counts extra tries after the first on
    transient errors, waiting `backoff_s * 2**k` (with jitter) before try k+1.
    """

    def __init__(
        self,
        root: str,
        *,
        max_in_flight: int = 64,
        retries: int = 4,
        backoff_s: float = 0.2,
        storage_options: dict[str, Any] | None = None,
    ):
        self.root = root.rstrip("/")
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.backoff_s = backoff_s
        self._storage_options = storage_options
        self._fs, self._path = _filesystem(self.root, storage_options, max_in_flight)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._total = Transfer()

    def __reduce__(self):
        # The filesystem holds sockets and an event loop; a worker rebuilds its own from the root.
        return (
            _rebuild,
            (self.root, self.max_in_flight, self.retries, self.backoff_s, self._storage_options),
        )

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, made anew in a forked child (s3fs's is not fork-safe)."""
        if os.getpid() != self._pid:
            self._fs, _ = _filesystem(self.root, self._storage_options, self.max_in_flight)
            self._pid = os.getpid()
            self._lock = threading.Lock()
        return self._fs

    @fs.setter
    def fs(self, fs: Any) -> None:
        self._fs, self._pid = fs, os.getpid()

    @property
    def transferred(self) -> Transfer:
        """Everything this store has transferred so far, over all calls and threads."""
        return self._total

    def _count(self, t: Transfer) -> Transfer:
        with self._lock:
            self._total = self._total + t
        return t

    def _call(self, what: str, url: str, fn: Callable[[], bytes]) -> tuple[bytes, Transfer]:
        """fn() with retries on transient errors; the Transfer counts every request sent."""
        for k in range(self.retries + 1):
            try:
                data = fn()
            except ObjectStoreError:
                self._count(Transfer(0, k + 1, k))
                raise
            except _PERMANENT as e:
                self._count(Transfer(0, k + 1, k))
                raise ObjectStoreError(f"{url}: {what} failed: {type(e).__name__}: {e}") from e
            except Exception as e:
                if k == self.retries:
                    self._count(Transfer(0, k + 1, k))
                    raise ObjectStoreError(
                        f"{url}: {what} failed after {k + 1} tries: {type(e).__name__}: {e}"
                    ) from e
                time.sleep(self.backoff_s * 2**k * (0.5 + random.random()))
                continue
            return data, self._count(
                Transfer(len(data) if isinstance(data, bytes) else 0, k + 1, k)
            )
        raise AssertionError("unreachable")

    # -----------------------------------------------------------------------------------------
    # listing

    def list(self, suffixes: Sequence[str] | None = None) -> list[ObjectInfo]:
        """Every object under the root (recursive), sorted by key; one listing, no HEADs.

        `suffixes` keeps keys ending in one of them (case-insensitive).
        """
        self.fs.invalidate_cache(self._path)  # an ETag must reflect the bucket now, not a cache

        def find() -> dict:
            return self.fs.find(self._path, detail=True)

        try:
            found = find()
        except FileNotFoundError as e:
            raise ObjectStoreError(f"{self.root}: no such bucket or prefix") from e
        except PermissionError as e:
            raise ObjectStoreError(f"{self.root}: listing refused: {e}") from e
        self._count(Transfer(0, 1, 0))
        want = tuple(s.lower() for s in suffixes) if suffixes else None
        out = []
        prefix = self._path + "/"
        for path, info in found.items():
            if info.get("type", "file") != "file" or not path.startswith(prefix):
                continue
            key = path[len(prefix) :]
            if want and not key.lower().endswith(want):
                continue
            out.append(
                ObjectInfo(
                    key=key,
                    url=f"{self.root}/{key}",
                    size=int(info["size"]),
                    etag=_etag(info),
                    mtime_ns=_mtime_ns(info),
                )
            )
        out.sort(key=lambda o: o.key)
        return out

    def info(self, key: str) -> ObjectInfo:
        """One object by its key (one HEAD request), for reads that have no listing at hand."""
        url = f"{self.root}/{key}"

        def head() -> bytes:
            return self.fs.info(f"{self._path}/{key}")

        got, _ = self._call("stat", url, head)  # a dict, counted as 0 payload bytes
        return ObjectInfo(key, url, int(got["size"]), _etag(got), _mtime_ns(got))

    def _full(self, obj: ObjectInfo) -> str:
        return f"{self._path}/{obj.key}"

    # -----------------------------------------------------------------------------------------
    # headers

    def read_heads(
        self,
        objects: Iterable[ObjectInfo],
        n: int = HEAD_BYTES,
        header_length: Callable[[bytes], int] | None = None,
    ) -> list[Head]:
        """The first `n` bytes of each object (fewer if it is shorter), `max_in_flight` at once.

        `header_length(head)` returns how many leading bytes the caller needs (e.g. an EDF's
        header-size field); where that exceeds `n`, one more range read fetches the rest. A head
        that fails is returned with `error` set (one line) rather than raised, so one bad
        object never stops a scan. Order follows `objects`.
        """
        objects = list(objects)
        if not objects:
            return []
        from concurrent.futures import ThreadPoolExecutor  # not loaded by a local build

        with ThreadPoolExecutor(min(self.max_in_flight, len(objects))) as pool:
            return list(pool.map(lambda o: self._head(o, n, header_length), objects))

    def _head(self, obj: ObjectInfo, n: int, header_length) -> Head:
        path = self._full(obj)
        end = min(n, obj.size)
        try:
            data, t = self._call(
                "range read", obj.url, lambda: self.fs.cat_file(path, start=0, end=end)
            )
            need = header_length(data) if header_length and len(data) == n else len(data)
            if need > len(data) and need <= obj.size:
                more, t2 = self._call(
                    "range read",
                    obj.url,
                    lambda: self.fs.cat_file(path, start=len(data), end=need),
                )
                data, t = data + more, t + t2
        except ObjectStoreError as e:
            return Head(obj, b"", Transfer(), error=str(e).split(": ", 1)[1])
        except Exception as e:  # header_length refused the bytes: the caller's parser reports it
            return Head(obj, data, t, error=f"bad header: {type(e).__name__}: {e}")
        return Head(obj, data, t)

    # -----------------------------------------------------------------------------------------
    # whole objects

    def _get(self, obj: ObjectInfo, start: int, end: int) -> tuple[bytes, Transfer]:
        path = self._full(obj)

        def get() -> bytes:
            data = self.fs.cat_file(path, start=start, end=end)
            if len(data) != end - start:
                # Shorter than listed: the object changed (or is changing) since the listing.
                raise ObjectStoreError(
                    f"{obj.url}: changed since it was listed: got {len(data)} bytes of "
                    f"[{start}, {end}), listed size {obj.size}"
                )
            return data

        return self._call("fetch", obj.url, get)

    def fetch(self, obj: ObjectInfo) -> Fetched:
        """The whole object in memory: one ranged GET of exactly its listed size."""
        if obj.size == 0:
            return Fetched(obj, Transfer(), data=b"")
        data, t = self._get(obj, 0, obj.size)
        return Fetched(obj, t, data=data)

    def fetch_into(self, objects: Sequence[ObjectInfo], into: str | os.PathLike) -> dict[str, str]:
        """Each object whole to `into`/key, its LastModified as mtime, `max_in_flight` at once.

        Streamed in ranged GETs of 8 MiB (one for a small object), so memory stays bounded by
        the requests in flight whatever the objects' sizes (a MEG FIF part is up to 2 GB).
        Returns key -> one-line reason for each object that failed; the others are in place."""

        def one(o: ObjectInfo) -> tuple[str, str | None]:
            p = Path(into, o.key)
            p.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(p, "wb") as f:
                    self._download(o, f, FOLDER_CHUNK)
            except ObjectStoreError as e:
                p.unlink(missing_ok=True)  # no part of a file is left to be read as whole
                return o.key, str(e).split(": ", 1)[-1]
            if o.mtime_ns is not None:
                os.utime(p, ns=(o.mtime_ns, o.mtime_ns))
            return o.key, None

        if not objects:
            return {}
        from concurrent.futures import ThreadPoolExecutor  # not loaded by a local build

        with ThreadPoolExecutor(min(self.max_in_flight, len(objects))) as pool:
            return {k: why for k, why in pool.map(one, objects) if why}

    def _download(self, obj: ObjectInfo, f: Any, chunk: int) -> Transfer:
        total = Transfer()
        for start in range(0, obj.size, chunk):
            data, t = self._get(obj, start, min(start + chunk, obj.size))
            f.write(data)
            total = total + t
        return total

    @contextlib.contextmanager
    def fetch_to_spool(
        self, obj: ObjectInfo, dir: str | os.PathLike | None = None
    ) -> Iterator[Fetched]:
        """The whole object in a temp file (one GET up to 64 MiB), removed when the block ends."""
        fd, name = tempfile.mkstemp(prefix="brainpipe-spool-", suffix=Path(obj.key).suffix, dir=dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                total = self._download(obj, f, SPOOL_CHUNK)
            yield Fetched(obj, total, path=path)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()


@dataclass(frozen=True, slots=True)
class RecordingObjects:
    """The objects that together are one recording (BrainVision .vhdr/.vmrk/.eeg, a CTF .ds
    directory, a split FIF; `readers.recording_files` says which): `key` is the recording's
    path as the index has it, relative to `root`."""

    root: str
    key: str
    objects: tuple[ObjectInfo, ...]

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)


def remote_worker(process: Callable[[tuple], tuple], job: tuple) -> tuple:
    """Run a build-cache worker on a spool copy of the object a job names.

    `job` is (row, ObjectInfo or RecordingObjects, ...); `process` gets the same job with the
    spool file's path and returns (row, payload, reason, raw bytes). An object is fetched whole
    with one GET (EDF
    records interleave channels, so ranges per channel would save little), retried with
    backoff; one that keeps failing comes back as a skipped row with its reason."""
    row, obj, *rest = job
    if isinstance(obj, RecordingObjects):
        return _remote_set(process, job)
    store = ObjectStore(obj.url[: -len(obj.key) - 1])
    try:
        with store.fetch_to_spool(obj) as got:
            i, payload, reason, _ = process((row, str(got.path), *rest))
            return i, payload, reason.replace(str(got.path), obj.key), got.transfer.bytes
    except ObjectStoreError as e:
        return row, None, str(e).removeprefix(f"{obj.url}: "), 0


def _remote_set(process: Callable[[tuple], tuple], job: tuple) -> tuple:
    """`remote_worker` for a recording of several objects: all fetched into one temp dir under
    their own names (mne finds a .vhdr's .eeg beside it), processed there, removed."""
    row, rec, *rest = job
    store = ObjectStore(rec.root)
    with tempfile.TemporaryDirectory(prefix="brainpipe-spool-") as tmp:
        failed = store.fetch_into(rec.objects, tmp)
        if failed:
            key, why = next(iter(failed.items()))
            return row, None, f"{key}: {why}", 0
        i, payload, reason, _ = process((row, f"{tmp}/{rec.key}", *rest))
        return i, payload, reason.replace(f"{tmp}/", ""), store.transferred.bytes


def _rebuild(root, max_in_flight, retries, backoff_s, storage_options) -> ObjectStore:
    return ObjectStore(
        root,
        max_in_flight=max_in_flight,
        retries=retries,
        backoff_s=backoff_s,
        storage_options=storage_options,
    )
