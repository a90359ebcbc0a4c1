"""Benchmark the `index` stage against the mne header loop, in one run.

    python scripts/bench_index.py [--n 2717] [--latency-ms 5] [--keep DIR]
    python scripts/bench_index.py --s3-only --n 2717 --s3-latency-ms 20 100

Generates a TUAB-sized synthetic tree (2,717 EDF files, short recordings: only headers are read),
then prints one table:
- mne `read_raw_edf(preload=False)` over every file (the loop a slow Dataset.__init__ runs)
- our index, cold and re-run on the unchanged tree, in-process and as a whole `brainpipe index`
  process (interpreter start and imports included)
- both with a simulated per-open latency (a network filesystem: WSL2 /mnt, NFS, bucket mounts)
- EdfWindowDataset init for ~14 k, ~140 k and ~1.4 M windows (must be flat)
- object storage (`--s3-latency-ms`, needs moto + s3fs): the tree uploaded to a real S3 server
  on loopback (tests/s3server.py) that adds a fixed latency to every request; our `index
  --raw s3://...` (one listing, 16 KiB range reads, 64 in flight) against the naive read a
  bucket mount or fsspec's default open() does (the whole object per file, also 64 in flight),
  with seconds and MB received. Targets: >= 50x less data, the 100 ms index in < 10 s.
"""

from __future__ import annotations

import argparse
import builtins
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


