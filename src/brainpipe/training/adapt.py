"""Adapting a model to the cache: its arguments from contract and weights, its build, and which
of its parameters train (`train.finetune`, `train.layer_decay`, `train.grad_checkpointing`).

`adapted_args` is `models.model_args` for a foundation model (or any model given pretrained
weights or an input scaling): the architecture from the weights' config.json, the data's shape,
then `train.model_kwargs`, plus `input` (the `InputPlan`: channels and scaling) and `pretrained`.
The dict is plain, stored in checkpoints; `build_adapted` rebuilds the same `InputAdapter` from
it in `train`, `predict` and `embed`.

Fine-tuning: `full` trains everything; `linear_probe` only the task head; `last_blocks` the
head, the last `train.finetune_blocks` transformer blocks and the final norm. Frozen parameters
have requires_grad False and are left out of the optimizer, and frozen modules stay in eval
mode whatever `model.train()` says (no batch-norm statistics move, no dropout is drawn), so a
probe's backbone is bit-identical after training (tests/test_foundation.py checks it).
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Any

import torch

from brainpipe.errors import BrainpipeError
from brainpipe.training.foundation import (
    CONTRACTS,
    InputAdapter,
    chs_info,
    contract_of,
    plan_input,
)
from brainpipe.training.weights import (
    decode_kwargs,
    load_pretrained,
    pretrained_kwargs,
    resolve_pretrained,
)

HEADS_DEFAULT = ("final_layer",)


def _model_class(name: str) -> type:
    """braindecode's class `name` (models.py, which builds through this module, checked it)."""
    from brainpipe.training.torchaudio_guard import ALIASES, import_braindecode

    bm = import_braindecode()
    cls = getattr(bm, name, None) or getattr(bm, ALIASES.get(name, name), None)
    if not isinstance(cls, type):
        raise BrainpipeError(f"train.model={name!r} is not a braindecode model")
    return cls


def needs_adapter(t: Any) -> bool:
    """Whether `train` builds this model through `adapted_args` (else plain `model_args`)."""
    return (
        t.model in CONTRACTS
        or t.pretrained is not None
        or t.input_scaling not in ("auto", "none")
        or t.finetune != "full"
    )


def adapted_args(
    t: Any,
    cache_channels: tuple[str, ...],
    sfreq: float,
    normalize: str,
    n_times: int,
    n_outputs: int,
) -> dict[str, Any]:
    """Check the cache against the model's contract and the weights; the model arguments."""
    contract = contract_of(t.model)
    if t.finetune != "full" and t.pretrained is None:
        raise BrainpipeError(
            f"train.finetune={t.finetune} adapts pretrained weights; set train.pretrained "
            "(a weights directory or a Hugging Face repo id)"
        )
    plan = plan_input(
        contract, cache_channels, sfreq, normalize, n_times, t.input_scaling, t.missing_channels
    )
    found = resolve_pretrained(t.pretrained) if t.pretrained is not None else None
    kwargs: dict[str, Any] = pretrained_kwargs(found) if found else {}
    kwargs.update(n_chans=len(plan.names), n_times=n_times, n_outputs=n_outputs, sfreq=sfreq)
    cls = _model_class(t.model)
    params = inspect.signature(cls).parameters
    if "final_conv_length" in params and not found:  # as models.model_args: fit any window
        kwargs["final_conv_length"] = "auto"
    kwargs.update(t.model_kwargs)
    foreign = sorted(k for k in kwargs if k not in params)
    if foreign:
        raise BrainpipeError(
            f"train.model={t.model} takes no argument(s) {foreign}"
            + (
                f" (from {found.parent / 'config.json'}: weights of another model?)"
                if found
                else ""
            )
            + "; fix train.model or train.model_kwargs"
        )
    return {
        "name": cls.__name__,
        "kwargs": kwargs,
        "input": plan.to_dict() | {"n_cache_channels": len(cache_channels)},
        "pretrained": str(found) if found else None,
    }


