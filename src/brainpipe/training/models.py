"""Models: which braindecode models `train.model` may name, their full arguments, and building one.

Owns the registry (every public `torch.nn.Module` class of `braindecode.models`), `model_args`
(the data's shape, defaults that fit any window, then the config's `train.model_kwargs`) and
`build_model`, which checks with one forward pass on zeros that the model fits the windows. The
arguments are a plain dict stored in every checkpoint, so a resumed run rebuilds the checkpoint's
architecture, not today's config's.

    args = model_args("ShallowFBCSPNet", {}, n_chans=21, n_times=2000, n_outputs=2, sfreq=200.0)
    model = build_model(args)
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import torch

from brainpipe.errors import BrainpipeError


def model_classes() -> dict[str, type]:
    """braindecode's models by class name."""
    import braindecode.models as bm

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
    params = inspect.signature(_model_class(name)).parameters
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
    return {"name": name, "kwargs": full}


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


def build_model(args: dict[str, Any]) -> torch.nn.Module:
    """Build a braindecode model and check, with one forward pass on zeros, that it fits the data.

    `args["head"]` "pairs" or "contrastive" (the subject tasks) wraps it in a `SubjectEncoder`.
    """
    if args.get("head") in ("pairs", "contrastive"):
        return SubjectEncoder(build_model({k: v for k, v in args.items() if k != "head"}))
    name, kwargs = args["name"], args["kwargs"]
    cls = _model_class(name)
    n_chans, n_times, n_outputs = (kwargs.get(k) for k in ("n_chans", "n_times", "n_outputs"))
    try:
        model = cls(**kwargs)
    except Exception as e:
        raise BrainpipeError(
            f"train.model={name} with {kwargs}: cannot build it for windows of {n_chans} "
            f"channels x {n_times} samples ({type(e).__name__}: {e}); adjust "
            "train.model_kwargs (or window.seconds)"
        ) from e
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
