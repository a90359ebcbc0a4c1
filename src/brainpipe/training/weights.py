"""Pretrained weights: found on disk only, loaded strictly, reported by digest.

`train.pretrained` is a directory in braindecode's `save_pretrained` layout (`config.json` +
`model.safetensors`; a directory with one other .safetensors file, or that file, also does: the
architecture then comes from config.json beside it or from train.model_kwargs) or a Hugging
Face repo id, which is looked up in the local Hugging Face
cache only: HF_HUB_OFFLINE is forced, so training never touches the network (fetch on a machine
with internet: `hf download braindecode/labram-pretrained --local-dir DIR`).

Loading is strict where braindecode's is not (`from_pretrained` loads with strict=False, so a
checkpoint with half its keys renamed loads silently): every backbone key must load; only the
task head (the contract's `head` prefixes) may start fresh, and the keys that did are reported
with the file's sha256. LaBraM's temporal embedding is sliced to a shorter window's patches.

    found = resolve_pretrained("braindecode/labram-pretrained")   # the .safetensors file
    arch = pretrained_kwargs(found)                                 # architecture from config.json
    report = load_pretrained(backbone, found, head=("final_layer",))
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from brainpipe.errors import BrainpipeError

# config.json keys that describe the data, not the architecture: the cache decides them.
DATA_KEYS = ("n_outputs", "n_chans", "chs_info", "n_times", "sfreq", "input_window_seconds")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
FETCH_HINT = "hf download {repo} --local-dir DIR on a machine with internet"


def resolve_pretrained(setting: str) -> Path:
    """The local weights file `train.pretrained` names (a directory, a .safetensors file or a
    Hugging Face repo id found in the local cache); never downloads."""
    path = Path(setting).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        return path
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if (path / "model.safetensors").is_file():
            return path / "model.safetensors"
        if len(found) == 1:  # e.g. PulpBio/LUNA's LUNA_base.safetensors
            return found[0]
        raise BrainpipeError(
            f"train.pretrained={setting}: "
            + ("no model.safetensors there" if not found else f"{len(found)} .safetensors files")
            + "; name the weights file, or use a directory braindecode's save_pretrained wrote "
            "(config.json + model.safetensors)"
        )
    if not _REPO_ID.match(setting) or path.exists():
        raise BrainpipeError(
            f"train.pretrained={setting}: neither a weights directory nor a Hugging Face repo id"
        )
    os.environ["HF_HUB_OFFLINE"] = "1"  # training never touches the network
    try:
        import huggingface_hub.constants
        from huggingface_hub import snapshot_download

        # braindecode imported huggingface_hub already, which read the variable then.
        huggingface_hub.constants.HF_HUB_OFFLINE = True

        found_dir = Path(snapshot_download(setting, local_files_only=True))
    except ImportError as e:
        raise BrainpipeError(
            "train.pretrained names a Hugging Face repo but huggingface_hub is not installed; "
            "pip install 'brainpipe[train]'"
        ) from e
    except Exception as e:  # huggingface_hub's LocalEntryNotFoundError and kin
        raise BrainpipeError(
            f"train.pretrained={setting} is not in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}); fetch it with "
            f"`{FETCH_HINT.format(repo=setting)}` and set train.pretrained=DIR"
        ) from e
    return resolve_pretrained(str(found_dir))


def _decode(value: Any) -> Any:
    """config.json stores classes (activation, norm layer) as dotted names: import them back."""
    if isinstance(value, str) and value.startswith("torch.nn."):
        import importlib

        module, _, name = value.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return value


def pretrained_kwargs(found: Path) -> dict[str, Any]:
    """The architecture arguments of the saved model: config.json beside the weights without
    the data's shape; none without a config.json (then train.model_kwargs say them)."""
    if not (found.parent / "config.json").is_file():
        return {}
    try:
        config = json.loads((found.parent / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise BrainpipeError(f"{found.parent / 'config.json'}: unreadable ({e})") from e
    return {k: v for k, v in config.items() if k not in DATA_KEYS and k != "braindecode_version"}


def decode_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: _decode(v) for k, v in kwargs.items()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fit_shapes(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], head: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Drop head tensors whose shape differs (another task's head) and slice a longer temporal
    embedding to this window's patches; any other shape mismatch is an error."""
    out, mismatched = {}, []
    for k, v in state.items():
        mine = own.get(k)
        if mine is None or mine.shape == v.shape:
            out[k] = v
        elif k.startswith(head):
            continue  # starts fresh: reported as a fresh key
        elif k == "temporal_embedding" and v.shape[1] >= mine.shape[1]:
            out[k] = v[:, : mine.shape[1]].clone()  # LaBraM: the first patches' embeddings
        else:
            mismatched.append(f"{k} {tuple(v.shape)} vs {tuple(mine.shape)}")
    if mismatched:
        raise BrainpipeError(
            f"pretrained weights do not fit the model built for this data: {', '.join(mismatched[:4])}"
            f"{' ...' if len(mismatched) > 4 else ''}; match train.model_kwargs to the weights' "
            "config.json (or the window to the pretrained length)"
        )
    return out


def load_pretrained(
    backbone: torch.nn.Module, found: Path, head: tuple[str, ...]
) -> dict[str, Any]:
    """Load the weights into `backbone` strictly; report fresh keys and the file's sha256."""
    from safetensors.torch import load_file

    weights = found
    state = load_file(str(weights))
    state = _fit_shapes(state, backbone.state_dict(), head)
    result = backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(head)]
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "") if keys else "none"

        raise BrainpipeError(
            f"{weights}: {len(missing)} backbone keys of the model are not in the weights "
            f"({show(missing)}) and {len(unexpected)} keys of the weights are not in the model "
            f"({show(unexpected)}); the "
            "weights are of another model or version: use weights saved by braindecode 1.8.1's "
            "save_pretrained for train.model"
        )
    return {
        "path": str(weights),
        "sha256": sha256(weights),
        "fresh_keys": sorted(result.missing_keys),
        "loaded_keys": len(state) - len(result.unexpected_keys),
    }


def pull(name: str, to: str | os.PathLike) -> Path:
    """Download a foundation model's published weights (by braindecode model name, e.g.
    Labram, or a repo id) into `to`: for a machine with internet, never called by `train`.
    REVE's electrode position bank comes along as reve_positions.json."""
    from huggingface_hub import hf_hub_download, snapshot_download

    from brainpipe.training.foundation import CONTRACTS

    contract = CONTRACTS.get(name)
    repo = contract.hub if contract else name
    out = Path(to)
    snapshot_download(repo, local_dir=out)
    if name == "REVE":
        bank = hf_hub_download("brain-bzh/reve-positions", "positions.json", local_dir=out)
        Path(bank).rename(out / "reve_positions.json")
    return out


if __name__ == "__main__":  # python -m brainpipe.training.weights pull Labram --to weights/labram
    import argparse

    ap = argparse.ArgumentParser(description=pull.__doc__.splitlines()[0])
    ap.add_argument("command", choices=["pull"])
    ap.add_argument("name", help="Labram, CBraMod, EEGPT, BIOT, LUNA, REVE, or a repo id")
    ap.add_argument("--to", required=True, metavar="DIR")
    a = ap.parse_args()
    print(f"{a.name}: weights in {pull(a.name, a.to)}; copy that directory to the GPU host")