class Latency:
    """Add `ms` of sleep to every open of an .edf file (sleep releases the GIL, as real I/O does)."""

    def __init__(self, ms: float):
        self.s = ms / 1000

    def __enter__(self):
        self._os_open, self._open = os.open, builtins.open
        s, os_open, b_open = self.s, os.open, builtins.open

        def slow_os_open(path, *a, **k):
            if str(path).endswith(".edf"):
                time.sleep(s)
            return os_open(path, *a, **k)

        def slow_open(path, *a, **k):
            if str(path).endswith(".edf"):
                time.sleep(s)
            return b_open(path, *a, **k)

        os.open, builtins.open = slow_os_open, slow_open
        return self

    def __exit__(self, *exc):
        os.open, builtins.open = self._os_open, self._open


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--n", type=int, default=2717, help="recordings in the tree (TUAB train: 2,717)"
    )
    ap.add_argument("--latency-ms", type=float, default=5.0)
    ap.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it")
    ap.add_argument(
        "--s3-latency-ms", type=float, nargs="*", default=[20.0, 100.0],
        help="per-request latencies of the object-storage rows (none: skip them)",
    )  # fmt: skip
    ap.add_argument("--s3-only", action="store_true", help="only the object-storage rows")
    args = ap.parse_args()

    from brainpipe.config import load_config
    from brainpipe.datasets import EdfWindowDataset
    from brainpipe.index import build_index, scan
    from brainpipe.indexfile import Index
    from brainpipe.synthetic import make_corpus

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_index_"))
    raw = work / "raw"
    t = time.perf_counter()
    if not (raw / "edf").exists():
        # TUAB train: 2,717 recordings from ~2,000 subjects.
        n_subjects = max(1, args.n * 3 // 4)
        make_corpus(
            raw, "tuab", n_subjects=n_subjects, n_recordings=args.n, duration_s=(10.0, 30.0), seed=0
        )
    files = sorted(str(p) for p in raw.rglob("*.edf"))
    print(
        f"corpus: {len(files)} EDF files under {raw} (generated in {time.perf_counter() - t:.1f} s)"
    )
    cfg = load_config(None, ["corpus.layout=tuab"])
    out = work / "index.npz"
    if args.s3_only:
        print_rows(object_storage_rows(raw, len(files), cfg, args.s3_latency_ms), len(files))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 0

    import mne

    def mne_loop():
        for f in files:
            mne.io.read_raw_edf(f, preload=False, verbose="error")

    # mne loads its EDF reader modules on the first call: not part of the per-file cost.
    mne.io.read_raw_edf(files[0], preload=False, verbose="error")
    rows: list[tuple[str, float, str]] = []
    t_mne = timed(mne_loop, repeat=2)  # best of 2, as ours are best of 3: a shared machine is noisy
    rows.append(("mne read_raw_edf(preload=False) loop", t_mne, "baseline"))

    # Every scan starts from an empty header memo of its own, as a fresh process does.
    t_cold = timed(lambda: scan(raw, cfg, progress=False), repeat=3)
    rows.append(("ours: cold index, in-process", t_cold, f"{t_mne / t_cold:.0f}x faster"))
    build_index(raw, out, cfg, progress=False, force=True)
    prev = Index.load(out)
    t_re = timed(lambda: scan(raw, cfg, previous=prev, progress=False), repeat=3)
    rows.append(("ours: re-index unchanged tree, in-process", t_re, f"{t_mne / t_re:.0f}x faster"))

    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "brainpipe",
        "index",
        "--raw",
        str(raw),
        "--index",
        str(out),
        "--set",
        "corpus.layout=tuab",
    ]
    # This interpreter's console script (what a user types), not whichever is first on PATH.
    exe = Path(sysconfig.get_path("scripts")) / "brainpipe"
    if exe.is_file():
        cmd[:3] = [str(exe)]
    t_proc_cold = timed(
        lambda: subprocess.run([*cmd, "--force"], check=True, env=env, capture_output=True),
        repeat=3,
    )
    rows.append(("ours: whole `brainpipe index` process, cold", t_proc_cold, "target <= 1 s"))
    t_proc_re = timed(
        lambda: subprocess.run(cmd, check=True, env=env, capture_output=True), repeat=3
    )
    rows.append(("ours: whole `brainpipe index` process, re-index", t_proc_re, "target <= 0.3 s"))

    lat = args.latency_ms
    with Latency(lat):
        sub = files[: min(len(files), 400)]  # the serial loops are slow by construction; scale them
        t = timed(lambda: [mne.io.read_raw_edf(f, preload=False, verbose="error") for f in sub])
        t_mne_lat = t * len(files) / len(sub)
        from brainpipe.edf import read_header

        def serial_loop():
            memo: dict = {}  # one per loop, as a scan holds one
            return [read_header(f, memo) for f in sub]

        t = timed(serial_loop)
        t_serial_lat = t * len(files) / len(sub)
        t_ours_lat = timed(lambda: scan(raw, cfg, force=True, progress=False))
    rows.append(
        (f"mne loop, {lat:g} ms per open (extrapolated from {len(sub)})", t_mne_lat, "baseline")
    )
    rows.append(
        (
            f"our parser, serial loop, {lat:g} ms per open (extrapolated)",
            t_serial_lat,
            f"{t_mne_lat / t_serial_lat:.1f}x faster",
        )
    )
    rows.append(
        (
            f"ours: cold index, {cfg.index.workers} threads, {lat:g} ms per open",
            t_ours_lat,
            f"{t_serial_lat / t_ours_lat:.0f}x our serial, {t_mne_lat / t_ours_lat:.0f}x mne",
        )
    )

    idx = Index.load(out)
    sfreq = float(np.median(idx.sfreq))
    # Samples that can start a 1 s window, in the recordings at that rate (the dataset keeps
    # only those).
    at_rate = idx.n_samples[np.isclose(idx.sfreq, sfreq)]
    usable = float(np.clip(at_rate - sfreq, 0, None).sum())
    for target in (14_000, 140_000, 1_400_000):
        stride = max(1, round(usable / target))
        t_init = timed(
            lambda s=stride: EdfWindowDataset(
                out, window_s=1.0, stride_s=s / sfreq, channels=["FP1", "FP2", "C3"]
            ),
            repeat=5,
        )
        ds = EdfWindowDataset(
            out, window_s=1.0, stride_s=stride / sfreq, channels=["FP1", "FP2", "C3"]
        )
        rows.append(
            (
                f"EdfWindowDataset init (index load included), {len(ds):,} windows",
                t_init,
                "target <= 50 ms, flat",
            )
        )

    t_load = timed(lambda: Index.load(out), repeat=5)
    rows.append((f"Index.load, {len(idx)} recordings", t_load, ""))

    if args.s3_latency_ms:
        rows += object_storage_rows(raw, len(files), cfg, args.s3_latency_ms)
    print_rows(rows, len(files))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_rows(rows: list[tuple[str, float, str]], n_files: int) -> None:
    w = max(len(r[0]) for r in rows)
    print(f"\n{'measurement':<{w}}  {'seconds':>9}  {'ms/file':>8}  vs baseline")
    for name, sec, note in rows:
        per = (
            sec / n_files * 1000
            if not name.startswith(("EdfWindowDataset", "Index.load"))
            else float("nan")
        )
        print(f"{name:<{w}}  {sec:>9.4f}  {per:>8.3f}  {note}")


