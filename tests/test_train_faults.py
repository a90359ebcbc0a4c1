"""Faults a long training run meets (issue 16): a nearly full /dev/shm, kill -9 under
spawn/forkserver (orphaned workers, the ring left in /dev/shm, torn checkpoint temp files),
kill -9 while best.pt is written, resource-tracker noise at a normal exit. Each runs the real
`brainpipe train` in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import make_cache, small_config

from brainpipe.ring import RING_PREFIX, SHM_DIR, BatchRing, remove_stale_rings
from brainpipe.training.rundir import load_checkpoint

FAST = [
    "train.model_kwargs={n_filters_time: 8, n_filters_spat: 8, pool_time_length: 10, pool_time_stride: 5}",
    "train.device=cpu",
    "train.lr=0.003",
    "preprocess.sfreq=50",
    "preprocess.h_freq=20",
    "window.seconds=2",
    "window.stride_seconds=2",
]
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    # 19 channels, so a batch of 64 windows is 0.23 MiB and the shm sums below are not all slack.
    return make_cache(tmp_path_factory.mktemp("faults") / "c.h5", cfg=small_config(), n_channels=19)


def _script(tmp_path: Path, start_method: str = "fork") -> Path:
    """`brainpipe train` (the CLI's main) under a start method; argv after the script's name."""
    script = tmp_path / "run_train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import multiprocessing, sys
            if __name__ == "__main__":
                multiprocessing.set_start_method({start_method!r})
                from brainpipe.cli import main
                sys.exit(main(["train", *sys.argv[1:]]))
            """
        )
    )
    return script


def _args(cache: Path, run: Path, *overrides: str) -> list[str]:
    out = ["--cache", str(cache), "--run-dir", str(run)]
    for o in [*FAST, *overrides]:
        out += ["--set", o]
    return out


ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# 6. A nearly full /dev/shm: one line, or a smaller prefetch; never a hang
# ---------------------------------------------------------------------------------------------


