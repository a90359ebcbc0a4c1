"""braindecode beside a CPU-only torch: a stand-in for torchaudio when the real one cannot load.

braindecode >= 1.0 imports torchaudio at package import (`braindecode.modules.filter`), but
PyPI's torchaudio wheels are CUDA builds linked against `libc10_cuda.so`; beside the CPU torch
wheel that CI and laptops install (see constraints.txt) `import torchaudio` raises OSError and
with it `import braindecode`. Only a few models use torchaudio for real (the filter-bank models'
`FilterBankLayer`, EEGSimpleConv's `Resample`, the spectrogram front ends of some non-EEG
models). So when, and only when, the real import fails, `import_braindecode` puts a stand-in
`torchaudio` into `sys.modules` first: every name in it is a class whose construction (or call)
raises one BrainpipeError naming the fix, so exactly those models are refused when built and
every other model imports and runs.

    bd_models = import_braindecode()  # braindecode.models
"""

from __future__ import annotations

import sys
import types
import warnings
from typing import Any

import torch

from brainpipe.errors import BrainpipeError

# Models braindecode 0.8.1 named otherwise (see models.py), here beside the import so that every
# module that looks a class up by name (models, adapt) shares one table.
ALIASES = {"EEGNetv4": "EEGNet", "EEGInception": "EEGInceptionERP"}

_STANDIN_FLAG = "__brainpipe_standin__"
_why: str | None = None  # the real import's error, when the stand-in is in use


def torchaudio_missing() -> str | None:
    """Why the real torchaudio did not load (the stand-in is in use), or None."""
    return _why


def _refusal(name: str) -> BrainpipeError:
    return BrainpipeError(
        f"torchaudio.{name} is needed by this model but torchaudio cannot load beside torch "
        f"{torch.__version__} ({_why}); train it in the CUDA image (docker/Dockerfile) or a venv "
        "with PyPI's default torch==2.13.0 wheel, with which torchaudio loads"
    )


def _standin_class(name: str) -> type:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise _refusal(name)

    # A torch Module so that braindecode can subclass it at import (meta_neuromotor does).
    return type(name.rsplit(".", 1)[-1], (torch.nn.Module,), {"__init__": __init__})


def _standin_module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    setattr(mod, _STANDIN_FLAG, True)
    mod.__path__ = []  # a package: `import torchaudio.transforms` finds the submodules below
    made: dict[str, Any] = {}

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr not in made:
            made[attr] = _standin_class(f"{name.split('.', 1)[-1]}.{attr}")
        return made[attr]

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod


def install_standin(reason: str) -> None:
    """Put the stand-in torchaudio (and its `functional`, `transforms`) into sys.modules."""
    global _why
    _why = reason
    for key in [k for k in sys.modules if k == "torchaudio" or k.startswith("torchaudio.")]:
        del sys.modules[key]  # half-imported parts of the real package
    root = _standin_module("torchaudio")
    for sub in ("functional", "transforms"):
        child = _standin_module(f"torchaudio.{sub}")
        setattr(root, sub, child)
        sys.modules[f"torchaudio.{sub}"] = child
    sys.modules["torchaudio"] = root


def import_braindecode() -> types.ModuleType:
    """`braindecode.models`, with the stand-in torchaudio where the real one cannot load."""
    if "braindecode.models" in sys.modules:
        return sys.modules["braindecode.models"]
    try:
        import torchaudio  # noqa: F401
    except (OSError, ImportError) as e:
        install_standin(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    with warnings.catch_warnings():
        # braindecode 1.8.1 builds EEGPT's channel table at import from mne's "standard_1020"
        # montage, which mne >= 1.12 warns is renamed: noise on every command's stderr.
        warnings.filterwarnings("ignore", "Montage name .standard_1020.", FutureWarning)
        import braindecode.models

    return braindecode.models
