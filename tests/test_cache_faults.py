"""The faults a long build really meets, replayed with real signals on real processes.

Worker killed by the OOM killer, Ctrl-C to the process group, `docker stop` (SIGTERM), two builds
on one cache path, kill -9 during finalize, a full disk during finalize. `scripts/chaos.sh` runs
this file; every test here is also part of the normal suite (marked slow).
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import SMOKE, assert_same_cache, signal_of, small_layout

from brainpipe.cache import build_cache, verify_cache
from brainpipe.cachefile import CacheReader, CacheWriter
from brainpipe.config import load_config
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index
from brainpipe.synthetic import make_corpus

pytestmark = pytest.mark.slow
ENV = {**os.environ, "TQDM_DISABLE": "1"}


def smoke(*overrides):
    return load_config(SMOKE, list(overrides))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Recordings long enough that a worker is busy for a while with each."""
    d = tmp_path_factory.mktemp("faults")
    make_corpus(d / "raw", "tuab", n_subjects=5, seed=5, duration_s=(150.0, 240.0))
    build_index(d / "raw", d / "index.npz", smoke(), progress=False)
    build_cache(d / "index.npz", d / "ref.h5", smoke(), workers=1, progress=False)
    return d


def build_cmd(corpus, cache, *extra):
    return [
        sys.executable, "-m", "brainpipe", "build-cache", "--index", str(corpus / "index.npz"),
        "--cache", str(cache), "--config", str(SMOKE), *extra,
    ]  # fmt: skip


def journal_lines(cache: Path) -> int:
    j = cache.with_name(cache.name + ".journal")
    try:
        return sum(1 for ln in j.read_text().splitlines() if ln.split("\t")[0].isdigit())
    except FileNotFoundError:
        return 0


