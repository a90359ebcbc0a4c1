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

`--foundation` adds the foundation models' rows (issue 21): each model at its contract's rate,
window and channels, from random-initialised weights saved with save_pretrained (so the strict
offline load runs too), trained with `--finetune`; samples/s, step time, peak memory, data wait
and whether bf16 autocast was on. A CPU smoke check of those rows:

    python scripts/bench_train_gpu.py --device cpu --foundation --fm-small --models \
        --n-subjects 6 --workers 0 --epochs 2 --batch-size 8 --max-steps 3
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


# Per foundation model: (sfreq, montage, window seconds) inside its contract (foundation.py).
FM_CACHES = {
    "Labram": (200, "referential", 10), "CBraMod": (200, "referential", 10),
    "BIOT": (200, "tcp", 10), "REVE": (200, "referential", 10),
    "EEGPT": (256, "referential", 4), "LUNA": (256, "referential", 5),
}  # fmt: skip


def _fm_cache(work: Path, index: Path, sfreq: int, montage: str) -> tuple[Path, list[str]]:
    """A cache in µV at the model's rate (built once per rate and montage)."""
    from brainpipe.cache import build_cache
    from brainpipe.config import load_config

    sets = [
        "corpus.layout=tuab", "cache.task=abnormal", "preprocess.normalize=none",
        "preprocess.crop_start_s=0", f"preprocess.sfreq={sfreq}", f"preprocess.montage={montage}",
        "preprocess.h_freq=70", "window.seconds=4", "window.stride_seconds=1",
    ]  # fmt: skip
    cache = work / f"fm_{sfreq}_{montage}.h5"
    if not cache.exists():
        build_cache(index, cache, load_config(None, sets), workers=os.cpu_count(), progress=False)
    return cache, sets


def foundation_rows(args, work: Path, index: Path, device) -> list[dict]:
    """One row per foundation model: `brainpipe train` from locally saved random weights."""
    import torch

    from brainpipe.config import load_config
    from brainpipe.training.foundation import CONTRACTS
    from brainpipe.training.models import model_classes
    from brainpipe.training.train import train

    rows = []
    for model in args.fm_models:
        sfreq, montage, seconds = FM_CACHES[model]
        cache, sets = _fm_cache(work, index, sfreq, montage)
        c = CONTRACTS[model]
        n_chans, n_times = (16 if model == "BIOT" else 19), int(sfreq * seconds)
        weights = work / "weights" / model
        kw = dict(c.small) if args.fm_small else {}
        if model == "REVE":
            from brainpipe.training.foundation import standard_positions

            weights.mkdir(parents=True, exist_ok=True)
            bank = {k: v.tolist() for k, v in standard_positions().items()}
            (weights / "reve_positions.json").write_text(json.dumps(bank))
            os.environ["REVE_POSITIONS_PATH"] = str(weights)
        model_classes()[model](
            n_chans=n_chans, n_times=n_times, n_outputs=2, sfreq=c.sfreq, **kw
        ).save_pretrained(str(weights))
        over = [
            *sets, f"window.seconds={seconds}", f"window.stride_seconds={seconds / 2}",
            f"train.model={model}", f"train.pretrained={weights}", f"train.finetune={args.finetune}",
            f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}",
            f"train.device={args.device}", f"train.num_workers={args.workers[-1]}",
            f"train.grad_checkpointing={str(args.grad_checkpointing).lower()}",
        ] + ([f"train.max_steps_per_epoch={args.max_steps}"] if args.max_steps else [])  # fmt: skip
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run_dir = work / "runs" / f"fm_{model}"
        shutil.rmtree(run_dir, ignore_errors=True)
        s = train(cache, run_dir, load_config(None, over))
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        rows.append({
            "model": model, "finetune": args.finetune, "samples_per_s": s["samples_per_s"],
            "step_s": args.batch_size / max(s["samples_per_s"], 1e-9),
            "data_wait_fraction": s["data_wait_fraction"], "peak_gib": peak,
            "bf16": device.type == "cuda", "params": s["finetune"]["total"],
            "trainable": s["finetune"]["trainable"],
        })  # fmt: skip
    return rows


def print_fm_rows(rows: list[dict]) -> None:
    print(f"\n{'model':<8} {'finetune':<12} {'params':>11} {'samples/s':>10} {'step s':>8} "
          f"{'peak GiB':>8} {'data wait':>9} {'bf16':>5}")  # fmt: skip
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        print(
            f"{r['model']:<8} {r['finetune']:<12} {r['params']:>11,} {r['samples_per_s']:>10,.1f} "
            f"{r['step_s']:>8.3f} {peak:>8} {r['data_wait_fraction']:>9.1%} {str(r['bf16']):>5}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cache", help="an existing cache (default: generate one)")
    ap.add_argument("--n-subjects", type=int, default=60)
    ap.add_argument("--models", nargs="*", default=["ShallowFBCSPNet", "Deep4Net"])
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
    ap.add_argument("--foundation", action="store_true", help="add the foundation-model rows")
    ap.add_argument(
        "--fm-models", nargs="+", default=["BIOT", "Labram", "CBraMod", "EEGPT", "LUNA", "REVE"]
    )
    ap.add_argument("--fm-small", action="store_true", help="tiny model sizes (CPU smoke check)")
    ap.add_argument("--finetune", default="full", choices=("full", "linear_probe", "last_blocks"))
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--max-steps", type=int, default=None, help="train.max_steps_per_epoch")
    args = ap.parse_args()
    if args.foundation and args.cache:
        ap.error("--foundation builds its caches from the generated corpus; drop --cache")

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
    if not args.cache and not (work / "index.npz").exists():
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
        ] + ([f"train.max_steps_per_epoch={args.max_steps}"] if args.max_steps else [])
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
    fm_rows = foundation_rows(args, work, work / "index.npz", device) if args.foundation else []
    if fm_rows:
        print_fm_rows(fm_rows)
    if args.json:
        out = {"device": name, "rows": rows, "foundation": fm_rows}
        Path(args.json).write_text(json.dumps(out, indent=1))
    if not args.keep and not args.cache:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
