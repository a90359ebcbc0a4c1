"""CPU training step of braindecode models: stock beside brainpipe's (spanning convs as conv1d).

    python scripts/bench_conv.py                                # eegmat's shape: 64 x 20 x 1000
    python scripts/bench_conv.py --chans 21 --times 6000        # TUAB's 60-s windows at 100 Hz
    python scripts/bench_conv.py --models ShallowFBCSPNet --threads 8 --json

One process, both sides on the same model object and batch, alternating (stock, brainpipe,
stock, ...) so a busy moment hits both: a training step is the forward pass, cross-entropy,
backward and an AdamW step, as `brainpipe train` takes it; `eval` is a no-grad forward pass in
eval mode, as validation scores a batch. brainpipe's side runs the forward pass inside
`brainpipe.training.fastconv.conv_context` (what `brainpipe train`, `predict` and `embed` do on
the CPU). Medians over `--steps` steps after one warm-up; `max |diff|` is the largest difference
between the two sides' logits on the batch (float32 rounding: the same function).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("ShallowFBCSPNet", "Deep4Net", "EEGNetv4")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--chans", type=int, default=20)
    ap.add_argument("--times", type=int, default=1000, help="samples per window")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--steps", type=int, default=7, help="timed steps per side")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    return ap.parse_args(argv)


def _model(name: str, chans: int, times: int):
    import inspect

    import braindecode.models as bm
    import torch

    renamed = {"EEGNetv4": "EEGNet"}
    cls = getattr(bm, name, None) or getattr(bm, renamed.get(name, name))
    kwargs = {"n_chans": chans, "n_outputs": 2, "n_times": times}
    params = inspect.signature(cls).parameters
    if "final_conv_length" in params:
        kwargs["final_conv_length"] = "auto"
    torch.manual_seed(0)
    return cls(**kwargs)


def time_model(name: str, args: argparse.Namespace) -> dict:
    """Median step and eval times of both sides, their ratio, the logits' largest difference."""
    import torch
    import torch.nn.functional as F

    from brainpipe.training.fastconv import SpanningConvAsConv1d, conv_context

    cpu = torch.device("cpu")
    model = _model(name, args.chans, args.times)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.chans, args.times, generator=g)
    y = torch.arange(args.batch) % 2
    sides = {"stock": contextlib.nullcontext, "brainpipe": lambda: conv_context(model, cpu)}
    steps: dict[str, list[float]] = {k: [] for k in sides}
    evals: dict[str, list[float]] = {k: [] for k in sides}
    for i in range(args.steps + 1):
        for side, ctx in sides.items():
            t0 = time.perf_counter()
            with ctx():
                out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t1 = time.perf_counter()
            model.eval()
            with torch.no_grad(), ctx():
                model(x)
            model.train()
            if i:  # the first round warms both up
                steps[side].append(t1 - t0)
                evals[side].append(time.perf_counter() - t1)
    model.eval()
    mode = SpanningConvAsConv1d()
    with torch.no_grad():
        ref = model(x)
        with mode:
            fast = model(x)
    med = {k: statistics.median(v) * 1e3 for k, v in steps.items()}
    med_eval = {k: statistics.median(v) * 1e3 for k, v in evals.items()}
    return {
        "model": name,
        "step_ms": med,
        "eval_ms": med_eval,
        "step_ratio": med["stock"] / med["brainpipe"],
        "eval_ratio": med_eval["stock"] / med_eval["brainpipe"],
        "convs_rewritten": mode.rewritten,
        "max_abs_diff": float((ref - fast).abs().max()),
    }


def render(rows: list[dict], args: argparse.Namespace) -> str:
    head = ("model", "convs as conv1d", "step stock ms", "step brainpipe ms", "speed-up",
            "eval stock ms", "eval brainpipe ms", "speed-up", "max |diff|")  # fmt: skip
    body = [
        (
            r["model"],
            str(r["convs_rewritten"]),
            f"{r['step_ms']['stock']:.0f}",
            f"{r['step_ms']['brainpipe']:.0f}",
            f"{r['step_ratio']:.2f}x",
            f"{r['eval_ms']['stock']:.0f}",
            f"{r['eval_ms']['brainpipe']:.0f}",
            f"{r['eval_ratio']:.2f}x",
            f"{r['max_abs_diff']:.1e}",
        )  # fmt: skip
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in (head, *body)]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    title = (f"CPU training step, batch {args.batch} x {args.chans} channels x {args.times} "
             f"samples, {args.threads} threads, median of {args.steps}")  # fmt: skip
    return "\n".join([title, *lines])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))  # this checkout's brainpipe
    import torch

    from brainpipe.training.torchaudio_guard import import_braindecode

    import_braindecode()
    torch.set_num_threads(args.threads)
    rows = [time_model(m.strip(), args) for m in args.models.split(",") if m.strip()]
    if args.json:
        print(json.dumps({"batch": args.batch, "chans": args.chans, "times": args.times,
                          "threads": args.threads, "torch": torch.__version__, "rows": rows},
                         indent=2))  # fmt: skip
    else:
        print(render(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