def wait_for(cond, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def workers_of(pid: int) -> list[int]:
    """Child processes that are build workers (not multiprocessing's resource tracker)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for c in (task / "children").read_text().split():
                cmd = Path(f"/proc/{c}/cmdline").read_bytes()
                if b"resource_tracker" not in cmd:
                    out.append(int(c))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _as_from_a_terminal() -> None:
    # A test run started in the background of a non-interactive shell (`make test &`) inherits
    # SIGINT ignored, and Python keeps it ignored: the build would never see Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def running(cmd, **kw):
    proc = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_as_from_a_terminal, **kw,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL) if kw.get("start_new_session") else proc.kill()
            proc.communicate()


# --- worker killed, Ctrl-C, SIGTERM --------------------------------------------------------


def test_a_sigkilled_worker_is_reported_and_its_recording_retried(corpus, tmp_path):
    cache = tmp_path / "c.h5"
    with running(build_cmd(corpus, cache, "--workers", "2"), start_new_session=True) as proc:
        wait_for(lambda: len(workers_of(proc.pid)) == 2, what="two workers")
        victim = workers_of(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        t0 = time.time()
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("the build waits forever for a killed worker")
    assert proc.returncode == 0, err
    assert time.time() - t0 < 90
    # one line naming the recording that was in flight and what happened to it
    lines = [ln for ln in err.splitlines() if "killed" in ln]
    assert len(lines) == 1, err
    assert f"{victim}" in lines[0] and "SIGKILL" in lines[0] and ".edf" in lines[0]
    assert "retried" in lines[0] or "retrying" in lines[0]
    assert "Traceback" not in err
    assert_same_cache(corpus / "ref.h5", cache)


@pytest.mark.skipif(
    __import__("multiprocessing").get_start_method() != "fork",
    reason="the patched job reaches the workers only through fork",
)
def test_a_recording_that_kills_every_worker_is_skipped_with_the_reason(
    corpus, tmp_path, monkeypatch, capsys
):
    import brainpipe.cache.build as cache_mod
    from brainpipe.indexfile import Index

    victim = str(Index.load(corpus / "index.npz").path[2])
    real = cache_mod._worker

    def oom(job):  # what the OOM killer does to a worker holding one huge recording
        if job[1].endswith(victim):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(job)

    monkeypatch.setattr(cache_mod, "_worker", oom)
    res = build_cache(corpus / "index.npz", tmp_path / "c.h5", smoke(), workers=2, progress=False)
    assert dict(res.skipped) == {
        victim: "worker killed (SIGKILL) twice while preprocessing it; out of memory?"
    }
    assert res.n_written == len(Index.load(corpus / "index.npz")) - 1
    err = capsys.readouterr().err.splitlines()
    assert [ln.split(victim)[1] for ln in err if "killed" in ln] == [
        "; retrying it in a fresh worker",
        "; skipping it (its second worker died too)",
    ]


def test_ctrl_c_to_the_process_group_stops_promptly_and_resumes(corpus, tmp_path):
    cache = tmp_path / "c.h5"
    cmd = build_cmd(corpus, cache, "--workers", "2")
    with running(cmd, start_new_session=True) as proc:
        wait_for(lambda: journal_lines(cache) >= 1, what="one recording written")
        workers = workers_of(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("Ctrl-C did not stop the build")
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        f"brainpipe build-cache: interrupted; re-run to resume (the partial cache {cache}.partial is kept)"
    ]
    wait_for(lambda: not any(alive(w) for w in workers), timeout=10, what="workers to exit")
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and "resumed after" in r.stdout, r.stderr
    assert_same_cache(corpus / "ref.h5", cache)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_behaves_like_ctrl_c(corpus, tmp_path, workers):
    cache = tmp_path / "c.h5"
    cmd = build_cmd(corpus, cache, "--workers", workers)
    with running(cmd, start_new_session=True) as proc:
        wait_for(lambda: journal_lines(cache) >= 1, what="one recording written")
        children = workers_of(proc.pid)
        proc.send_signal(signal.SIGTERM)  # `docker stop`: the main process only
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM did not stop the build")
    assert proc.returncode == 130, err
    assert "interrupted; re-run to resume" in err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    wait_for(lambda: not any(alive(w) for w in children), timeout=10, what="workers to exit")
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0 and "resumed after" in r.stdout, r.stderr
    assert_same_cache(corpus / "ref.h5", cache)


# --- two builds on one path ----------------------------------------------------------------


def test_a_second_build_on_the_same_path_fails_at_once_naming_the_first(corpus, tmp_path):
    cache = tmp_path / "c.h5"
    with running(build_cmd(corpus, cache, "--workers", "1"), start_new_session=True) as first:
        wait_for(lambda: journal_lines(cache) >= 1, what="the first build to start writing")
        for force in (False, True):
            t0 = time.time()
            with pytest.raises(BrainpipeError, match=rf"being built by process {first.pid}\b"):
                build_cache(
                    corpus / "index.npz", cache, smoke(), workers=1, force=force, progress=False
                )
            assert time.time() - t0 < 10
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_same_cache(corpus / "ref.h5", cache)


# --- finalize: kill -9 at real points, torn metadata, disk full ------------------------------

FINALIZE_CHILD = """
import sys
import numpy as np
from brainpipe.cachefile import CacheWriter
from tests.helpers import small_layout, signal_of

layout = small_layout(lengths=[2000] * 300, n_channels=1)
with CacheWriter(sys.argv[1], layout) as w:
    for row in w.pending_rows():
        if row % 7 == 3:
            w.skip(row, "unreadable: test")
        else:
            w.write(row, signal_of(layout, row))
    print("finishing", flush=True)
    w.finish(window=4, stride=1, label_overlap=0.5)
"""


def finish_all(path, layout):
    with CacheWriter(path, layout) as w:
        resumed = w.resumed
        for row in w.pending_rows():
            if row % 7 == 3:
                w.skip(row, "unreadable: test")
            else:
                w.write(row, signal_of(layout, row))
        w.finish(window=4, stride=1, label_overlap=0.5)
    return resumed


@pytest.fixture(scope="module")
def big_ref(tmp_path_factory):
    d = tmp_path_factory.mktemp("finalize")
    layout = small_layout(lengths=[2000] * 300, n_channels=1)
    finish_all(d / "ref.h5", layout)
    return d / "ref.h5", layout


@pytest.mark.parametrize("delay_ms", [0, 5, 20, 60, 120, 250])
def test_kill_9_during_finalize_resumes_without_rewriting_signals(big_ref, tmp_path, delay_ms):
    ref, layout = big_ref
    path = tmp_path / "c.h5"
    root = Path(__file__).parents[1]
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(root), ENV.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", FINALIZE_CHILD, str(path)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
    )
    assert proc.stdout.readline() == "finishing\n"
    time.sleep(delay_ms / 1000)
    proc.kill()
    proc.wait()
    if path.exists():  # finished before the kill: nothing to resume
        assert_same_cache(ref, path)
        return
    with CacheWriter(path, layout) as w:
        # every row stays done: finalize is redone from the journal, no signal is rewritten
        assert w.pending_rows() == [] and w.resumed == len(layout.recordings["length"])
        w.finish(window=4, stride=1, label_overlap=0.5)
    assert_same_cache(ref, path)


def test_torn_metadata_of_a_finalizing_partial_is_redone_from_the_journal(big_ref, tmp_path):
    ref, layout = big_ref
    path = tmp_path / "c.h5"
    partial = tmp_path / "c.h5.partial"

    def stop(counts):
        raise RuntimeError("stop before the rename")

    with pytest.raises(RuntimeError), CacheWriter(path, layout) as w:
        for row in w.pending_rows():
            if row % 7 == 3:
                w.skip(row, "unreadable: test")
            else:
                w.write(row, signal_of(layout, row))
        w.finish(window=4, stride=1, label_overlap=0.5, check=stop)
    # a torn write of the tables: the file's end (where finalize put them) is garbage
    size = partial.stat().st_size
    with open(partial, "r+b") as f:
        f.seek(size - 200_000)
        f.write(os.urandom(200_000))
    with pytest.raises(BrainpipeError):
        CacheReader(partial)
    with CacheWriter(path, layout) as w:
        assert w.pending_rows() == []
        w.finish(window=4, stride=1, label_overlap=0.5)
    assert_same_cache(ref, path)


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)])
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs (needs root)")


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount"), reason="mounts a small tmpfs: needs root"
)
def test_disk_full_during_finalize_is_one_line_and_resumes(tmp_path):
    mnt = tmp_path / "small"
    # 200,000 rows of 1 channel: 400 kB of signals; the window table (stride 1) is ~2.6 MB
    _mount_tmpfs(mnt, "1200k")
    try:
        child = """
import sys
from brainpipe.cachefile import CacheWriter
from brainpipe.errors import BrainpipeError
from tests.helpers import small_layout, signal_of

layout = small_layout(lengths=[20000] * 10, n_channels=1)
try:
    with CacheWriter(sys.argv[1], layout) as w:
        for row in w.pending_rows():
            w.write(row, signal_of(layout, row))
        w.finish(window=4, stride=1, label_overlap=0.5)
except BrainpipeError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
"""
        root = Path(__file__).parents[1]
        env = {**ENV, "PYTHONPATH": os.pathsep.join([str(root), ENV.get("PYTHONPATH", "")])}
        r = subprocess.run(
            [sys.executable, "-c", child, str(mnt / "c.h5")],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]
        assert "No space left on device" in r.stderr and "re-run to resume" in r.stderr
        assert not (mnt / "c.h5").exists() and (mnt / "c.h5.partial").exists()
        # more room: the same build resumes with every signal row kept
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        layout = small_layout(lengths=[20000] * 10, n_channels=1)
        with CacheWriter(mnt / "c.h5", layout) as w:
            assert w.pending_rows() == []
            w.finish(window=4, stride=1, label_overlap=0.5)
        with CacheReader(mnt / "c.h5") as cr:
            np.testing.assert_array_equal(
                cr.read(20000, 20000), signal_of(layout, 1).astype(np.float16)
            )
            assert len(cr.windows["start"]) == 10 * (20000 - 4 + 1)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_finished_build_leaves_no_debris(corpus, tmp_path):
    cache = tmp_path / "c.h5"
    build_cache(corpus / "index.npz", cache, smoke(), workers=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]
    assert verify_cache(cache, n_windows=2).ok