def _reve_positions(args: dict[str, Any]) -> Path:
    """The directory holding REVE's electrode position bank (reve_positions.json)."""
    import mne

    weights = args.get("pretrained")
    candidates = [
        str(Path(weights).parent) if weights else None,
        os.environ.get("REVE_POSITIONS_PATH"),
        mne.get_config("REVE_POSITIONS_PATH"),
        str(Path("~/mne_data").expanduser()),
    ]
    for c in candidates:
        if c and (Path(c) / "reve_positions.json").is_file():
            return Path(c)
    raise BrainpipeError(
        "train.model=REVE needs its electrode position bank reve_positions.json beside the "
        "weights (train.pretrained) or in $REVE_POSITIONS_PATH; fetch it online with "
        "`hf download brain-bzh/reve-positions positions.json --local-dir DIR` "
        "and save it there as reve_positions.json"
    )


def build_adapted(args: dict[str, Any], load: bool = True) -> InputAdapter:
    """The InputAdapter `args` (from `adapted_args`) describe; with `load`, the pretrained
    weights in it (strict), the report under `adapter.pretrained_report`."""
    name, inp = args["name"], args["input"]
    kwargs = decode_kwargs(args["kwargs"])
    forward_kwargs: dict[str, Any] = {}
    if name == "Labram":
        forward_kwargs["ch_names"] = list(inp["names"])
    if name in ("LUNA", "REVE", "EEGPT") and "chs_info" not in kwargs:
        kwargs["chs_info"] = chs_info(list(inp["names"]))
    cls = _model_class(name)
    try:
        if name == "REVE":
            with _env("REVE_POSITIONS_PATH", str(_reve_positions(args))):
                backbone = cls(**kwargs)
        else:
            backbone = cls(**kwargs)
    except BrainpipeError:
        raise
    except Exception as e:
        raise BrainpipeError(
            f"train.model={name} with {args['kwargs']}: cannot build it ({type(e).__name__}: "
            f"{e}); adjust train.model_kwargs"
        ) from e
    adapter = InputAdapter(backbone, inp["scaling"], inp["gather"], forward_kwargs)
    adapter.pretrained_report = None
    if load and args.get("pretrained"):
        adapter.pretrained_report = load_pretrained(
            backbone, Path(args["pretrained"]), head_prefixes(name)
        )
    return adapter


class _env:
    """Set an environment variable for a block (braindecode reads REVE's bank path from it)."""

    def __init__(self, key: str, value: str):
        self.key, self.value, self.old = key, value, None

    def __enter__(self) -> None:
        self.old = os.environ.get(self.key)
        os.environ[self.key] = self.value

    def __exit__(self, *exc: Any) -> None:
        if self.old is None:
            os.environ.pop(self.key, None)
        else:
            os.environ[self.key] = self.old


def head_prefixes(model: str) -> tuple[str, ...]:
    c = contract_of(model)
    return c.head if c else HEADS_DEFAULT


def _blocks(backbone: torch.nn.Module, model: str) -> list[torch.nn.Module]:
    c = contract_of(model)
    if not c or not c.blocks:
        return []
    obj: Any = backbone
    for part in c.blocks.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return []
    return list(obj)


def trainable_prefixes(adapter: InputAdapter, model: str, mode: str, k: int) -> tuple[str, ...]:
    """State-dict prefixes (under the backbone) that train in `train.finetune` mode `mode`."""
    if mode == "full":
        return ("",)
    heads = head_prefixes(model)
    if mode == "linear_probe":
        return heads
    c = contract_of(model)
    blocks = _blocks(adapter.model, model)
    if not blocks or c is None:
        raise BrainpipeError(
            f"train.finetune=last_blocks needs a model with transformer blocks; {model} has "
            "none brainpipe knows; use linear_probe or full"
        )
    if not 1 <= k <= len(blocks):
        raise BrainpipeError(
            f"train.finetune_blocks={k}: {model} has {len(blocks)} blocks; choose 1..{len(blocks)}"
        )
    last = tuple(f"{c.blocks}.{i}." for i in range(len(blocks) - k, len(blocks)))
    return heads + last + ("norm.", "fc_norm.")