# The S3 server runs in a process of its own, as a real bucket does: in this process its request
# handling (moto, ~5 ms of CPU a request) would take the GIL from the client being measured.
SERVER = """
import logging, sys
sys.path.insert(0, sys.argv[1])
from s3server import S3Server
logging.getLogger("werkzeug").setLevel(logging.ERROR)
s3 = S3Server()
s3.start()
print(s3.url, flush=True)
for line in sys.stdin:  # "latency SECONDS" (also resets the counters) or "get-bytes"
    cmd, *arg = line.split()
    sent = s3.body_bytes["GET"]
    if cmd == "latency":
        s3.latency_s = float(arg[0])
        s3.reset_counters()
    print(sent, flush=True)
s3.stop()
"""


class ServerProcess:
    """tests/s3server.py's S3Server in a child process, steered over its stdin."""

    def __init__(self):
        tests = str(Path(__file__).resolve().parents[1] / "tests")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, tests],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self.proc.stdout.readline().strip()

    def send(self, line: str) -> int:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def object_storage_rows(
    raw: Path, n_files: int, cfg, latencies_ms: list[float]
) -> list[tuple[str, float, str]]:
    """Our range-read index vs whole-object reads on a loopback S3 server with added latency."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    from brainpipe.edf import read_header_bytes
    from brainpipe.index import scan
    from brainpipe.objectstore import ObjectStore

    rows: list[tuple[str, float, str]] = []
    server = ServerProcess()
    try:
        env = {
            "AWS_ENDPOINT_URL": server.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        os.environ.update(env)  # the standard credential chain, as a user's would be
        t = time.perf_counter()
        client = boto3.client("s3", endpoint_url=server.url)
        client.create_bucket(Bucket="bench")
        files = [p for p in sorted(raw.rglob("*")) if p.is_file()]
        with ThreadPoolExecutor(8) as pool:
            key = lambda p: f"tuab/{p.relative_to(raw).as_posix()}"  # noqa: E731
            list(pool.map(lambda p: client.upload_file(str(p), "bench", key(p)), files))
        print(f"uploaded {n_files} recordings to {server.url} in {time.perf_counter() - t:.1f} s")
        url = "s3://bench/tuab"
        ObjectStore(url).list()  # imports and client start-up are not per-file costs
        if len(files) != n_files + 1:  # the corpus marker beside the recordings
            print(f"note: {len(files)} files uploaded")
        for lat in latencies_ms:
            server.send(f"latency {lat / 1000}")
            t, cpu = time.perf_counter(), time.process_time()
            res = scan(url, cfg, progress=False)
            ours_s, ours_mb = time.perf_counter() - t, res.transferred / 1e6
            # The client's own CPU: on a small machine the loopback server (moto, a Python
            # process, ~5 ms of CPU a request) rather than the client bounds the seconds.
            ours_cpu = time.process_time() - cpu
            assert len(res.index) == n_files, res.index.errors[:3]
            served_mb = server.send(f"latency {lat / 1000}") / 1e6  # and reset the counters

            store = ObjectStore(url)
            objects = [o for o in store.list() if o.key.endswith(".edf")]

            def whole(o, store=store):
                got = store.fetch(o)  # the whole object, as a mount's read-ahead does
                return read_header_bytes(got.data, o.url, o.size, 0)

            from concurrent.futures import ThreadPoolExecutor

            t, cpu = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(store.max_in_flight) as pool:
                list(pool.map(whole, objects))
            naive_s, naive_cpu = time.perf_counter() - t, time.process_time() - cpu
            naive_mb = store.transferred.bytes / 1e6
            served_naive_mb = server.send("get-bytes") / 1e6
            rows.append(
                (f"s3 naive: whole object per file, 64 in flight, {lat:g} ms/request", naive_s,
                 f"baseline, {naive_mb:.1f} MB (server sent {served_naive_mb:.1f}), "
                 f"client CPU {naive_cpu:.1f} s")
            )  # fmt: skip
            rows.append(
                (f"s3 ours: index --raw s3://, range reads, {lat:g} ms/request", ours_s,
                 f"{naive_s / ours_s:.1f}x faster, {ours_mb:.2f} MB = {naive_mb / ours_mb:.0f}x less data, "
                 f"{res.requests} requests (server sent {served_mb:.2f} MB), client CPU {ours_cpu:.1f} s")
            )  # fmt: skip
    finally:
        server.close()
    return rows


if __name__ == "__main__":
    sys.exit(main())