def _in_small_shm(free_mib: float, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run `cmd` in a private mount namespace whose /dev/shm is a tmpfs with `free_mib` free."""
    fill = f"dd if=/dev/zero of=/dev/shm/fill bs=64k count={int((32 - free_mib) * 16)} 2>/dev/null"
    shell = f"mount -t tmpfs -o size=32m tmpfs /dev/shm && {fill} && exec {' '.join(cmd)}"
    try:
        return subprocess.run(
            ["unshare", "-m", "sh", "-c", shell],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("train hung with a nearly full /dev/shm")


def _needs_unshare() -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to mount a small /dev/shm")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no permission to create a mount namespace")


def test_nearly_full_shm_fails_in_one_line(cache, tmp_path):
    _needs_unshare()
    script = _script(tmp_path)
    cmd = [sys.executable, str(script), *_args(cache, tmp_path / "run", "train.batch_size=64",
           "train.num_workers=2", "train.epochs=1")]  # fmt: skip
    proc = _in_small_shm(0.5, [f"'{c}'" for c in cmd])
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "/dev/shm has 0 MiB free" in lines[0] and "--shm-size" in lines[0]
    assert "num_workers" in lines[0]


def test_shm_for_less_prefetch_shrinks_it(cache, tmp_path):
    _needs_unshare()
    script = _script(tmp_path)
    cmd = [sys.executable, str(script), *_args(cache, tmp_path / "run", "train.batch_size=64",
           "train.num_workers=2", "train.prefetch_factor=8", "train.epochs=1")]  # fmt: skip
    proc = _in_small_shm(7, [f"'{c}'" for c in cmd])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "train.prefetch_factor 8 -> " in proc.stdout
    assert (tmp_path / "run" / "summary.json").exists()


# ---------------------------------------------------------------------------------------------
# 7. kill -9: workers die with the trainer, the ring goes, torn .tmp files go; clean exits
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # whole training processes killed and restarted; `make test` runs it
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_kill_9_leaves_no_workers_and_no_ring(cache, tmp_path, method):
    script = _script(tmp_path, method)
    args = _args(cache, tmp_path / "run", "train.batch_size=16", "train.num_workers=2",
                 "train.epochs=1000")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            rings = list(SHM_DIR.glob(f"{RING_PREFIX}{proc.pid}-*"))
            if (
                rings
                and len(_descendants(proc.pid)) >= 3
                and (tmp_path / "run" / "last.pt").exists()
            ):
                break
            assert proc.poll() is None, "train ended early"
            time.sleep(0.2)
        else:
            pytest.fail("train did not start its workers")
        debris = _descendants(proc.pid)  # workers, resource tracker (and the fork server)
        (tmp_path / "run" / ".last.pt.tmp-999999").write_bytes(b"torn")  # as a kill leaves it
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in debris):
            time.sleep(0.2)
        left = [(p, Path(f"/proc/{p}/cmdline").read_bytes()[:90]) for p in debris if _alive(p)]
        assert not left, "processes outlived the killed trainer"
    finally:
        if proc.poll() is None:
            proc.kill()
    # The next run removes whatever is left (the ring, when the tracker died too) and torn files.
    again = subprocess.run(
        [sys.executable, str(_script(tmp_path)), *args[:-2], "--set", "train.epochs=1"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 1 and "pass --resume" in again.stderr  # the run dir holds a run
    assert not list(SHM_DIR.glob(f"{RING_PREFIX}{proc.pid}-*"))
    assert not list((tmp_path / "run").glob(".*.tmp-*"))


def test_stale_ring_of_a_dead_owner_is_removed(tmp_path):
    # A ring created by a process killed with -9 before anyone could unlink it.
    code = "from brainpipe.ring import BatchRing; import os; r = BatchRing(2, (4, 4)); print(r.name, flush=True); os.kill(os.getpid(), 9)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    name = proc.stdout.strip()
    assert name.startswith(RING_PREFIX)
    # The resource tracker may have removed it already; put one back as a tracker-less crash would.
    (SHM_DIR / name).write_bytes(b"\0" * 64)
    mine = BatchRing(2, (4, 4))
    try:
        assert name in remove_stale_rings()
        assert not (SHM_DIR / name).exists()
        assert (SHM_DIR / mine.name).exists()  # a live owner's ring stays
    finally:
        mine.close()


@pytest.mark.slow  # whole training processes killed and restarted; `make test` runs it
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_normal_exit_prints_no_resource_tracker_traceback(cache, tmp_path, method):
    script = _script(tmp_path, method)
    args = _args(cache, tmp_path / "run", "train.batch_size=64", "train.num_workers=2",
                 "train.epochs=1")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(script), *args], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "KeyError" not in proc.stderr, proc.stderr[-3000:]
    assert "leaked" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# 8. kill -9 while best.pt is written, then --resume
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # a training process killed and resumed; `make test` runs it
def test_kill_while_writing_best_then_resume_restores_it(cache, tmp_path):
    run = tmp_path / "run"
    # Without validation every epoch is the best. torch.save of epoch 2's best.pt kills the
    # process, as a kill -9 at that moment would.
    args = _args(cache, run, "train.num_workers=0", "train.epochs=2", "train.val_fraction=0")
    killer = tmp_path / "kill_at_best.py"
    killer.write_text(
        textwrap.dedent(
            f"""
            import os, sys, torch
            save, n_best = torch.save, []
            def dying_save(obj, f, *a, **k):
                if ".best.pt.tmp" in str(f):
                    n_best.append(1)
                    if len(n_best) == 2:
                        with open(f, "wb") as out:
                            out.write(b"torn")
                        os.kill(os.getpid(), 9)
                return save(obj, f, *a, **k)
            torch.save = dying_save
            from brainpipe.cli import main
            sys.exit(main(["train", *{args!r}]))
            """
        )
    )
    proc = subprocess.run([sys.executable, str(killer)], env=ENV, capture_output=True, timeout=300)
    assert proc.returncode == -9
    resume = [sys.executable, str(_script(tmp_path)), *args, "--resume"]
    resumed = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    best = load_checkpoint(summary["checkpoints"]["best"])
    assert best["epoch"] == summary["best_epoch"] == 2
    assert not list(run.glob(".*.tmp-*"))
    # A best.pt lost another way (an older brainpipe wrote last.pt first) comes back from last.pt
    # when the best epoch is the last one.
    (run / "best.pt").unlink()
    resumed = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(run / "best.pt")["epoch"] == 2


# ---------------------------------------------------------------------------------------------
# 19. Window tables that point past the end of /signals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["windows", "recordings"])
def test_windows_past_the_end_of_signals_fail_at_open(tmp_path, table):
    import h5py

    from brainpipe.cachefile import CacheReader
    from brainpipe.datasets import CacheWindowDataset
    from brainpipe.errors import BrainpipeError

    path = make_cache(tmp_path / "c.h5", cfg=small_config())
    with h5py.File(path, "r+") as f:
        n_rows = f["signals"].shape[0]
        if table == "windows":
            f["windows/start"][-1] = n_rows - 10
        else:
            f["recordings/offset"][-1] = n_rows
    # The reader refuses such a file when it opens (sizes checked against the file); the
    # dataset's own check covers readers that join several files (cache sets).
    with pytest.raises(BrainpipeError, match=r"c\.h5: .*(reach|extend) past the end"):
        CacheWindowDataset(CacheReader(path))


def test_shm_budget_without_a_mount_namespace(capsys):
    # The rule the two tests above exercise for real, where a small /dev/shm cannot be mounted.
    from brainpipe.errors import BrainpipeError
    from brainpipe.training.runtime import shm_prefetch

    mib = 2**20
    assert shm_prefetch(None, 4, 4, 20 * mib, True) == 4  # no /dev/shm (macOS): unchanged
    assert shm_prefetch(10 * mib, 0, 4, 20 * mib, True) == 4  # no workers: no shared memory
    assert shm_prefetch(10_000 * mib, 4, 4, 20 * mib, True) == 4
    assert shm_prefetch(500 * mib, 4, 4, 20 * mib, True) == 2
    assert "train.prefetch_factor 4 -> 2" in capsys.readouterr().out
    with pytest.raises(BrainpipeError, match=r"/dev/shm has 100 MiB free but 4 loader workers"):
        shm_prefetch(100 * mib, 4, 4, 20 * mib, True)
