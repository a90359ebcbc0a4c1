"""A real single-node Slurm cluster on loopback, started for the tests and torn down after.

The `slurm` fixture installs Debian's `slurmctld slurmd slurm-client munge` when missing
(apt-get, needs root), writes a one-node `slurm.conf` whose state, spool, logs and munge socket
all live in a temp dir, starts munged + slurmctld + slurmd as child processes of the test (no
systemd, no cgroups: proctrack/linuxproc, task/none) and waits until the node is idle. Clients
(`sbatch`, `srun`, `squeue`) find the cluster through `SLURM_CONF`, which `Slurm.env` carries.

Without root or apt-get the fixture FAILS with one line: a cluster test that skips is not a pass.
Run with `make test-cluster` (the default `pytest` run deselects the `cluster` marker).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scontrol", "munged")
# Declared CPUs (slurmd trusts them with config_overrides): enough for a 2-process step and a
# few array tasks at once on a 2-core CI runner.
NODE_CPUS = 4
# The node is named after the host, as on a real cluster: jobs resolve `scontrol show hostnames`.
NODE_NAME = socket.gethostname()


@dataclass
class Slurm:
    """A running one-node cluster: `env` for clients, `run` for client commands."""

    root: Path
    conf: Path
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        r = subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def sbatch(self, *args: str) -> int:
        """Submit; return the job id (`--parsable` prints `id` or `id;cluster`)."""
        return int(self.run("sbatch", "--parsable", *args).strip().split(";")[0])

    def wait(self, *job_ids: int, timeout: float = 120) -> dict[int, str]:
        """Wait until the jobs (all array tasks) left the queue; return job id -> final state(s)."""
        deadline = time.monotonic() + timeout
        ids = ",".join(str(j) for j in job_ids)
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-j", ids, check=False).strip():
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"jobs {ids} still queued after {timeout} s:\n{self.logs()}")
        out = {}
        for j in job_ids:
            # Without accounting, `scontrol show job` keeps finished jobs for MinJobAge seconds.
            text = self.run("scontrol", "-o", "show", "job", str(j))
            # An array prints one line per task; its state is the set of their states.
            states = {w.split("=", 1)[1] for w in text.split() if w.startswith("JobState=")}
            out[j] = ",".join(sorted(states))
        return out

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.root.glob("*.log"))
        )


def _fail(msg: str) -> None:
    pytest.fail(f"slurm cluster: {msg}", pytrace=False)


def _bin(name: str) -> str | None:
    # The daemons live in /usr/sbin, which a non-login PATH often lacks.
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def ensure_installed() -> None:
    """apt-get the Debian packages when a program is missing; fail with one line if we cannot."""
    if all(_bin(b) for b in BINARIES):
        return
    if os.geteuid() != 0:
        _fail(f"needs root to apt-get install {' '.join(PACKAGES)} (running as uid {os.geteuid()})")
    if not _bin("apt-get"):
        _fail(f"needs apt-get to install {' '.join(PACKAGES)}; not a Debian/Ubuntu system")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:  # stale package lists are the usual cause in a fresh container
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        _fail(f"apt-get install {' '.join(PACKAGES)} failed: {last}")
    missing = [b for b in BINARIES if not _bin(b)]
    if missing:
        _fail(f"{', '.join(missing)} still missing after apt-get install {' '.join(PACKAGES)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_conf(root: Path) -> Path:
    for d in ("ctld", "spool"):
        (root / d).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    with open("/proc/meminfo") as f:  # declared memory, so jobs with --mem/--mem-per-cpu fit
        mem_mb = int(f.readline().split()[1]) // 1024 * 9 // 10
    conf = root / "slurm.conf"
    conf.write_text(
        f"""\
ClusterName=bptest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/ctld
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={NODE_NAME} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={NODE_NAME} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        # Own process group, so teardown signals the daemon and whatever it forked, nothing else.
        return subprocess.Popen(
            cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for(what: str, ok, cluster: Slurm, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in cluster.procs:
            if p.poll() is not None:
                _fail(f"{p.args[0]} exited ({p.returncode}) while waiting for {what}")
        if ok():
            return
        time.sleep(0.3)
    _fail(f"{what} not reached after {timeout} s; logs under {cluster.root}")


def start(root: Path) -> Slurm:
    ensure_installed()
    conf = write_conf(root)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Slurm(root=root, conf=conf, env=env)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    cluster.procs.append(
        _start(
            [
                _bin("munged"),
                "-F",
                "-f",
                f"--socket={root}/munge.socket",
                f"--key-file={key}",
                f"--pid-file={root}/munged.pid",
                f"--seed-file={root}/munge.seed",
                f"--log-file={root}/munged.log",
            ],
            env,
            root / "munged.out.log",
        )
    )
    _wait_for("munge socket", (root / "munge.socket").exists, cluster, 20)
    cluster.procs.append(
        _start([_bin("slurmctld"), "-D", "-i", "-f", str(conf)], env, root / "ctld.out.log")
    )
    cluster.procs.append(
        _start([_bin("slurmd"), "-D", "-N", NODE_NAME, "-f", str(conf)], env, root / "d.out.log")
    )

    def idle() -> bool:
        out = cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False).strip()
        return out.startswith("idle")

    _wait_for("node idle", idle, cluster)
    return cluster


def stop(cluster: Slurm) -> None:
    for p in reversed(cluster.procs):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in cluster.procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[Slurm]:
    # The munge socket path must stay under 108 bytes, so a short temp root rather than pytest's.
    root = Path(tmp_path_factory.mktemp("slurm", numbered=True))
    if len(str(root)) > 80:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="bp-slurm-"))
    t0 = time.monotonic()
    cluster = start(root)
    print(f"slurm cluster up in {time.monotonic() - t0:.1f} s at {root}")
    try:
        yield cluster
    finally:
        stop(cluster)
