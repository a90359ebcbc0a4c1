"""objectstore against a real S3 server on loopback (moto), with a synthetic TUAB corpus on it."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
from s3server import S3Server, use_s3

from brainpipe import edf
from brainpipe.cli import main
from brainpipe.fsutil import is_url
from brainpipe.objectstore import HEAD_BYTES, ObjectStore, ObjectStoreError

BUCKET = "corpus"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("raw")
    assert main(["synth", "--layout", "tuab", "--out", str(out), "--n-subjects", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def server(raw):
    with S3Server() as s3:
        s3.upload_tree(raw, BUCKET, "tuab")
        yield s3


@pytest.fixture
def s3(server, monkeypatch) -> S3Server:
    use_s3(monkeypatch, server)
    server.latency_s = 0.0
    server.fail_next_gets(0)
    server.reset_counters()
    return server


def local_files(raw: Path, suffix: str = "") -> dict[str, Path]:
    return {
        p.relative_to(raw).as_posix(): p
        for p in sorted(raw.rglob("*"))
        if p.is_file() and p.name.endswith(suffix)
    }


def test_is_url():
    assert is_url("s3://bucket/prefix")
    assert is_url("gs://b/p") and is_url("az://c/p") and is_url("S3://b")
    assert not is_url("/data/tuab") and not is_url("data/s3:/x") and not is_url("file:///data")
    assert not is_url(Path("/data/tuab"))


def test_one_listing_has_every_object_with_size_etag_mtime(s3, raw):
    objects = ObjectStore(f"s3://{BUCKET}/tuab").list()
    files = local_files(raw)
    assert [o.key for o in objects] == sorted(files)
    for o in objects:
        data = files[o.key].read_bytes()
        assert o.size == len(data)
        assert o.etag == hashlib.md5(data).hexdigest()  # single-part upload: ETag is the MD5
        assert o.mtime_ns and abs(o.mtime_ns / 1e9 - time.time()) < 3600
        assert o.url == f"s3://{BUCKET}/tuab/{o.key}"
    assert s3.requests["GET"] == 1  # one listing page, no HEAD per object
    assert s3.requests["HEAD"] == 0
    edfs = ObjectStore(f"s3://{BUCKET}/tuab/").list(suffixes=(".EDF",))
    assert [o.key for o in edfs] == sorted(local_files(raw, ".edf"))


def test_missing_prefix_is_one_line_error(s3):
    assert ObjectStore(f"s3://{BUCKET}/nothing-here").list() == []
    with pytest.raises(ObjectStoreError, match=r"^s3://no-such-bucket/x: no such bucket"):
        ObjectStore("s3://no-such-bucket/x").list()


def parse_head(head: bytes, size: int, tmp_path: Path, name: str) -> edf.EdfHeader:
    # edf.read_header reads a path; a sparse file of the object's size holding only the head
    # bytes makes it parse exactly what came over the wire.
    p = tmp_path / Path(name).name
    with open(p, "wb") as f:
        f.write(head)
        f.truncate(size)
    return edf.read_header(p)


def same_header(a: edf.EdfHeader, b: edf.EdfHeader) -> bool:
    return dataclasses.replace(a, path="", mtime_ns=0) == dataclasses.replace(
        b, path="", mtime_ns=0
    )


def test_range_read_headers_match_local_read_header(s3, raw, tmp_path):
    store = ObjectStore(f"s3://{BUCKET}/tuab")
    objects = store.list(suffixes=(".edf",))
    s3.reset_counters()
    heads = store.read_heads(objects, header_length=edf.header_length)
    files = local_files(raw)
    for h in heads:
        assert h.error is None
        assert len(h.data) == min(HEAD_BYTES, h.obj.size)
        assert h.transfer.bytes == len(h.data) and h.transfer.requests == 1
        local = edf.read_header(files[h.obj.key])
        assert local.header_bytes <= HEAD_BYTES
        assert same_header(parse_head(h.data, h.obj.size, tmp_path, h.obj.key), local)
    # What the client counted is what the server sent: heads only, far below the objects.
    sent = sum(h.transfer.bytes for h in heads)
    assert sent == s3.body_bytes["GET"]
    assert s3.requests["GET"] == len(objects)
    assert sent * 5 < sum(o.size for o in objects)


def test_a_header_longer_than_the_first_read_takes_one_more_range_read(s3, raw, tmp_path):
    store = ObjectStore(f"s3://{BUCKET}/tuab")
    objects = store.list(suffixes=(".edf",))
    heads = store.read_heads(objects, n=300, header_length=edf.header_length)
    for h in heads:
        local = edf.read_header(raw / h.obj.key)
        assert len(h.data) == local.header_bytes > 300
        assert h.transfer.requests == 2
        assert same_header(parse_head(h.data, h.obj.size, tmp_path, h.obj.key), local)
    assert s3.requests["GET"] == 1 + 2 * len(objects)


def test_a_missing_object_gives_a_head_with_its_reason(s3):
    store = ObjectStore(f"s3://{BUCKET}/tuab")
    obj = store.list(suffixes=(".edf",))[0]
    gone = dataclasses.replace(obj, key="no/such.edf", url=f"s3://{BUCKET}/tuab/no/such.edf")
    heads = store.read_heads([obj, gone])
    assert heads[0].error is None and heads[1].data == b""
    assert heads[1].error.startswith("range read failed: FileNotFoundError")


def test_fetch_whole_object_is_one_get(s3, raw, tmp_path):
    store = ObjectStore(f"s3://{BUCKET}/tuab")
    obj = store.list(suffixes=(".edf",))[-1]
    s3.reset_counters()
    got = store.fetch(obj)
    assert got.data == (raw / obj.key).read_bytes()
    assert got.transfer.bytes == obj.size and got.transfer.requests == 1
    assert s3.requests["GET"] == 1 and s3.body_bytes["GET"] == obj.size
    with store.fetch_to_spool(obj, tmp_path) as spooled:
        assert spooled.path.parent == tmp_path
        assert spooled.path.read_bytes() == got.data
        assert same_header(edf.read_header(spooled.path), edf.read_header(raw / obj.key))
    assert not spooled.path.exists()
    assert store.transferred.bytes == 2 * obj.size


def test_fetch_into_streams_objects_to_their_own_names_in_bounded_pieces(
    s3, raw, tmp_path, monkeypatch
):
    from brainpipe import objectstore

    store = ObjectStore(f"s3://{BUCKET}/tuab")
    objs = store.list(suffixes=(".edf",))[:3]
    piece = 100_000  # stands in for the 8 MiB piece: every object here takes several
    monkeypatch.setattr(objectstore, "FOLDER_CHUNK", piece)
    gone = dataclasses.replace(objs[0], key="edf/nope.edf", url=objs[0].url + ".nope")
    s3.reset_counters()
    assert store.fetch_into(objs, tmp_path / "into") == {}
    for o in objs:
        out = tmp_path / "into" / o.key
        assert out.read_bytes() == (raw / o.key).read_bytes()
        assert out.stat().st_mtime_ns == o.mtime_ns
    assert s3.requests["GET"] == sum(-(-o.size // piece) for o in objs)
    assert s3.body_bytes["GET"] == sum(o.size for o in objs)
    failed = store.fetch_into([gone, objs[1]], tmp_path / "again")
    assert list(failed) == ["edf/nope.edf"] and "\n" not in failed["edf/nope.edf"]
    assert not (tmp_path / "again" / "edf" / "nope.edf").exists()
    assert (tmp_path / "again" / objs[1].key).read_bytes() == (raw / objs[1].key).read_bytes()


def test_etag_changes_when_an_object_is_overwritten(s3, raw, tmp_path):
    store = ObjectStore(f"s3://{BUCKET}/tuab")
    before = {o.key: o for o in store.list()}
    key = sorted(local_files(raw, ".edf"))[0]
    data = bytearray((raw / key).read_bytes())
    data[-1] ^= 0xFF  # same size, one sample differs
    p = tmp_path / "changed.edf"
    p.write_bytes(bytes(data))
    try:
        s3.client().upload_file(str(p), BUCKET, f"tuab/{key}")
        after = {o.key: o for o in store.list()}
        assert after[key].size == before[key].size and after[key].etag != before[key].etag
        assert {k for k in after if after[k].etag != before[k].etag} == {key}
    finally:
        s3.client().upload_file(str(raw / key), BUCKET, f"tuab/{key}")


def test_transient_server_errors_are_retried(s3, raw):
    store = ObjectStore(f"s3://{BUCKET}/tuab", backoff_s=0.01)
    obj = store.list(suffixes=(".edf",))[0]
    s3.fail_next_gets(2)  # two 503 SlowDown answers, then the object
    assert store.fetch(obj).data == (raw / obj.key).read_bytes()
    assert s3.requests["GET"] >= 4  # the listing, two refusals, the object


class Flaky:
    """A filesystem whose next `n` reads raise a connection reset (the transient kind)."""

    def __init__(self, fs, n: int):
        self.fs, self.n, self.calls = fs, n, 0

    def cat_file(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.n:
            raise ConnectionResetError("connection reset by peer")
        return self.fs.cat_file(*args, **kwargs)


def test_retries_back_off_then_give_up_with_one_line(s3, raw):
    store = ObjectStore(f"s3://{BUCKET}/tuab", retries=3, backoff_s=0.05)
    obj = store.list(suffixes=(".edf",))[0]
    store.fs = Flaky(store.fs, 2)
    t0 = time.monotonic()
    got = store.fetch(obj)
    assert got.data == (raw / obj.key).read_bytes()
    assert (got.transfer.requests, got.transfer.retries) == (3, 2)
    assert time.monotonic() - t0 >= 0.05 * (1 + 2) * 0.5  # backoff 0.05 then 0.1, jitter >= 0.5x
    store.fs = Flaky(store.fs.fs, 10)
    with pytest.raises(ObjectStoreError) as e:
        store.fetch(obj)
    assert str(e.value) == (
        f"{obj.url}: fetch failed after 4 tries: ConnectionResetError: connection reset by peer"
    )
    assert store.fs.calls == 4


def test_a_missing_object_is_not_retried(s3):
    store = ObjectStore(f"s3://{BUCKET}/tuab", backoff_s=10)
    obj = store.list(suffixes=(".edf",))[0]
    gone = dataclasses.replace(obj, key="gone.edf", url=f"s3://{BUCKET}/tuab/gone.edf")
    t0 = time.monotonic()
    with pytest.raises(ObjectStoreError, match=r"gone\.edf: fetch failed: FileNotFoundError"):
        store.fetch(gone)
    assert time.monotonic() - t0 < 5


def test_heads_are_read_concurrently_under_latency(s3):
    store = ObjectStore(f"s3://{BUCKET}/tuab", max_in_flight=64)
    objects = store.list() * 10  # 40 reads
    s3.latency_s = 0.5
    t0 = time.monotonic()
    heads = store.read_heads(objects)
    elapsed = time.monotonic() - t0
    assert all(h.error is None for h in heads)
    # All 40 in flight at once take ~0.5 s; botocore's default pool of 10 connections would
    # need 4 rounds (2 s), serial reads 20 s.
    assert elapsed < 1.5


def test_store_pickles_by_root(s3):
    store = ObjectStore(f"s3://{BUCKET}/tuab", max_in_flight=7)
    copy = pickle.loads(pickle.dumps(store))
    assert copy.max_in_flight == 7 and copy.list() == store.list()


def test_without_the_s3_extra_an_s3_root_names_the_extra():
    # A fresh interpreter where `import s3fs` fails, as after `pip install brainpipe` alone.
    code = (
        "import sys; sys.modules['s3fs'] = None\n"
        "from brainpipe.objectstore import ObjectStore\n"
        "ObjectStore('s3://bucket/prefix')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (
        "brainpipe.objectstore.ObjectStoreError: s3://bucket/prefix: reading s3:// needs its "
        "backend: pip install 'brainpipe[s3]'"
    )


def test_local_roots_work_through_the_same_interface(raw):
    # file:// is not a URL for is_url (the stages keep their local path), but the store reads it.
    store = ObjectStore(f"file://{raw}")
    objects = store.list(suffixes=(".edf",))
    assert [o.key for o in objects] == sorted(local_files(raw, ".edf"))
    assert store.fetch(objects[0]).data == (raw / objects[0].key).read_bytes()


_worker_store: ObjectStore | None = None


def _set_store(store: ObjectStore, env: dict[str, str]) -> None:
    # A forkserver started by an earlier test keeps the environment of that moment; the test's
    # endpoint and credentials (set per test) must reach the worker as a real user's would.
    global _worker_store
    os.environ.update(env)
    _worker_store = store


def _fetch_size(obj) -> int:
    return len(_worker_store.fetch(obj).data)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_store_works_in_worker_processes(s3, method):
    # build-cache hands the store to its workers: inherited as is under fork (initargs are not
    # pickled there), pickled under spawn and forkserver.
    import multiprocessing

    store = ObjectStore(f"s3://{BUCKET}/tuab")
    objects = store.list(suffixes=(".edf",))
    store.fetch(objects[0])  # the parent's filesystem has a live session and event loop
    ctx = multiprocessing.get_context(method)
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    with ctx.Pool(2, initializer=_set_store, initargs=(store, env)) as pool:
        sizes = pool.map(_fetch_size, objects)
    assert sizes == [o.size for o in objects]
