"""The shipped scripts/slurm/ chain, submitted to the real single-node Slurm with the real commands.

A synthetic corpus is indexed here; `submit.sh` then submits the `build-cache --shard` array, the
`cache-set` job after it and a 2-process gloo training through `train.sbatch` / torchrun, all
running `python -m brainpipe` from this checkout. Kept small: 2 cores on a CI runner.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from brainpipe.cachefile import CacheReader
from brainpipe.cacheset import CacheSetReader
from brainpipe.cli import main

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "slurm"

# Tiny and quick on 2 cores: a 2 s window at 50 Hz, a small ShallowFBCSPNet, one epoch.
CONFIG = """\
corpus: {layout: tuab, extensions: [.edf]}
preprocess: {montage: referential, sfreq: 50.0, l_freq: 0.5, h_freq: 20.0, normalize: zscore}
window: {seconds: 2.0, stride_seconds: 2.0}
cache: {dtype: float16, workers: 1, task: abnormal}
train:
  model: ShallowFBCSPNet
  model_kwargs: {n_filters_time: 8, n_filters_spat: 8, pool_time_length: 10, pool_time_stride: 5}
  epochs: 1
  batch_size: 32
  num_workers: 0
  device: cpu
  val_fraction: 0.0
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(index, config) of a synthetic TUAB corpus of 4 subjects."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "tiny.yaml").write_text(CONFIG)
    argv = ["synth", "--layout", "tuab", "--out", str(d / "raw"), "--n-subjects", "4"]
    assert main([*argv, "--duration", "20", "40", "--seed", "1"]) == 0
    argv = ["index", "--raw", str(d / "raw"), "--index", str(d / "index.npz")]
    assert main([*argv, "--config", str(d / "tiny.yaml")]) == 0
    return d / "index.npz", d / "tiny.yaml"


def test_scripts_are_valid_bash():
    for p in sorted([*SCRIPTS.glob("*.sh"), *SCRIPTS.glob("*.sbatch")]):
        r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True, check=False)
        assert r.returncode == 0, f"{p.name}: {r.stderr}"


