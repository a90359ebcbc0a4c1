"""Loader benchmark: random batches of 256 windows (21 channels x 2,000 samples), windows per second.

    python scripts/bench_loader.py                 # about a minute; temp files are removed
    python scripts/bench_loader.py --workers 4 --json

One generated corpus (random signal; page cache warm, as in a training run's second epoch),
read five ways:

    cache __getitems__       brainpipe's CacheWindowDataset: one memcpy per window from a memmap
                             of the float16 cache, a whole batch per call (one process)
    cache DataLoader xN      the same through torch's DataLoader with N worker processes, handing
                             batches over in brainpipe's BatchRing (as `train` does) or torch's
                             way (a fresh shared-memory segment per batch)
    .pt per window           torch.load of one float32 (21, 2000) tensor file per window + stack
    .npz per recording       np.load of the recording's float32 array, then the window sliced out
    memcpy bound             the same window copies from an array already in memory
    cache set, M members     the same windows split over M member caches joined by a cache set
                             (brainpipe.cacheset: each member memory-mapped, no HDF5 VDS)

The issue's targets: >= 50k windows/s per worker process, >= 7x .pt, >= 200x .npz; a
16-member set >= 90% of one cache.

`--meg` measures the MEG subject-pair case instead (issue 12): random pair batches of 2 x 64
windows of 306 x 2,000 (`PairBatchSampler`, as `train.task=pairs` reads them) from the cache with
0 and 2 workers (batch ring), beside the recipe brainpipe replaces: one HDF5 file holding a
subject-grouped `(N, 306, 2000)` float32 dataset, read with h5py fancy indexing in the main
process (`num_workers=0`; its HDF5 reads did not survive worker processes).

    python scripts/bench_loader.py --meg --subjects 6 --minutes 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from brainpipe.cachefile import CacheReader, CacheWriter, Layout
from brainpipe.config import STANDARD_1020, Config

BATCH = 256


def write_bench_cache(
    path: Path,
    n_recordings: int,
    n_samples: int,
    n_channels: int,
    window: int,
    sfreq: float,
    cfg: Config | None = None,
    seed: int = 0,
    first: int = 0,
) -> np.ndarray:
    """A finished cache of random float16 signal; returns one recording's float32 signal.

    Every recording holds the same block (content does not matter for read speed; generating
    gigabytes of random numbers would dominate the benchmark). Labels alternate, splits are
    train, except every fifth recording, which is eval. `first`: the number of the first
    recording (a member of a set holding recordings first, first + 1, ...).
    """
    rng = np.random.default_rng(seed)
    block = rng.standard_normal((n_samples, n_channels), dtype=np.float32)
    channels = (list(STANDARD_1020) + [f"X{i}" for i in range(n_channels)])[:n_channels]
    ids = range(first, first + n_recordings)
    recordings = {
        "path": np.array([f"rec{i:05d}.edf" for i in ids]),
        "subject": np.array([f"subj{i // 2:05d}" for i in ids]),
        "session": np.array(["s001"] * n_recordings),
        "split": np.array(["eval" if i % 5 == 4 else "train" for i in ids]),
        "label": (np.arange(first, first + n_recordings) // 2 % 2).astype(np.int8),
        "sfreq_orig": np.full(n_recordings, sfreq),
        "length": np.full(n_recordings, n_samples, np.int64),
        "t0_s": np.zeros(n_recordings),
        "mask": np.ones((n_recordings, n_channels), bool),
    }
    events = {
        "recording": np.zeros(0, np.int64),
        "onset_s": np.zeros(0),
        "offset_s": np.zeros(0),
        "label": np.zeros(0, str),
    }
    sections = ("preprocess", "window", "cache")
    config = {k: v for k, v in (cfg or Config()).to_dict().items() if k in sections}
    attrs = {"config": json.dumps(config), "config_hash": "bench", "index_hash": "bench"}
    layout = Layout(
        tuple(channels),
        sfreq,
        "float16",
        recordings,
        events,
        ("normal", "abnormal"),
        attrs,
        task="abnormal",
    )
    half = block.astype(np.float16).tobytes()
    with CacheWriter(path, layout, overwrite=True) as writer:
        for r in range(n_recordings):
            writer.write(r, half)
        writer.finish(window, window, 0.5)
    return block


def rate(fn, batches: list[np.ndarray], min_s: float) -> float:
    """Windows per second of `fn(batch)` over the batches (at least one, and at least `min_s`)."""
    fn(batches[0])  # warm-up: first-touch page mapping, imports
    n, t0 = 0, time.perf_counter()
    for b in batches[1:]:
        fn(b)
        n += len(b)
        if time.perf_counter() - t0 >= min_s:
            break
    return n / (time.perf_counter() - t0)


MEG_PAIRS, MEG_CHANNELS, MEG_WINDOW, MEG_STRIDE = 64, 306, 2000, 500


def bench_meg(args: argparse.Namespace) -> int:
    """Pair batches (2 x 64 windows of 306 x 2,000): cache x0 / x2 workers vs one-HDF5 h5py."""
    import h5py
    from torch.utils.data import DataLoader

    from brainpipe.datasets import CacheWindowDataset
    from brainpipe.ring import BatchRing, RingBatchSampler, RingSlot, collate_batch
    from brainpipe.samplers import PairBatchSampler

    n_samples = int(args.minutes * 60 * 1000)  # 1 kHz, as CamCAN
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_meg_", dir=args.tmp))
    rows: list[tuple[str, float]] = []
    try:
        t0 = time.perf_counter()
        block = write_bench_cache(
            tmp / "cache.h5", args.subjects, n_samples, MEG_CHANNELS, MEG_WINDOW, 1000.0
        )
        ds = CacheWindowDataset(
            tmp / "cache.h5", window_s=2.0, stride_s=0.5, labelled_only=False, target="subject"
        )
        # The original's file: every window stored (overlapping), grouped by subject, float32.
        # Subjects here are pairs of recordings (see write_bench_cache); windows as in the cache.
        # A subset of the windows (spread over all subjects, still grouped by subject) keeps
        # the float32 file small; a read costs the same whatever the file's length.
        pick = np.linspace(0, len(ds) - 1, min(len(ds), args.h5_windows)).astype(np.int64)
        chw = np.ascontiguousarray(block.T)
        with h5py.File(tmp / "windows.h5", "w") as f:
            d = f.create_dataset("x", (len(pick), MEG_CHANNELS, MEG_WINDOW), np.float32)
            for w, i in enumerate(pick.tolist()):
                s = int(ds.start[i] - ds.reader.recordings["offset"][ds.recording[i]])
                d[w] = chw[:, s : s + MEG_WINDOW]
        os.sync()
        gen_s = time.perf_counter() - t0
        subject_h5 = ds.label[pick]

        def h5_batches(n: int):
            rng = np.random.default_rng(0)
            sampler = PairBatchSampler(subject_h5, MEG_PAIRS, seed=0)
            f = h5py.File(tmp / "windows.h5", "r")
            d, done = f["x"], 0
            while done < n:
                for b in sampler:
                    # h5py fancy reads need increasing, unique indices: read those, then order.
                    uniq, inv = np.unique(b, return_inverse=True)
                    x = d[uniq][inv]
                    yield x[:MEG_PAIRS], x[MEG_PAIRS:]
                    done += 1
                    if done >= n:
                        break
                sampler.set_epoch(int(rng.integers(1 << 30)))
            f.close()

        def timed(batches, min_s: float) -> float:
            it = iter(batches)
            next(it)  # warm-up (and worker start-up)
            n, t = 0, time.perf_counter()
            for b in it:
                x = b[0].array() if isinstance(b[0], RingSlot) else b[0]
                n += len(x) if not isinstance(b[0], np.ndarray) or len(b) != 2 else 2 * len(x)
                if time.perf_counter() - t >= min_s:
                    break
            return n / (time.perf_counter() - t)

        def cache_loader(workers: int):
            sampler = PairBatchSampler(ds.label, MEG_PAIRS, seed=0)
            ring = None
            batch_sampler: object = sampler
            if workers:
                ring = BatchRing(
                    BatchRing.slots_for(workers, 2), (2 * MEG_PAIRS, MEG_WINDOW, MEG_CHANNELS)
                )
                ds.ring = ring
                batch_sampler = RingBatchSampler(sampler, ring.n_slots)
            loader = DataLoader(
                ds,
                batch_sampler=batch_sampler,
                collate_fn=collate_batch,
                num_workers=workers,
                prefetch_factor=2 if workers else None,
            )
            try:
                return timed(loader, args.seconds)
            finally:
                del loader
                ds.ring = None
                if ring is not None:
                    ring.close()

        for _ in range(2):  # best of two rounds, interleaved (a shared machine)
            got = [
                ("cache DataLoader x0", cache_loader(0)),
                ("cache DataLoader x2, ring", cache_loader(2)),
                ("one HDF5, h5py fancy x0", timed(h5_batches(10**6), args.seconds)),
            ]
            rows = [(n, max(r, dict(rows).get(n, 0.0))) for n, r in got]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by = dict(rows)
    result = {
        "windows_per_s": by,
        "pairs_per_batch": MEG_PAIRS,
        "window": [MEG_CHANNELS, MEG_WINDOW],
        "subjects": args.subjects,
        "minutes": args.minutes,
        "generate_s": gen_s,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    base = by["one HDF5, h5py fancy x0"]
    print(
        f"MEG pair batches of 2 x {MEG_PAIRS} windows ({MEG_CHANNELS} x {MEG_WINDOW}, float16 "
        f"cache / float32 HDF5), {args.subjects} recordings of {args.minutes:g} min at 1 kHz"
    )
    print(f"{'method':<28} {'windows/s':>10} {'batches/s':>10} {'vs h5py':>8}")
    for name, r in rows:
        print(f"{name:<28} {r:>10,.0f} {r / (2 * MEG_PAIRS):>10.1f} {r / base:>7.1f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meg", action="store_true", help="the MEG subject-pair case instead")
    ap.add_argument("--subjects", type=int, default=6, help="--meg: recordings")
    ap.add_argument("--h5-windows", type=int, default=192, help="--meg: windows in the HDF5 file")
    ap.add_argument("--recordings", type=int, default=24)
    ap.add_argument("--minutes", type=float, default=10.0, help="per recording")
    ap.add_argument("--sfreq", type=float, default=200.0)
    ap.add_argument("--channels", type=int, default=21)
    ap.add_argument("--window", type=int, default=2000, help="samples")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum time per method")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tmp", default=None, help="directory for the temp files")
    ap.add_argument("--members", type=int, default=16, help="member caches of the set row")
    args = ap.parse_args(argv)
    if args.meg:
        return bench_meg(args)

    import torch
    from torch.utils.data import DataLoader

    from brainpipe.datasets import CacheWindowDataset
    from brainpipe.ring import BatchRing, RingBatchSampler, RingSlot, collate_batch

    n_samples = int(args.minutes * 60 * args.sfreq)
    per_rec = n_samples // args.window
    n_windows = args.recordings * per_rec
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_", dir=args.tmp))
    try:
        # -------- data: one cache, .pt per window, .npz per recording --------
        t0 = time.perf_counter()
        block = write_bench_cache(
            tmp / "cache.h5", args.recordings, n_samples, args.channels, args.window, args.sfreq
        )
        # The same recordings split over --members caches, joined by a cache set.
        from brainpipe.cacheset import write_cache_set

        (tmp / "set").mkdir()
        members = []
        for k, part in enumerate(np.array_split(np.arange(args.recordings), args.members)):
            if len(part):
                members.append(tmp / "set" / f"m{k:03d}.h5")
                write_bench_cache(
                    members[-1],
                    len(part),
                    n_samples,
                    args.channels,
                    args.window,
                    args.sfreq,
                    first=int(part[0]),
                )
        write_cache_set(tmp / "set.json", members)
        (tmp / "pt").mkdir()
        (tmp / "npz").mkdir()
        per_rec_chw = np.ascontiguousarray(block.T)  # (C, n): how such exports store recordings
        for r in range(args.recordings):
            np.savez(tmp / "npz" / f"rec{r:05d}.npz", x=per_rec_chw)
        for w in range(n_windows):
            k = w % per_rec
            x = torch.from_numpy(per_rec_chw[:, k * args.window : (k + 1) * args.window].copy())
            torch.save(x, tmp / "pt" / f"w{w:06d}.pt")
        # Write-back of the freshly written files would otherwise slow the first methods
        # measured (here .pt reads ran 10x slower until it finished); the pages stay cached.
        os.sync()
        gen_s = time.perf_counter() - t0

        rng = np.random.default_rng(0)
        batches = [rng.integers(0, n_windows, BATCH) for _ in range(400)]
        ds = CacheWindowDataset(tmp / "cache.h5")
        assert len(ds) == n_windows
        ds_set = CacheWindowDataset(tmp / "set.json")
        assert len(ds_set) == n_windows
        reader = CacheReader(tmp / "cache.h5")
        in_ram = np.ascontiguousarray(np.asarray(reader.read(0, reader.shape[0])))
        out = np.empty((BATCH, args.window, args.channels), np.float16)
        starts = ds.start

        def memcpy(b):
            for k, s in enumerate(starts[b].tolist()):
                out[k] = in_ram[s : s + args.window]

        def pt(b):
            torch.stack(
                [torch.load(tmp / "pt" / f"w{w:06d}.pt", weights_only=True) for w in b.tolist()]
            )

        def npz(b):
            xs = []
            for w in b.tolist():
                r, k = divmod(w, per_rec)
                with np.load(tmp / "npz" / f"rec{r:05d}.npz") as z:
                    xs.append(z["x"][:, k * args.window : (k + 1) * args.window])
            np.stack(xs)

        # Warm the page cache for every format, as a second training epoch would find it.
        for d in ("pt", "npz"):
            for f in (tmp / d).iterdir():
                f.read_bytes()
        reader.read(0, reader.shape[0])
        for m in members:
            m.read_bytes()

        # Best of two rounds, interleaved: this is a shared machine, and a method measured
        # while something else runs should not lose to one measured in a quiet moment.
        single = {
            "cache __getitems__": ds.__getitems__,
            f"cache set, {len(members)} members": ds_set.__getitems__,
            ".pt per window": pt,
            "memcpy bound": memcpy,
        }
        best: dict[str, float] = {}
        for _ in range(2):
            for name, fn in single.items():
                best[name] = max(best.get(name, 0.0), rate(fn, batches, args.seconds / 2))
        set_name = f"cache set, {len(members)} members"
        rows = [("cache __getitems__", best["cache __getitems__"], 1)]
        rows.append((set_name, best[set_name], 1))

        def loader_rate(workers: int, ring: bool) -> float:
            shared = None
            sampler = batches
            if ring:
                n_slots = BatchRing.slots_for(workers, 4)
                shared = BatchRing(n_slots, (BATCH, args.window, args.channels), np.float16)
                ds.ring = shared
                sampler = RingBatchSampler(batches, n_slots)
            loader = DataLoader(
                ds,
                batch_sampler=sampler,
                collate_fn=collate_batch,
                num_workers=workers,
                prefetch_factor=4,
            )
            it = iter(loader)
            for _ in range(2 * workers):  # worker start-up is not the steady state
                next(it)
            n, t = 0, time.perf_counter()
            for b in it:
                x = b[0].array() if isinstance(b[0], RingSlot) else b[0]
                n += len(x)
                if time.perf_counter() - t >= args.seconds:
                    break
            r = n / (time.perf_counter() - t)
            del it, loader, x, b
            ds.ring = None
            if shared is not None:
                shared.close()
            return r

        if args.workers > 0:
            w = args.workers
            rows.append((f"cache DataLoader x{w}, ring", loader_rate(w, True), w))
            rows.append((f"cache DataLoader x{w}, torch", loader_rate(w, False), w))
        rows.append((".pt per window", best[".pt per window"], 1))
        rows.append((".npz per recording", rate(npz, batches[:2], 0.0), 1))
        rows.append(("memcpy bound", best["memcpy bound"], 1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ours = rows[0][1]
    by = {name: r for name, r, _ in rows}
    result = {
        "windows_per_s": by,
        "batch": BATCH,
        "window": [args.window, args.channels],
        "n_windows": n_windows,
        "generate_s": gen_s,
        "ratios": {
            "vs_pt": ours / by[".pt per window"],
            "vs_npz": ours / by[".npz per recording"],
            "of_memcpy": ours / by["memcpy bound"],
            "set_of_cache": by[set_name] / ours,
        },
        "targets": {
            "per_worker_ge_50k": ours >= 50_000,
            "ge_7x_pt": ours >= 7 * by[".pt per window"],
            "ge_200x_npz": ours >= 200 * by[".npz per recording"],
            "set_ge_90pct": by[set_name] >= 0.9 * ours,
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"random batches of {BATCH} windows ({args.channels} x {args.window}), {n_windows} windows "
        f"in {args.recordings} recordings of {args.minutes:g} min; data written in {gen_s:.1f} s"
    )
    print(f"{'method':<24} {'windows/s':>12} {'per process':>12} {'cache is':>10}")
    for name, r, procs in rows:
        print(f"{name:<24} {r:>12,.0f} {r / procs:>12,.0f} {ours / r:>9.2f}x")
    t = result["targets"]
    print(
        f"targets: >= 50k windows/s per process: {'yes' if t['per_worker_ge_50k'] else 'NO'}; "
        f">= 7x .pt: {'yes' if t['ge_7x_pt'] else 'NO'}; >= 200x .npz: {'yes' if t['ge_200x_npz'] else 'NO'}; "
        f"set >= 90% of one cache: {result['ratios']['set_of_cache']:.0%} "
        f"{'yes' if t['set_ge_90pct'] else 'NO'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