def apply_finetune(adapter: InputAdapter, model: str, mode: str, k: int) -> dict[str, int]:
    """Freeze what `mode` does not train; the trainable and total parameter counts."""
    keep = trainable_prefixes(adapter, model, mode, k)
    for n, p in adapter.model.named_parameters():
        p.requires_grad_(n.startswith(keep))
    frozen: list[str] = []
    if mode != "full":
        for n, _ in adapter.model.named_modules():
            if not n or n.startswith(keep) or any(pre.startswith(n + ".") for pre in keep):
                continue
            if not any(n.startswith(f + ".") for f in frozen):
                frozen.append(n)  # its submodules follow it
    adapter.frozen_modules = frozen
    adapter.train(adapter.training)
    total = sum(p.numel() for p in adapter.parameters())
    trainable = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    if trainable == 0:
        raise BrainpipeError(f"train.finetune={mode} leaves no parameter of {model} to train")
    return {"trainable": trainable, "total": total}


def param_groups(adapter: InputAdapter, model: str, lr: float, decay: float) -> list[dict]:
    """Optimizer groups: with layer decay < 1, block i of L trains at lr * decay**(L - i), the
    embeddings below the blocks at lr * decay**(L + 1) and the head at lr."""
    named = [(n, p) for n, p in adapter.model.named_parameters() if p.requires_grad]
    c = contract_of(model)
    n_blocks = len(_blocks(adapter.model, model))
    if decay == 1.0 or c is None or n_blocks == 0:
        return [{"params": [p for _, p in named], "lr": lr}]
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for n, p in named:
        if n.startswith(c.blocks + "."):
            depth = int(n[len(c.blocks) + 1 :].split(".", 1)[0]) + 1
        elif n.startswith(head_prefixes(model)) or n.startswith(("norm.", "fc_norm.")):
            depth = n_blocks + 1
        else:
            depth = 0
        groups.setdefault(lr * decay ** (n_blocks + 1 - depth), []).append(p)
    return [{"params": ps, "lr": g} for g, ps in sorted(groups.items())]


def _checkpointed(forward, *args, **kwargs):
    from torch.utils.checkpoint import checkpoint

    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def enable_checkpointing(adapter: InputAdapter, model: str) -> int:
    """Recompute each transformer block's activations in backward; the number of blocks."""
    blocks = _blocks(adapter.model, model)
    if not blocks:
        raise BrainpipeError(
            f"train.grad_checkpointing=true needs a model with transformer blocks; {model} has "
            "none brainpipe knows; set it to false"
        )
    for b in blocks:
        b.forward = functools.partial(_checkpointed, b.forward)
    return len(blocks)


def foundation_args(cfg: Any, reader: Any, n_outputs: int) -> dict[str, Any]:
    """`adapted_args` for `train`'s cache and config (the window as `window.seconds` gives it)."""
    from brainpipe.datasets import seconds_to_samples

    n_times = seconds_to_samples(cfg.window.seconds, reader.sfreq, "window.seconds")
    return adapted_args(
        cfg.train, reader.channels, reader.sfreq, cfg.preprocess.normalize, n_times, n_outputs
    )


def setup_finetune(model: torch.nn.Module, t: Any, log: bool) -> list[dict[str, Any]]:
    """Freeze per `train.finetune`, switch on gradient checkpointing; the optimizer's groups.
    Prints the trainable/total parameters and the pretrained weights' digest and fresh keys."""
    if not isinstance(model, InputAdapter):
        if t.layer_decay != 1.0 or t.grad_checkpointing:
            raise BrainpipeError(
                f"train.layer_decay and train.grad_checkpointing apply to transformer foundation "
                f"models ({', '.join(CONTRACTS)}); train.model={t.model} takes neither"
            )
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    name = model.model.__class__.__name__
    counts = apply_finetune(model, name, t.finetune, t.finetune_blocks)
    model.finetune_counts = counts | {"mode": t.finetune}
    if t.grad_checkpointing:
        enable_checkpointing(model, name)
    if log:
        from brainpipe.reporting import finetune_line, pretrained_line

        line = finetune_line(name, t.finetune, counts["trainable"], counts["total"], model.scaling)
        print(line, flush=True)
        if model.pretrained_report:
            print(pretrained_line(model.pretrained_report), flush=True)
    return param_groups(model, name, t.lr, t.layer_decay)


def adapter_summary(model: torch.nn.Module) -> dict[str, Any]:
    """summary.json's record of an adapted model: weights, fresh keys, what trained."""
    if not isinstance(model, InputAdapter):
        return {}
    return {
        "pretrained": model.pretrained_report,
        "finetune": getattr(model, "finetune_counts", None),
        "input_scaling": model.scaling,
    }