def test_submit_builds_shards_writes_the_set_and_trains_on_it(slurm, corpus, tmp_path):
    index, config = corpus
    env = {
        **slurm.env,
        "BRAINPIPE": f"{sys.executable} -m brainpipe",
        "TORCHRUN": str(Path(sys.executable).with_name("torchrun")),
        "PYTHON": sys.executable,
        "TQDM_DISABLE": "1",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    out, run = tmp_path / "cache", tmp_path / "run"
    cmd = [str(SCRIPTS / "submit.sh"), "--index", str(index), "--config", str(config)]
    cmd += ["--out", str(out), "--per-shard", "2", "--train", str(run), "--nproc-per-node", "2"]
    cmd += ["--", "--cpus-per-task=1"]  # the scripts ask 8 CPUs; the test node has 4
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    jobs = [int(j) for j in re.findall(r"^[a-z -]+: (\d+)", r.stdout, re.M)]
    assert len(jobs) == 3, r.stdout
    n = int(re.search(r"\((\d+) tasks\)", r.stdout).group(1))
    assert 2 <= n <= 4  # ceil(recordings / 2), capped at the 4 subjects
    states = slurm.wait(*jobs, timeout=420)
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(tmp_path.rglob("*.out")))
    assert set(states.values()) == {"COMPLETED"}, (states, logs, slurm.logs())

    shards = [out / f"shard-{i}-of-{n}.h5" for i in range(n)]
    subjects: list[set[str]] = []
    for i, p in enumerate(shards):
        with CacheReader(p) as c:
            assert c.attrs["shard"] == f"{i}/{n}"
            subjects.append(set(c.recordings["subject"].tolist()))
    assert sum(len(s) for s in subjects) == len(set().union(*subjects)) == 4  # none split
    with CacheSetReader(out / "set.json") as s:
        assert [m.path for m in s.members] == shards
        n_windows = len(s.windows["start"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 1
    assert summary["cache"] == str(out / "set.json")
    assert sum(summary["windows"].values()) <= n_windows
    assert (run / "last.pt").exists()


def test_cache_set_job_names_a_missing_shard(slurm, tmp_path):
    (tmp_path / "shard-0-of-2.h5").write_text("x")
    j = slurm.sbatch(
        f"--export=ALL,BP_OUT={tmp_path},BP_SHARDS=2",
        "-o",
        f"{tmp_path}/set.log",
        str(SCRIPTS / "cache_set.sbatch"),
    )
    assert slurm.wait(j)[j] == "FAILED"
    assert (tmp_path / "set.log").read_text().strip() == (
        f"{tmp_path}/shard-1-of-2.h5: missing; did array task 1 fail? Resubmit it: sbatch --array=1 ..."
    )


PROBE = """
import os, sys, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(t)
with open(os.path.join(sys.argv[1], f"rank-{dist.get_rank()}.txt"), "w") as f:
    f.write(f"{dist.get_rank()} {dist.get_world_size()} {t.item():g}")
dist.destroy_process_group()
"""


def test_train_sbatch_runs_two_gloo_processes_through_torchrun(slurm, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    torchrun = Path(sys.executable).with_name("torchrun")
    assert torchrun.exists()
    env = (
        f"ALL,BP_NPROC_PER_NODE=2,TORCHRUN={torchrun},PYTHONPATH={os.environ.get('PYTHONPATH', '')}"
    )
    j = slurm.sbatch(
        f"--export={env}",
        "--cpus-per-task=2",
        "-o",
        f"{tmp_path}/train.log",
        str(SCRIPTS / "train.sbatch"),
        str(probe),
        str(tmp_path),
    )
    states = slurm.wait(j, timeout=240)
    log = (tmp_path / "train.log").read_text()
    assert states[j] == "COMPLETED", log
    assert log.splitlines()[0].startswith("bp-train: 1 node(s) x 2 process(es), rendezvous ")
    assert sorted(p.read_text() for p in tmp_path.glob("rank-*.txt")) == ["0 2 3", "1 2 3"]


def test_grid_runs_one_array_task_per_cell_then_aggregates(slurm, tmp_path):
    """`grid.sh --seeds 0,1 --folds 2`: 4 array tasks, each `train --cell I --resume`, then the
    aggregate job writes the parent's summary.json (mean and std over the 4 runs)."""
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    config = tmp_path / "tiny.yaml"
    argv = ["synth", "--layout", "tuab", "--out", str(tmp_path / "raw"), "--n-subjects", "8"]
    assert main([*argv, "--duration", "20", "30", "--seed", "2"]) == 0
    index, cache = tmp_path / "index.npz", tmp_path / "cache.h5"
    assert (
        main(
            [
                "index",
                "--raw",
                str(tmp_path / "raw"),
                "--index",
                str(index),
                "--config",
                str(config),
            ]
        )
        == 0
    )
    assert (
        main(["build-cache", "--index", str(index), "--cache", str(cache), "--config", str(config)])
        == 0
    )
    env = {
        **slurm.env,
        "BRAINPIPE": f"{sys.executable} -m brainpipe",
        "TQDM_DISABLE": "1",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    run = tmp_path / "grid"
    cmd = [str(SCRIPTS / "grid.sh"), "--cache", str(cache), "--config", str(config)]
    cmd += ["--run-dir", str(run), "--seeds", "0,1", "--folds", "2"]
    cmd += ["--train-args", "--fold-all-splits", "--", "--cpus-per-task=1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "(4 tasks)" in r.stdout, r.stdout
    jobs = [int(j) for j in re.findall(r"^[a-z -]+: (\d+)", r.stdout, re.M)]
    assert len(jobs) == 2, r.stdout
    states = slurm.wait(*jobs, timeout=420)
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(run.glob("*.out")))
    assert set(states.values()) == {"COMPLETED"}, (states, logs, slurm.logs())
    cells = ["seed-0-fold-0", "seed-0-fold-1", "seed-1-fold-0", "seed-1-fold-1"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["protocol"]["runs"] == cells and summary["protocol"]["seeds"] == [0, 1]
    bacc = summary["eval"]["balanced_accuracy"]
    assert {"mean", "std"} <= set(bacc) and bacc["n"] == 4
    held = [set(summary["runs"][f"seed-0-fold-{f}"]["fold_subjects"]) for f in (0, 1)]
    assert not held[0] & held[1] and len(held[0] | held[1]) == 8  # every subject, once
    for c in cells:
        assert json.loads((run / c / "summary.json").read_text())["epochs"] == 1
