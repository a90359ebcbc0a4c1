"""Is the GPU fed? `brainpipe train` throughput beside the same model fed from GPU memory, one run.

    python scripts/bench_train_gpu.py                          # on a CUDA host, a few minutes
    python scripts/bench_train_gpu.py --cache work/cache.h5    # on an existing cache
    python scripts/bench_train_gpu.py --device cpu --n-subjects 6 --workers 0 2 --epochs 2 \\
        --batch-size 32 --models ShallowFBCSPNet               # a smoke run without a GPU

Without --cache it generates a synthetic TUAB corpus and builds a cache of 22 TCP channels x
2,000 samples (10 s at 200 Hz; windows every 0.5 s, so many windows from little raw data).
For each model and each num_workers it runs `brainpipe.training.train.train` (the real loop: DataLoader,
batch ring, pinned copies, bf16 autocast) and reads samples/s and the data-wait fraction of the
steady epochs from its summary. The bound is the same model, optimizer and step function on one
batch that is already on the device: what the GPU consumes when it never waits.
Targets (issue): data wait <= 5 % with the default config, samples/s within 10 % of the bound.
`--task pairs` (or contrastive) measures the MEG subject tasks' loop the same way (issue 12).
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

CACHE_SETTINGS = [
    "corpus.layout=tuab",
    "preprocess.montage=tcp",
    "preprocess.sfreq=200",
    "preprocess.h_freq=70",
    "preprocess.notch_freqs=[60]",
    "preprocess.crop_start_s=0",
    "window.seconds=10",
    "window.stride_seconds=0.5",
    "cache.task=abnormal",
]


def data_on_device_rate(cfg, reader, device, steps: int) -> float:
    """Samples/s of train_step on one batch that never leaves the device."""
    import torch

    from brainpipe.training.models import build_model, model_args
    from brainpipe.training.objectives import objective_for
    from brainpipe.training.runtime import DistEnv, make_datasets, train_sampler

    t = cfg.train
    ds = make_datasets(reader, cfg).train
    subject_task = t.task != "classify"
    margs = model_args(
        t.model,
        t.model_kwargs,
        ds.n_channels,
        ds.window_samples,
        t.embedding_dim if subject_task else len(reader.label_names),
        reader.sfreq,
    ) | ({"head": t.task} if subject_task else {})
    train_step = objective_for(t.task, t.temperature).step
    torch.manual_seed(t.seed)
    model = build_model(margs).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    # One batch as the task's sampler draws it (pairs: 2 x batch_size windows).
    first = next(iter(train_sampler(ds, cfg, DistEnv())))
    n = len(first)
    x, y, *_ = ds.__getitems__(first)
    batch = (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))

    def run(k: int) -> None:
        for _ in range(k):
            loss, _ = train_step(model, optimizer, scheduler, batch, device, t.amp, t.grad_clip)
            loss.item()  # the training loop waits on each step's loss too

    run(max(3, steps // 5))  # cuDNN autotuning, allocator warm-up
    t0 = time.perf_counter()
    run(steps)
    return steps * n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cache", help="an existing cache (default: generate one)")
    ap.add_argument("--n-subjects", type=int, default=60)
    ap.add_argument("--models", nargs="+", default=["ShallowFBCSPNet", "Deep4Net"])
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 4, 8])
    ap.add_argument("--epochs", type=int, default=4, help="the first is left out (start-up)")
    ap.add_argument("--batch-size", type=int, default=256, help="windows (pairs: pairs)")
    ap.add_argument(
        "--task", default="classify", choices=("classify", "pairs", "contrastive"),
        help="train.task; the subject tasks train on the TUAB corpus's subjects",
    )  # fmt: skip
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--bound-steps", type=int, default=100)
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    args = ap.parse_args()

    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    from brainpipe.cache import build_cache
    from brainpipe.config import load_config
    from brainpipe.index import build_index
    from brainpipe.synthetic import make_corpus
    from brainpipe.training.runtime import open_checked_cache, resolve_device
    from brainpipe.training.train import train

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_train_"))
    cache = Path(args.cache) if args.cache else work / "cache.h5"
    if not args.cache and not cache.exists():
        t0 = time.perf_counter()
        cfg = load_config(None, CACHE_SETTINGS)
        make_corpus(work / "raw", "tuab", n_subjects=args.n_subjects, seed=0, duration_s=(120, 300))
        build_index(work / "raw", work / "index.npz", cfg, progress=False)
        build_cache(work / "index.npz", cache, cfg, workers=os.cpu_count(), progress=False)
        print(f"generated corpus and cache in {time.perf_counter() - t0:.0f} s: {cache}")

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; {os.cpu_count()} CPU cores")
    rows = []
    for model in args.models:
        base = [
            f"train.model={model}",
            f"train.batch_size={args.batch_size}",
            f"train.epochs={args.epochs}",
            f"train.device={args.device}",
            f"train.task={args.task}",
        ]
        cfg = load_config(None, [*CACHE_SETTINGS, *base])
        reader = open_checked_cache(cache, cfg)
        bound = data_on_device_rate(cfg, reader, device, args.bound_steps)
        rows.append(
            {"model": model, "loader": "data already on the device", "samples_per_s": bound}
        )
        for nw in args.workers:
            cfg = load_config(None, [*CACHE_SETTINGS, *base, f"train.num_workers={nw}"])
            run_dir = work / "runs" / f"{model}_w{nw}"
            shutil.rmtree(run_dir, ignore_errors=True)
            s = train(cache, run_dir, cfg)
            rows.append(
                {
                    "model": model,
                    "loader": f"brainpipe train, num_workers={nw}",
                    "samples_per_s": s["samples_per_s"],
                    "data_wait_fraction": s["data_wait_fraction"],
                    "vs_bound": s["samples_per_s"] / bound,
                }
            )

    print(f"\n{'model':<16} {'loader':<34} {'samples/s':>10} {'data wait':>9} {'vs bound':>8}")
    for r in rows:
        wait = f"{r['data_wait_fraction']:.1%}" if "data_wait_fraction" in r else "-"
        ratio = f"{r['vs_bound']:.2f}x" if "vs_bound" in r else "1.00x"
        print(
            f"{r['model']:<16} {r['loader']:<34} {r['samples_per_s']:>10,.0f} {wait:>9} {ratio:>8}"
        )
    print("targets: data wait <= 5 % (default num_workers), samples/s >= 0.90x the bound")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    if not args.keep and not args.cache:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
