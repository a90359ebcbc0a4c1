"""The train stage on small real caches: learning, run-dir outputs, bit-for-bit resume, metrics,
bad input failing before any work, DDP with two CPU processes (gloo)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import make_cache, seizure_cache, small_config

from brainpipe.cli import main
from brainpipe.errors import BrainpipeError
from brainpipe.metrics import compute_metrics
from brainpipe.training.models import model_args
from brainpipe.training.rundir import load_checkpoint
from brainpipe.training.runtime import progress_bar_disabled
from brainpipe.training.train import lr_factor, train

# A ShallowFBCSPNet small enough for 2 CPU cores and 2 s windows at 50 Hz.
FAST = [
    "train.model_kwargs={n_filters_time: 8, n_filters_spat: 8, pool_time_length: 10, pool_time_stride: 5}",
    "train.batch_size=32",
    "train.num_workers=0",
    "train.device=cpu",
    "train.epochs=2",
    "train.lr=0.003",
]


def cfg_with(*overrides: str):
    return small_config(*FAST, *overrides)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("train") / "cache.h5", cfg=small_config())


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


def test_train_learns_and_writes_the_run_dir(cache, tmp_path, capsys):
    run = tmp_path / "run"
    summary = train(cache, run, cfg_with("train.epochs=3"))
    assert summary["epochs"] == 3
    ev = summary["eval"]
    for key in ("balanced_accuracy", "auroc", "auprc", "recording_balanced_accuracy", "loss"):
        assert isinstance(ev[key], float)
    assert ev["balanced_accuracy"] >= 0.9 and ev["auroc"] >= 0.95
    assert summary["samples_per_s"] > 0 and 0 <= summary["data_wait_fraction"] < 1
    assert summary["windows"]["val"] > 0 and summary["windows"]["eval"] == ev["n_windows"]
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["eval"]["balanced_accuracy"] == ev["balanced_accuracy"]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert all(0 <= x["data_wait_fraction"] < 1 and x["samples_per_s"] > 0 for x in lines)
    assert {"loss", "accuracy"} <= set(lines[0]["train"])
    assert list(run.glob("events.out.tfevents.*"))
    ckpt = torch.load(run / "last.pt", weights_only=True)  # plain types only
    assert ckpt["epoch"] == 3 and ckpt["model_args"]["name"] == "ShallowFBCSPNet"
    assert {"model", "optimizer", "scheduler", "sampler", "rng", "config", "history"} <= set(ckpt)
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == summary["best_epoch"]
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "samples/s" in out and "data wait" in out


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for k in sorted(state, key=str):
            yield from _tensors(state[k])
    elif isinstance(state, list | tuple):
        for v in state:
            yield from _tensors(v)


def test_resume_continues_bit_for_bit(cache, tmp_path):
    # Workers and every augmentation on: the loader state must survive the restart too.
    cfg = cfg_with(
        "train.num_workers=2",
        "train.augment.random_crop=true",
        "train.augment.amplitude_scale=0.2",
        "train.augment.channel_dropout=0.1",
        "train.balanced_sampling=true",
    )
    train(cache, tmp_path / "straight", cfg)
    train(cache, tmp_path / "split", cfg_with(*[], "train.epochs=1", "train.num_workers=2",
          "train.augment.random_crop=true", "train.augment.amplitude_scale=0.2",
          "train.augment.channel_dropout=0.1", "train.balanced_sampling=true"))  # fmt: skip
    with pytest.raises(BrainpipeError, match="--resume"):
        train(cache, tmp_path / "split", cfg)  # a run dir with a run needs --resume
    train(cache, tmp_path / "split", cfg, resume=True)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model", "optimizer"):
        ta, tb = list(_tensors(a[key])), list(_tensors(b[key]))
        assert len(ta) == len(tb) > 0
        assert all(torch.equal(x, y) for x, y in zip(ta, tb, strict=True)), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert ra["train"] == rb["train"] and ra["eval"] == rb["eval"]
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    # Resuming a finished run only rewrites the summary.
    s = train(cache, tmp_path / "split", cfg, resume=True)
    assert s["epochs"] == 2


def test_resume_refuses_a_changed_split(cache, tmp_path):
    train(cache, tmp_path / "run", cfg_with("train.epochs=1"))
    with pytest.raises(BrainpipeError, match="train.val_fraction"):
        train(cache, tmp_path / "run", cfg_with("train.val_fraction=0.4"), resume=True)


def test_other_window_than_the_build(cache, tmp_path):
    s = train(
        cache,
        tmp_path / "run",
        cfg_with("window.seconds=3", "window.stride_seconds=1", "train.epochs=1"),
    )
    assert s["model"]["kwargs"]["n_times"] == 150
    assert s["windows"]["train"] > 200  # overlapping windows from the same signal


def test_tusz_metrics_and_no_validation(tmp_path):
    cfg = cfg_with("train.val_fraction=0", "train.epochs=1")
    path = seizure_cache(tmp_path / "tusz.h5", cfg)
    s = train(path, tmp_path / "run", cfg)
    assert {"sensitivity", "specificity"} <= set(s["eval"])
    assert s["val"] == {} and s["windows"]["val"] == 0 and s["best_epoch"] == 1


def test_cli_train(cache, tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text(
        textwrap.dedent(
            """
            preprocess: {sfreq: 50.0, h_freq: 20.0}
            window: {seconds: 2.0, stride_seconds: 2.0}
            train:
              epochs: 1
              batch_size: 32
              num_workers: 0
              device: cpu
              model_kwargs: {n_filters_time: 8, n_filters_spat: 8, pool_time_length: 10, pool_time_stride: 5}
            """
        )
    )
    argv = [
        "train",
        "--cache",
        str(cache),
        "--run-dir",
        str(tmp_path / "run"),
        "--config",
        str(conf),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "eval: " in out and "balanced_accuracy=" in out
    assert main(argv) == 1  # the run dir is taken
    assert "--resume" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Bad input: one BrainpipeError, before any work
# ---------------------------------------------------------------------------------------------


def _version(path: Path, value: int) -> Path:
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = value
    return path


@pytest.mark.parametrize(
    "case, match",
    [
        ("model=ShallowFBCNet", "did you mean ShallowFBCSPNet"),
        ("model=NoSuchNet", "valid names include .*Deep4Net"),
        ("kwargs", "cannot build"),
        ("small_window", "cannot build it for windows of 4 channels x 100 samples"),
        ("eval_split", "no recordings in split 'test'"),
        ("preprocess", r"preprocess.sfreq=50.0 \(config: 100.0\)"),
        ("version", "format version 99"),
        ("cuda", "train.device=cuda"),
        ("val", "leaves no validation subject"),
        ("one_class", "only class"),
        ("resume", "nothing to resume"),
        ("wandb", "needs wandb"),
    ],
)
def test_bad_input_fails_before_any_work(cache, tmp_path, case, match):
    run = tmp_path / "run"
    path, overrides, resume = cache, [], False
    if case.startswith("model="):
        overrides = [f"train.{case}", "train.model_kwargs={}"]
    elif case == "kwargs":
        overrides = ["train.model_kwargs={no_such_argument: 1}"]
    elif case == "small_window":
        # braindecode 1.8.1's Deep4Net fits 100 samples; a 4-s kernel does not.
        overrides = ["train.model_kwargs={filter_time_length: 200}"]
    elif case == "eval_split":
        overrides = ["train.eval_split=test"]
    elif case == "preprocess":
        overrides = ["preprocess.sfreq=100", "preprocess.h_freq=40"]
    elif case == "version":
        path = _version(make_cache(tmp_path / "v.h5"), 99)
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        overrides = ["train.device=cuda"]
    elif case == "val":
        path = make_cache(
            tmp_path / "few.h5", [("a", "train", 0), ("b", "train", 1), ("c", "eval", 0)]
        )
    elif case == "one_class":
        path = make_cache(
            tmp_path / "one.h5", [(f"s{i}", "train", 0) for i in range(6)] + [("e", "eval", 0)]
        )
    elif case == "resume":
        resume = True
    elif case == "wandb":
        pytest.importorskip("importlib").util.find_spec("wandb") and pytest.skip("wandb installed")
        overrides = ["train.wandb_project=brainpipe"]
    with pytest.raises(BrainpipeError, match=match):
        train(path, run, cfg_with(*overrides), resume=resume)
    assert not run.exists() or not any(run.iterdir())


def test_model_args_fill_the_data_shape():
    args = model_args("EEGNetv4", {"F1": 4}, n_chans=19, n_times=400, n_outputs=2, sfreq=100.0)
    kw = args["kwargs"]
    assert kw["n_chans"] == 19 and kw["n_times"] == 400 and kw["n_outputs"] == 2 and kw["F1"] == 4
    assert kw["final_conv_length"] == "auto"


# ---------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------


def test_metrics_per_window_and_per_recording():
    labels = np.array([0, 0, 0, 1, 1, 1])
    rec = np.array([0, 0, 1, 2, 2, 3])
    p1 = np.array([0.1, 0.6, 0.2, 0.9, 0.4, 0.8])  # one error in each class
    probs = np.stack([1 - p1, p1], 1)
    m = compute_metrics(probs, labels, rec, "abnormal")
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["auroc"] == pytest.approx(8 / 9)
    assert m["recording_balanced_accuracy"] == 1.0  # means 0.35, 0.2 | 0.65, 0.8
    assert m["n_recordings"] == 4 and m["n_windows"] == 6
    assert m["loss"] == pytest.approx(-np.log(np.where(labels == 1, p1, 1 - p1)).mean())
    assert "sensitivity" not in m
    t = compute_metrics(probs, labels, rec, "seizure")
    assert t["sensitivity"] == pytest.approx(2 / 3) and t["specificity"] == pytest.approx(2 / 3)
    one = compute_metrics(probs[:3], labels[:3], rec[:3], "abnormal")
    assert math.isnan(one["auroc"]) and one["balanced_accuracy"] == pytest.approx(2 / 3)
    three = compute_metrics(np.eye(3)[[0, 1, 2, 2]], np.array([0, 1, 2, 2]), np.arange(4), "")
    assert three["balanced_accuracy"] == 1.0 and three["auroc"] == 1.0


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] < f[5] < f[9] <= 1.0
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[10] == pytest.approx(1.0) and f[-1] < 0.01
    assert lr_factor(0, 0, 10) == 1.0


# ---------------------------------------------------------------------------------------------
# DDP: torchrun with two CPU processes (gloo)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(cache, tmp_path):
    script = tmp_path / "ddp_train.py"
    overrides = FAST + ["train.epochs=2"]
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os
            from helpers import small_config
            from brainpipe.training.train import train
            s = train({str(cache)!r}, {str(tmp_path / "run")!r}, small_config(*{overrides!r}))
            with open({str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.json", "w") as f:
                json.dump({{"world_size": s["world_size"], "eval": s["eval"]}}, f)
            """
        )
    )
    # helpers (small_config) is found through PYTHONPATH, as pytest finds it for this module.
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    # Both ranks gathered the same full eval set, so they report the same numbers.
    assert ranks[0]["eval"] == ranks[1]["eval"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["world_size"] == 2
    assert summary["eval"]["n_windows"] == summary["windows"]["eval"]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert len(ckpt["rng"]) == 2 and ckpt["world_size"] == 2
    assert proc.stdout.count("epoch 2/2") == 1  # rank 0 logs, rank 1 does not


def test_progress_bar_only_on_a_terminal(monkeypatch):
    # `docker compose up train` and redirected runs log to a pipe: one line per epoch, no bar.
    import io

    from tqdm import tqdm

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_bar_disabled(is_main=False) is True
    pipe = io.StringIO()
    for _ in tqdm(range(3), disable=progress_bar_disabled(is_main=True), file=pipe):
        pass
    assert pipe.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    for _ in tqdm(range(3), disable=progress_bar_disabled(is_main=True), file=term):
        pass
    assert "3/3" in term.getvalue()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_bar_disabled(is_main=True) is True
