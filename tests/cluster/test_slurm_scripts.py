"""The shipped scripts/slurm/ chain, submitted to the real single-node Slurm.

`brainpipe build-cache --shard` and `brainpipe cache-set` come in round two of issue 15, so the
chain test runs a stand-in `brainpipe` (BRAINPIPE=...) that records its arguments and writes the
files the real one would; the training launch runs the real torchrun with 2 gloo processes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from brainpipe.cli import main

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "slurm"

STUB = r"""#!/bin/bash
# Stand-in brainpipe: log the call, write the output file the real command would.
echo "$*" >> "$STUB_LOG"
cmd=$1; shift
while (( $# )); do
    case $1 in
        --cache) [[ $cmd == build-cache ]] && echo "shard $SLURM_ARRAY_TASK_ID" > "$2" ;;
        --out) out=$2 ;;
        --shard|--index|--config|--workers) ;;
        *) [[ $cmd == cache-set && $1 == *.h5 ]] && members+=("$1") ;;
    esac
    shift
done
if [[ $cmd == cache-set ]]; then printf '%s\n' "${members[@]}" > "$out"; fi
"""


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    assert main(["synth", "--layout", "tuab", "--out", str(d / "raw"), "--n-subjects", "3"]) == 0
    assert main(["index", "--raw", str(d / "raw"), "--index", str(d / "index.npz")]) == 0
    return d / "index.npz"


def stub(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    p.chmod(0o755)
    return p


def test_scripts_are_valid_bash():
    for p in sorted([*SCRIPTS.glob("*.sh"), *SCRIPTS.glob("*.sbatch")]):
        r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True, check=False)
        assert r.returncode == 0, f"{p.name}: {r.stderr}"


def test_submit_chains_array_then_cache_set_then_training(slurm, index, tmp_path):
    log = tmp_path / "calls.log"
    env = {
        **slurm.env,
        "BRAINPIPE": str(stub(tmp_path, "brainpipe", STUB)),
        "TORCHRUN": str(
            stub(tmp_path, "torchrun", '#!/bin/bash\necho "torchrun $*" >> "$STUB_LOG"\n')
        ),
        "STUB_LOG": str(log),
    }
    out, run = tmp_path / "cache", tmp_path / "run"
    cmd = [str(SCRIPTS / "submit.sh"), "--index", str(index), "--config", "configs/smoke.yaml"]
    cmd += ["--out", str(out), "--per-shard", "1", "--train", str(run), "--nproc-per-node", "2"]
    cmd += ["--", "--cpus-per-task=1"]  # the scripts ask 8 CPUs; the test node has 4
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    jobs = [int(j) for j in re.findall(r"^[a-z -]+: (\d+)", r.stdout, re.M)]
    assert len(jobs) == 3, r.stdout
    assert "(3 tasks)" in r.stdout  # 3 recordings in the index, 1 per shard
    states = slurm.wait(*jobs, timeout=180)
    assert set(states.values()) == {"COMPLETED"}, (states, slurm.logs())

    calls = log.read_text().splitlines()
    config = str(Path("configs/smoke.yaml").resolve())
    assert sorted(c for c in calls if c.startswith("build-cache")) == [
        f"build-cache --index {index} --cache {out}/shard-{i}-of-3.h5 --config {config} "
        f"--shard {i}/3 --workers 1"
        for i in range(3)
    ]
    shards = [f"{out}/shard-{i}-of-3.h5" for i in range(3)]
    assert f"cache-set --out {out}/set.json {' '.join(shards)}" in calls
    assert (out / "set.json").read_text().split() == shards
    (launch,) = [c for c in calls if c.startswith("torchrun")]
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(
        rf"torchrun --nnodes=1 --nproc-per-node=2 --rdzv-id=\d+ --rdzv-backend=c10d "
        rf"--rdzv-endpoint={host}:\d+ -m brainpipe train --cache {out}/set.json "
        rf"--config {config} --run-dir {run}",
        launch,
    ), launch
    # Order is what afterok promises: every shard before the set, the set before training.
    assert calls.index(launch) == len(calls) - 1
    assert all(c.startswith("build-cache") for c in calls[:3])


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
