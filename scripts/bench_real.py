"""brainpipe beside braindecode's own pipeline on real EEG: same split, model, epochs and seeds.

    python scripts/bench_real.py                          # eegmat, ShallowFBCSPNet, 5 seeds
    python scripts/bench_real.py --model EEGNetv4 --seeds 0,1,2 --epochs 10
    python scripts/bench_real.py --json                   # one JSON object instead of the table

The data: PhysioNet's EEG during mental arithmetic (`../shared/realdata/eegmat`, 36 subjects,
`SubjectNN_1.edf` rest, `SubjectNN_2.edf` serial subtraction) under the protocol CBraMod (ICLR
2025, "Mental Arithmetic", `preprocessing/preprocessing_stress.py`) and the EEG foundation
models after it use: files sorted, train Subject00-27, validation Subject28-31, test
Subject32-35; 20 channels (the 19 10-20 electrodes and `EEG A2-A1`, in that script's order),
resampled to 200 Hz, no filter, no per-recording normalization, microvolts / 100; 5-s windows
without overlap; the label is the file's suffix. Test balanced accuracy, AUROC and AUC-PR at the
epoch of the best validation balanced accuracy (loss breaks ties), mean +- std over seeds.

brainpipe: the real stages as a user runs them, each a `python -m brainpipe` process (so its
times are end to end, interpreter and imports included): `index` over a CSV manifest (path,
subject, label, split) written into a temporary work dir, never beside the data; `build-cache`;
one `train --seeds` process (one `train` per seed where this brainpipe has no `--seeds`; each
process pays ~8 CPU s of imports and set-up). Validation is the corpus's own `val` subjects
where `train.val_split` exists (else subjects carved from train at random, and the peer uses the
same carved subjects); µV/100 where `train.input_scaling` offers `uv_100` (else both sides
train on µV: a constant factor, which a network with batch norm after its first layer barely
sees).

braindecode: its own pipeline. mne reads each EDF, braindecode's `preprocess` picks the channels
in order, resamples (mne's FFT resampling) and scales, `create_fixed_length_windows` cuts the
windows, a torch DataLoader feeds them. The model is the same braindecode class with the same
arguments (`n_chans`/`n_outputs`/`n_times` or the 0.x names `in_chans`/`n_classes`/
`input_window_samples`, whichever the installed class takes) and, seeded alike, the same
initial weights. The loop mirrors `brainpipe train`: AdamW, linear warm-up then cosine per step
(`brainpipe.training.train.lr_factor`), gradient clipping, cross-entropy, the same batch size,
dropped ragged last batch, optional class-balanced sampling, both splits scored each epoch.

The two data paths agree but for a pure 2.5-ms delay: mne's `Raw.resample` (mne 1.13) puts
the 200-Hz samples half a sample late (measured against the 500-Hz samples; the cross-spectrum's
phase is a straight 2.5-ms line, the power spectra agree within 0.2% up to 95 Hz), while
brainpipe's cache and `mne.filter.resample` keep the grid (correlation 0.9999997 with each
other). Hence the 0.98-0.99 correlation per channel between the two sides' windows.

The training step is the same model, loss and optimizer on both sides; brainpipe runs it on the
CPU with its spanning convolutions as conv1d (`brainpipe.training.fastconv`: the same function,
ShallowFBCSPNet's step ~4x faster, `scripts/bench_conv.py`), braindecode as it ships.

Both sides run on the CPU with the same torch thread count and loader workers; wall and CPU
seconds are both reported (CPU: this process and its children, steadier on a shared host).
Settings are the field's and brainpipe's defaults (lr 1e-3, weight decay 1e-2, one warm-up
epoch, clip 1.0) with the protocol's batch size of 64; nothing here is tuned to these 36
subjects. An epoch of ShallowFBCSPNet over eegmat's 1,343 training windows, both splits
scored, takes ~7 s on 2 quiet cores on braindecode's side and ~2.5 s on brainpipe's, so the
default 5 seeds x 20 epochs takes ~17 minutes on 2 quiet cores; `--seeds 3 --epochs 5` about
3. Timings on a busy machine show direction only.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared/realdata/eegmat"

# preprocessing_stress.py's channels, in its order (EDF labels of eegmat).
CHANNELS = (
    "EEG Fp1", "EEG Fp2", "EEG F3", "EEG F4", "EEG F7", "EEG F8", "EEG T3", "EEG T4", "EEG C3",
    "EEG C4", "EEG T5", "EEG T6", "EEG P3", "EEG P4", "EEG O1", "EEG O2", "EEG Fz", "EEG Cz",
    "EEG Pz", "EEG A2-A1",
)  # fmt: skip
LABELS = {"1": "rest", "2": "task"}  # file suffix -> class; sorted names: rest 0, task 1
SFREQ = 200.0
WINDOW_S = 5.0
N_FILES = 72  # 36 subjects x 2
# Models braindecode 1.x renamed (brainpipe accepts the 0.x names too).
RENAMED = {"EEGNetv4": "EEGNet"}


# ---------------------------------------------------------------------------------------------
# Pure helpers (tests/test_bench_real.py)
# ---------------------------------------------------------------------------------------------


def protocol_split(index_in_sorted: int) -> str:
    """CBraMod's split by the file's position among the 72 sorted files: 56 / 8 / 8."""
    if index_in_sorted < 56:
        return "train"
    return "val" if index_in_sorted < 64 else "test"


def manifest_rows(names: list[str]) -> list[dict[str, str]]:
    """One manifest row per eegmat file name (path, subject, label, split), files sorted."""
    rows = []
    for i, name in enumerate(sorted(names)):
        stem = name.rsplit(".", 1)[0]
        subject, _, suffix = stem.rpartition("_")
        if suffix not in LABELS or not subject:
            raise ValueError(f"{name}: not an eegmat file name (SubjectNN_1.edf / _2.edf)")
        rows.append(
            {"path": name, "subject": subject, "label": LABELS[suffix], "split": protocol_split(i)}
        )
    return rows


def parse_seeds(text: str) -> list[int]:
    """`5` -> seeds 0..4; `0,3,7` -> those seeds."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) == 1 and "," not in text:
        n = int(parts[0])
        if n < 1:
            raise ValueError(f"--seeds {text}: at least one seed")
        return list(range(n))
    seeds = [int(p) for p in parts]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text}: a count or distinct comma-separated seeds")
    return seeds


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (numpy's ddof=0) over seeds, as brainpipe's
    `train --seeds` summary.json reports them."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.pstdev(vals)


def model_kwargs(
    params: typing.Collection[str], n_chans: int, n_times: int, n_outputs: int, sfreq: float
) -> dict[str, Any]:
    """A braindecode model's arguments in the names its signature (`params`) takes: 1.x's
    n_chans/n_outputs/n_times, else 0.x's in_chans/n_classes/input_window_samples; with the
    defaults `brainpipe.training.models.model_args` adds (classifier sized to the window,
    logits rather than log-probabilities)."""
    new = {"n_chans": n_chans, "n_outputs": n_outputs, "n_times": n_times}
    old = {"in_chans": n_chans, "n_classes": n_outputs, "input_window_samples": n_times}
    shape = new if "n_chans" in params else old
    out = {k: v for k, v in shape.items() if k in params}
    if "sfreq" in params:
        out["sfreq"] = sfreq
    if "final_conv_length" in params:
        out["final_conv_length"] = "auto"
    if "add_log_softmax" in params:
        out["add_log_softmax"] = False
    return out


def selection_key(val: dict[str, float]) -> tuple[float, float]:
    """What best.pt maximizes in brainpipe: validation balanced accuracy, then -loss; NaN worst."""
    key = (val["balanced_accuracy"], -val["loss"])
    return tuple(-math.inf if math.isnan(v) else v for v in key)  # type: ignore[return-value]


def side_summary(side: str, runs: list[dict[str, Any]], prep: Clock, train: Clock) -> dict:
    """One side's row: each metric's mean and std over seeds, the per-seed values, the wall
    and CPU seconds (CPU: every thread and child process; steadier than wall on a busy host)."""
    row: dict[str, Any] = {"side": side, "seeds": len(runs), "runs": runs}
    for key in ("balanced_accuracy", "auroc", "auprc"):
        m, s = mean_std([r[key] for r in runs])
        row[key] = {"mean": m, "std": s}
    row.update(prep_s=prep.wall, train_s=train.wall, total_s=prep.wall + train.wall)
    row.update(prep_cpu_s=prep.cpu, train_cpu_s=train.cpu, total_cpu_s=prep.cpu + train.cpu)
    return row


@dataclasses.dataclass
class Clock:
    """Wall and CPU seconds, summed over the spans it timed."""

    wall: float = 0.0
    cpu: float = 0.0

    def add(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


def render_table(rows: list[dict[str, Any]]) -> str:
    """The comparison table, then brainpipe's time ratios to the peer (< 1: brainpipe faster)."""

    def pm(d: dict[str, float]) -> str:
        return f"{d['mean']:.3f} ± {d['std']:.3f}"

    head = ("side", "bal. acc", "AUROC", "AUC-PR", "prep s", "train s", "total s", "total cpu s")
    body = [
        (
            r["side"],
            pm(r["balanced_accuracy"]),
            pm(r["auroc"]),
            pm(r["auprc"]),
            f"{r['prep_s']:.1f}",
            f"{r['train_s']:.1f}",
            f"{r['total_s']:.1f}",
            f"{r['total_cpu_s']:.1f}",
        )  # fmt: skip
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in (head, *body)
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    by = {r["side"]: r for r in rows}
    if "brainpipe" in by and "braindecode" in by:
        bp, bd = by["brainpipe"], by["braindecode"]
        for what, keys in (("wall", ("prep_s", "train_s", "total_s")),
                           ("CPU", ("prep_cpu_s", "train_cpu_s", "total_cpu_s"))):  # fmt: skip
            ratio = ", ".join(
                f"{k.split('_')[0]} {bp[k] / bd[k]:.2f}x" if bd[k] > 0 else f"{k} n/a" for k in keys
            )
            lines.append(f"brainpipe / braindecode {what} time: {ratio}")
        for key, name in (("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC")):
            diff, se = mean_difference(bp["runs"], bd["runs"], key)
            lines.append(
                f"brainpipe - braindecode {name}: {diff:+.3f} (standard error {se:.3f}; "
                f"{len(bp['runs'])} and {len(bd['runs'])} seeds)"
            )
    return "\n".join(lines)


def mean_difference(a: list[dict], b: list[dict], key: str) -> tuple[float, float]:
    """Difference of the two sides' means of `key` over seeds and its standard error
    (Welch's: sqrt(s_a^2 / n_a + s_b^2 / n_b), sample variances; NaN with one seed a side).
    A difference within about two standard errors of 0 is what seeds alone produce."""
    va, vb = [float(r[key]) for r in a], [float(r[key]) for r in b]
    diff = statistics.fmean(va) - statistics.fmean(vb)
    if len(va) < 2 or len(vb) < 2:
        return diff, math.nan
    return diff, math.sqrt(statistics.variance(va) / len(va) + statistics.variance(vb) / len(vb))


# ---------------------------------------------------------------------------------------------
# brainpipe: the stages as processes
# ---------------------------------------------------------------------------------------------


def train_fields() -> dict[str, Any]:
    """brainpipe.config's TrainConfig fields of this tree, by name -> type annotation."""
    from brainpipe.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def protocol_options() -> dict[str, Any]:
    """What this brainpipe can express of the protocol: its validation split, µV/100, and
    several seeds from one `train --seeds` process."""
    fields = train_fields()
    scaling = fields.get("input_scaling")
    uv100 = scaling is not None and "uv_100" in typing.get_args(scaling)
    seeds = importlib.util.find_spec("brainpipe.training.protocol") is not None
    return {"val_split": "val_split" in fields, "uv_100": uv100, "train_seeds": seeds}


def write_inputs(work: Path, data: Path, args: argparse.Namespace, opts: dict) -> Path:
    """The manifest and the config both sides' protocol means, in the work dir; the config path."""
    rows = manifest_rows([p.name for p in data.glob("*.edf")])
    manifest = work / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "subject", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    train = {
        "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
        "num_workers": args.workers, "device": "cpu", "eval_split": "test",
        "balanced_sampling": args.balanced_sampling, "val_fraction": args.val_fraction,
    }  # fmt: skip
    if opts["val_split"]:
        train["val_split"] = "val"
    if opts["uv_100"]:
        train["input_scaling"] = "uv_100"
    cfg = {
        "corpus": {"layout": "generic", "extensions": [".edf"], "manifest": str(manifest)},
        "preprocess": {
            "montage": "referential", "channels": [c.removeprefix("EEG ") for c in CHANNELS],
            "sfreq": SFREQ, "l_freq": None, "h_freq": None, "notch_freqs": [],
            "normalize": "none", "clip": None,
        },
        "window": {"seconds": WINDOW_S, "stride_seconds": WINDOW_S},
        "cache": {"dtype": "float16", "task": "none"},
        "train": train,
    }  # fmt: skip
    path = work / "eegmat.yaml"
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    return path


def _child_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_stage(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """One `python -m brainpipe ...` process; its wall and CPU seconds. Fails with its output's
    tail."""
    t0, c0 = time.perf_counter(), _child_cpu()
    with log.open("a") as f:
        f.write(f"$ brainpipe {' '.join(argv)}\n")
        f.flush()
        done = subprocess.run(
            [sys.executable, "-m", "brainpipe", *argv], env=env, stdout=f, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"brainpipe {argv[0]} failed ({done.returncode}):\n" + "\n".join(tail))
    return time.perf_counter() - t0, _child_cpu() - c0


def run_brainpipe(
    work: Path, data: Path, cfg: Path, seeds: list[int], threads: int, one_process: bool
) -> dict:
    """index, build-cache and train: one `train --seeds` process where this brainpipe has it
    (`one_process`), else one `train` per seed; the test metrics of each seed's best.pt."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TQDM_DISABLE="1")
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = work / "brainpipe.log"
    index, cache = work / "index.npz", work / "cache.h5"
    prep, train = Clock(), Clock()
    prep.add(*run_stage(["index", "--raw", str(data), "--index", str(index), "--config", str(cfg)], env, log))  # fmt: skip
    prep.add(*run_stage(["build-cache", "--index", str(index), "--cache", str(cache), "--config", str(cfg)], env, log))  # fmt: skip
    argv = ["train", "--cache", str(cache), "--config", str(cfg)]
    if one_process:
        parent = work / "runs"
        train.add(*run_stage([*argv, "--run-dir", str(parent), "--seeds", ",".join(map(str, seeds))], env, log))  # fmt: skip
    runs, models = [], []
    for seed in seeds:
        run_dir = work / "runs" / f"seed-{seed}"
        if not one_process:
            train.add(*run_stage([*argv, "--run-dir", str(run_dir), "--set", f"train.seed={seed}"], env, log))  # fmt: skip
        summary = json.loads((run_dir / "summary.json").read_text())
        ev = summary["eval"]
        runs.append(
            {"seed": seed, **{k: ev[k] for k in ("balanced_accuracy", "auroc", "auprc")},
             "best_epoch": summary["best_epoch"], "windows": summary["windows"]}
        )  # fmt: skip
        models.append(summary["model"])
    return {"runs": runs, "prep": prep, "train": train, "cache": cache, "models": models}


def carved_val_subjects(cache: Path, cfg_path: Path, seed: int) -> list[str]:
    """The validation subjects brainpipe carved from train for `seed` (no train.val_split)."""
    from brainpipe.cacheset import open_cache
    from brainpipe.config import load_config
    from brainpipe.samplers import carve_validation

    cfg = load_config(cfg_path, [f"train.seed={seed}"])
    _, val = carve_validation(open_cache(cache), cfg.train.val_fraction, seed, "train")
    return [str(s) for s in val]


# ---------------------------------------------------------------------------------------------
# braindecode: its own pipeline, the same loop
# ---------------------------------------------------------------------------------------------


def braindecode_windows(data: Path, scale: float):
    """mne + braindecode preprocessing and windowing of the protocol; (windows, its Clock)."""
    import inspect

    _braindecode_importable()
    import braindecode.datasets as bdd
    import mne
    import pandas as pd
    from braindecode.preprocessing import (
        Preprocessor,
        create_fixed_length_windows,
        preprocess,
    )

    record = getattr(bdd, "RawDataset", None) or bdd.BaseDataset  # 1.x name, else 0.x's
    t0, c0 = time.perf_counter(), time.process_time()
    parts = []
    for row in manifest_rows([p.name for p in data.glob("*.edf")]):
        raw = mne.io.read_raw_edf(data / row["path"], preload=True, verbose="error")
        target = sorted(LABELS.values()).index(row["label"])
        desc = pd.Series({"subject": row["subject"], "split": row["split"], "target": target})
        parts.append(record(raw, desc, target_name="target"))
    concat = bdd.BaseConcatDataset(parts)
    preprocess(
        concat,
        [
            Preprocessor("pick", picks=list(CHANNELS), apply_on_array=False),
            Preprocessor("reorder_channels", ch_names=list(CHANNELS), apply_on_array=False),
            Preprocessor("resample", sfreq=SFREQ, apply_on_array=False),
            Preprocessor(_scale, factor=scale),  # volts -> µV (/100)
        ],
    )
    n = int(round(WINDOW_S * SFREQ))
    params = inspect.signature(create_fixed_length_windows).parameters
    # 1.x: on_last_window="drop"; 0.x: drop_last_window=True (deprecated in 1.x)
    last = {"on_last_window": "drop"} if "on_last_window" in params else {"drop_last_window": True}
    windows = create_fixed_length_windows(
        concat, window_size_samples=n, window_stride_samples=n, preload=True, **last
    )
    return windows, Clock(time.perf_counter() - t0, time.process_time() - c0)


def _scale(x, factor: float):
    return x * factor


def peer_splits(windows, val_subjects: list[str] | None) -> dict[str, Any]:
    """braindecode's own split of the windows by recording: the protocol's train/val/test, or
    with `val_subjects` (carved by brainpipe) those subjects of train as val, its val unused."""
    by: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, ds in enumerate(windows.datasets):
        split, subject = ds.description["split"], ds.description["subject"]
        if val_subjects is not None and split != "test":
            if split == "val":
                continue
            split = "val" if subject in val_subjects else "train"
        by[split].append(i)
    return windows.split(by)


def _targets(ds) -> Any:
    import numpy as np

    return np.asarray(ds.get_metadata()["target"], np.int64)


def peer_scores(model, loader, y) -> dict[str, float]:
    """brainpipe's window metrics of the model: loss, balanced accuracy, AUROC, AUC-PR."""
    import numpy as np
    import torch
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

    model.eval()
    with torch.no_grad():
        probs = np.concatenate([torch.softmax(model(b[0]).float(), 1).numpy() for b in loader])
    model.train()
    p_true = probs[np.arange(len(y)), y]
    return {
        "loss": float(-np.log(np.clip(p_true, 1e-12, None)).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, probs.argmax(1))),
        "auroc": float(roc_auc_score(y, probs[:, 1])),
        "auprc": float(average_precision_score(y, probs[:, 1])),
    }


def peer_model(name: str, n_chans: int, n_times: int, seed: int):
    """The braindecode class with brainpipe's arguments, seeded as brainpipe seeds it."""
    import inspect

    _braindecode_importable()
    import braindecode.models as bm
    import torch

    cls = getattr(bm, name, None) or getattr(bm, RENAMED.get(name, name), None)
    if cls is None:
        raise SystemExit(f"--model {name}: braindecode {_bd_version()} has no such model")
    kwargs = model_kwargs(inspect.signature(cls).parameters, n_chans, n_times, 2, SFREQ)
    torch.manual_seed(seed)  # as brainpipe's prepare(): the same initial weights
    return cls(**kwargs), kwargs


def _bd_version() -> str:
    _braindecode_importable()
    import braindecode

    return braindecode.__version__


def _braindecode_importable() -> None:
    """braindecode >= 1.0 imports torchaudio, whose PyPI wheel cannot load beside a CPU-only
    torch: brainpipe's stand-in (where this brainpipe has it) lets every other model import."""
    if importlib.util.find_spec("brainpipe.training.torchaudio_guard") is not None:
        from brainpipe.training.torchaudio_guard import import_braindecode

        import_braindecode()


def peer_loaders(splits: dict, args: argparse.Namespace, seed: int):
    """The training loader (shuffled or class-balanced, ragged last batch dropped as brainpipe
    does) and the scoring loaders (every window once, in order)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, WeightedRandomSampler

    train = splits["train"]
    g = torch.Generator().manual_seed(seed)
    drop = len(train) >= args.batch_size
    kw = dict(batch_size=args.batch_size, drop_last=drop, num_workers=args.workers)
    if args.balanced_sampling:
        y = _targets(train)
        w = torch.from_numpy(1.0 / np.bincount(y)[y])
        loader = DataLoader(train, sampler=WeightedRandomSampler(w, len(y), generator=g), **kw)
    else:
        loader = DataLoader(train, shuffle=True, generator=g, **kw)
    scored = {
        k: DataLoader(splits[k], batch_size=args.batch_size, num_workers=args.workers)
        for k in ("val", "test")
    }
    return loader, scored


def peer_train(splits: dict, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One seed of the brainpipe-mirroring loop; test metrics of the best validation epoch."""
    import random

    import numpy as np
    import torch
    import torch.nn.functional as F

    from brainpipe.training.train import lr_factor

    x0 = splits["train"][0][0]
    model, kwargs = peer_model(args.model, x0.shape[0], x0.shape[1], seed)
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
    loader, scored = peer_loaders(splits, args, seed)
    labels = {k: _targets(splits[k]) for k in scored}
    steps = len(loader)
    total, warmup = steps * args.epochs, int(round(1.0 * steps))  # train.warmup_epochs: 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
    best: dict[str, Any] = {}
    best_key = None
    for epoch in range(args.epochs):
        for batch in loader:
            loss = F.cross_entropy(model(batch[0]).float(), batch[1].long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        val, test = (peer_scores(model, scored[k], labels[k]) for k in ("val", "test"))
        if best_key is None or selection_key(val) > best_key:
            best_key, best = selection_key(val), {**test, "best_epoch": epoch + 1}
    return {
        "seed": seed, **{k: best[k] for k in ("balanced_accuracy", "auroc", "auprc")},
        "best_epoch": best["best_epoch"], "model_kwargs": kwargs,
        "windows": {k: len(splits[k]) for k in ("train", "val", "test")},
    }  # fmt: skip


def run_braindecode(data: Path, args, seeds: list[int], scale: float, carved) -> dict:
    """The peer's preparation once, then one loop per seed (`carved`: seed -> val subjects)."""
    import torch

    torch.set_num_threads(args.threads)
    windows, prep = braindecode_windows(data, scale)
    t0, c0 = time.perf_counter(), time.process_time()
    runs = []
    for seed in seeds:
        splits = peer_splits(windows, None if carved is None else carved[seed])
        runs.append(peer_train(splits, args, seed))
    train = Clock(time.perf_counter() - t0, time.process_time() - c0)
    return {"runs": runs, "prep": prep, "train": train}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="eegmat folder (72 EDF)")
    ap.add_argument("--seeds", default="5", help="a count (5: seeds 0-4) or a list (0,1,2)")
    ap.add_argument("--model", default="ShallowFBCSPNet", help="braindecode model class")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64, help="CBraMod's fine-tuning batch")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads, both sides")
    ap.add_argument("--workers", type=int, default=0, help="loader workers, both sides")
    ap.add_argument(
        "--balanced-sampling", action="store_true", help="class-balanced batches, both sides"
    )
    ap.add_argument(
        "--val-fraction", type=float, default=0.2,
        help="subjects carved from train for validation where brainpipe has no train.val_split",
    )  # fmt: skip
    ap.add_argument("--sides", choices=["both", "brainpipe", "braindecode"], default="both")
    ap.add_argument("--work", type=Path, help="work dir to keep (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="print one JSON object, not the table")
    return ap.parse_args(argv)


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Both sides on `work`; the result object (`--json`)."""
    seeds = parse_seeds(args.seeds)
    opts = protocol_options()
    notes = [
        "validation: the corpus's val subjects (train.val_split=val)"
        if opts["val_split"]
        else f"validation: subjects carved from train (val_fraction {args.val_fraction}); "
        "this brainpipe has no train.val_split, so the peer uses the same carved subjects",
        "seeds: one `brainpipe train --seeds` process"
        if opts["train_seeds"]
        else "seeds: one `brainpipe train` process per seed (this brainpipe has no --seeds)",
        "scaling: µV/100 both sides (train.input_scaling=uv_100)"
        if opts["uv_100"]
        else "scaling: µV both sides (this brainpipe has no train.input_scaling=uv_100; "
        "the protocol's µV/100 is a constant factor)",
    ]
    for n in notes:
        print(f"note: {n}", file=sys.stderr, flush=True)
    cfg = write_inputs(work, args.data, args, opts)
    rows, bp = [], None
    if args.sides in ("both", "brainpipe"):
        bp = run_brainpipe(work, args.data, cfg, seeds, args.threads, opts["train_seeds"])
        rows.append(side_summary("brainpipe", bp["runs"], bp["prep"], bp["train"]))
        print(f"brainpipe done ({rows[-1]['total_s']:.0f} s)", file=sys.stderr, flush=True)
    if args.sides in ("both", "braindecode"):
        carved = None
        if not opts["val_split"]:
            if bp is None:
                raise SystemExit("--sides braindecode needs train.val_split in brainpipe.config")
            carved = {s: carved_val_subjects(bp["cache"], cfg, s) for s in seeds}
        scale = 1e6 / 100 if opts["uv_100"] else 1e6
        bd = run_braindecode(args.data, args, seeds, scale, carved)
        rows.append(side_summary("braindecode", bd["runs"], bd["prep"], bd["train"]))
        if bp is not None and bp["models"][0]["kwargs"] != bd["runs"][0]["model_kwargs"]:
            notes.append(
                f"model arguments differ: brainpipe {bp['models'][0]['kwargs']}, "
                f"braindecode {bd['runs'][0]['model_kwargs']}"
            )
    return {
        "data": str(args.data), "model": args.model, "epochs": args.epochs,
        "batch_size": args.batch_size, "seeds": seeds, "threads": args.threads,
        "workers": args.workers, "balanced_sampling": args.balanced_sampling,
        "braindecode": _bd_version(), "notes": notes, "sides": rows,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))  # this checkout's brainpipe, as its stages run it
    if not (args.data.is_dir() and len(list(args.data.glob("*.edf"))) == N_FILES):
        print(
            f"bench_real: {args.data} is not the eegmat folder ({N_FILES} EDF files); "
            "pass --data DIR (PhysioNet eegmat 1.0.0)",
            file=sys.stderr,
        )
        return 2
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        result = bench(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_real-") as tmp:
            result = bench(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"eegmat ({args.data}): {args.model}, {args.epochs} epochs, batch {args.batch_size}, "
            f"seeds {result['seeds']}, {args.threads} threads, braindecode {result['braindecode']}"
        )
        print(render_table(result["sides"]))
        for n in result["notes"]:
            print(f"note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
