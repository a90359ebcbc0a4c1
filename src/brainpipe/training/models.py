"""Models: which braindecode models `train.model` may name, their full arguments, and building one.

Owns the registry (every public `torch.nn.Module` class of `braindecode.models`), `model_args`
(the data's shape, defaults that fit any window, then the config's `train.model_kwargs`) and
`build_model`, which checks with one forward pass on zeros that the model fits the windows. The
arguments are a plain dict stored in every checkpoint, so a resumed run rebuilds the checkpoint's
architecture, not today's config's. Foundation models (and any model given pretrained weights
or an input scaling) carry `input` in their arguments and are built by `adapt.build_adapted`.

braindecode 1.8.1 renamed models that configs and checkpoints of 0.8.1 name: `ALIASES` maps the
old names (EEGNetv4 -> EEGNet); `upgrade_args` turns a checkpoint's 0.8.1 arguments and state
dict into 1.8.1's (`load_checkpoint_model`), or refuses in one line naming the fix.

    args = model_args("ShallowFBCSPNet", {}, n_chans=21, n_times=2000, n_outputs=2, sfreq=200.0)
    model = build_model(args)
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import torch

from brainpipe.errors import BrainpipeError
from brainpipe.training.torchaudio_guard import ALIASES

# Checkpoints of braindecode 0.8.1: its renamed models (`ALIASES`, shared with configs) and its
# `TCN`, the braindecode TCN, which is 1.8.1's `BDTCN` (1.8.1's `TCN` is Bai et al.'s: a config's
# `TCN` means 1.8.1's, only a 0.8.1 checkpoint's is upgraded to BDTCN).
_LEGACY = {**ALIASES, "TCN": "BDTCN"}
# State-dict keys 1.8.1 renamed, by (1.8.1) model.
_LEGACY_KEYS = {"EEGNet": {"conv_spatial.weight": "conv_spatial.parametrizations.weight.original"}}


def model_classes() -> dict[str, type]:
    """braindecode's models by class name (with the torchaudio stand-in where needed)."""
    from brainpipe.training.torchaudio_guard import import_braindecode

    bm = import_braindecode()
    return {
        name: obj
        for name, obj in vars(bm).items()
        if inspect.isclass(obj)
        and issubclass(obj, torch.nn.Module)
        and not name.startswith("_")
        and name != "TimeDistributed"  # a wrapper, not a model
    }


def _model_class(name: str) -> type:
    classes = model_classes()
    name = name if name in classes else ALIASES.get(name, name)
    if name not in classes:
        close = difflib.get_close_matches(name, classes, n=3)
        raise BrainpipeError(
            f"train.model={name!r} is not a braindecode model"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + f"; valid names include {', '.join(sorted(classes))}"
        )
    return classes[name]


def model_args(
    name: str, kwargs: dict[str, Any], n_chans: int, n_times: int, n_outputs: int, sfreq: float
) -> dict[str, Any]:
    """The full constructor arguments: the data's shape, sensible defaults, then the config's."""
    cls = _model_class(name)
    name = cls.__name__
    params = inspect.signature(cls).parameters
    full: dict[str, Any] = {}
    shape = {"n_chans": n_chans, "n_outputs": n_outputs, "n_times": n_times, "sfreq": sfreq}
    full.update({k: v for k, v in shape.items() if k in params})
    # "auto" sizes the classifier to the window, which braindecode's fixed defaults (sized for
    # one dataset's window) would not fit; logits, not log-probabilities, for cross-entropy.
    if "final_conv_length" in params:
        full["final_conv_length"] = "auto"
    if "add_log_softmax" in params:
        full["add_log_softmax"] = False
    full.update(kwargs)
    return {"name": name, "kwargs": full, "braindecode": braindecode_version()}


def braindecode_version() -> str:
    from importlib.metadata import version

    return version("braindecode")


class SubjectEncoder(torch.nn.Module):
    """A braindecode model as an encoder of windows into embeddings, for the subject tasks.

    `model(x)` -> embeddings `(B, embedding_dim)`; `model(x, partner)` -> same-subject logits
    `(B,)` of the pairs (x[i], partner[i]): a scaled, shifted cosine similarity (the similarity
    head), both windows encoded in one pass. The head lives in `forward` so DDP and
    torch.compile see it like any other parameter.
    """

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder
        self.logit_scale = torch.nn.Parameter(torch.tensor(10.0))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-5.0))

    def forward(self, x: torch.Tensor, partner: torch.Tensor | None = None) -> torch.Tensor:
        if partner is None:
            return self.encoder(x)
        e = torch.nn.functional.normalize(self.encoder(torch.cat([x, partner])).float(), dim=1)
        a, b = e[: len(x)], e[len(x) :]
        return self.logit_scale * (a * b).sum(1) + self.logit_bias


def build_model(args: dict[str, Any], load: bool = True) -> torch.nn.Module:
    """Build a braindecode model and check, with one forward pass on zeros, that it fits the data.

    `args["head"]` "pairs" or "contrastive" (the subject tasks) wraps it in a `SubjectEncoder`.
    With `args["input"]` (a foundation model) and `load`, its pretrained weights are loaded.
    """
    if args.get("head") in ("pairs", "contrastive"):
        return SubjectEncoder(build_model({k: v for k, v in args.items() if k != "head"}))
    if "input" in args:
        from brainpipe.training.adapt import build_adapted

        model = build_adapted(args, load=load)
        n_in = args["input"]["n_cache_channels"]
        return _checked(model, args["name"], n_in, args["kwargs"]["n_times"], args["kwargs"])
    name, kwargs = args["name"], args["kwargs"]
    cls = _model_class(name)
    try:
        model = cls(**kwargs)
    except BrainpipeError:
        raise  # the torchaudio stand-in's refusal
    except Exception as e:
        raise BrainpipeError(
            f"train.model={name} with {kwargs}: cannot build it for windows of {kwargs.get('n_chans')} "
            f"channels x {kwargs.get('n_times')} samples ({type(e).__name__}: {e}); adjust "
            "train.model_kwargs (or window.seconds)"
        ) from e
    return _checked(model, name, kwargs.get("n_chans"), kwargs.get("n_times"), kwargs)


def _checked(model: torch.nn.Module, name: str, n_chans, n_times, kwargs) -> torch.nn.Module:
    """The model, after one forward pass on zeros showed it takes the windows."""
    n_outputs = kwargs.get("n_outputs")
    if n_chans and n_times:
        model.eval()  # no batch-norm statistics change, no dropout randomness drawn
        try:
            with torch.no_grad():
                out = model(torch.zeros(2, n_chans, n_times))
        except Exception as e:
            raise BrainpipeError(
                f"train.model={name} cannot take windows of {n_chans} channels x {n_times} "
                f"samples ({type(e).__name__}: {e}); use longer windows (window.seconds) or "
                "smaller kernels/pools in train.model_kwargs"
            ) from e
        if tuple(out.shape) != (2, n_outputs):
            raise BrainpipeError(
                f"train.model={name} outputs shape {tuple(out.shape[1:])} per window, not "
                f"({n_outputs},); set final_conv_length or similar in train.model_kwargs"
            )
        model.train()
    return model


def upgrade_args(args: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model arguments in braindecode 1.8.1's terms.

    Checkpoints written with braindecode 0.8.1 (no `braindecode` key) may name a renamed model
    and carry `add_log_softmax`, which 1.8.1's models no longer take (they output logits, as
    brainpipe always asked of 0.8.1 with add_log_softmax=False).
    """
    if args.get("head") in ("pairs", "contrastive"):
        inner = upgrade_args({k: v for k, v in args.items() if k != "head"})
        return inner | {"head": args["head"]}
    if "braindecode" in args or "input" in args:
        return args
    kwargs = dict(args["kwargs"])
    if kwargs.pop("add_log_softmax", False):
        raise BrainpipeError(
            f"checkpoint model {args['name']} outputs log-probabilities (add_log_softmax=True), "
            "which braindecode 1.8.1 cannot build; retrain it with this brainpipe"
        )
    return {**args, "name": _LEGACY.get(args["name"], args["name"]), "kwargs": kwargs}


def load_checkpoint_model(ckpt: dict[str, Any], source: str) -> torch.nn.Module:
    """The model of a brainpipe checkpoint, its weights loaded; a checkpoint of braindecode
    0.8.1 is upgraded (`upgrade_args`) or refused in one line naming the fix."""
    args = upgrade_args(ckpt["model_args"])
    model = build_model(args, load=False)
    state = dict(ckpt["model"])
    inner = model.encoder if isinstance(model, SubjectEncoder) else model
    prefix = "encoder." if inner is not model else ""
    for old, new in _LEGACY_KEYS.get(inner.__class__.__name__, {}).items():
        if prefix + old in state and "braindecode" not in ckpt["model_args"]:
            state[prefix + new] = state.pop(prefix + old)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise BrainpipeError(
            f"{source}: its {args['name']} weights do not fit braindecode 1.8.1's model ({first}); "
            "retrain with this brainpipe, or predict with brainpipe's braindecode 0.8.1 release"
        ) from e
    return model
