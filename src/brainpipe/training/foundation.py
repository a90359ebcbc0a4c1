"""Foundation models: each pretrained model's input contract, checked against the cache before
any work, and the module that feeds a batch to the model in the units it was pretrained on.

A `Contract` says, in one place per model, what the pretrained weights expect: sampling rate,
which channels (a fixed ordered list, a vocabulary of names, or electrode positions), the
scaling of the signal, the patch length and the longest input pretraining allows. `plan_input`
checks a cache against it (rate, normalization, channels by name through `brainpipe.channels`,
window length) and returns an `InputPlan`, or raises one BrainpipeError naming the setting to
change. `InputAdapter` wraps the braindecode model: it gathers the contract's channels from the
cache's (zero-filling the missing ones when `train.missing_channels=zero`), applies the scaling
on the device and passes the channel names or positions the model needs; the checkpoint's
`model_args["input"]` rebuilds it, so `predict` and `embed` feed the model exactly as training did.

    plan = plan_input(contract_of("Labram"), reader.channels, reader.sfreq, normalize, n_times, ...)
    model = InputAdapter(backbone, plan.scaling, plan.gather, plan.forward_kwargs)

`train.input_scaling` also offers the device-side scalings to any model (µV/100, per-window
z-score); its default, `auto`, is the contract's scaling for a foundation model and none else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from brainpipe.channels import alias, canonical_name
from brainpipe.errors import BrainpipeError

# Scalings applied on the device to float32 (B, C, T) windows. Those marked `needs_uv` turn
# microvolts into the model's units and so need a cache that stores µV (normalize=none);
# the others are scale-free per window and channel and fit any cache.
SCALINGS = {
    "none": "as stored",
    "uv_100": "µV / 100 (units of 0.1 mV)",
    "mv": "µV / 1000 (millivolts)",
    "window_zscore": "per window and channel: (x - mean) / std",
    "zscore_clip15": "per window and channel z-score, clipped at ±15",
    "percentile95": "per window and channel: x / (95th percentile of |x| + 1e-8)",
}
NEEDS_UV = {"uv_100", "mv"}

# TCP bipolar derivations BIOT's 16-channel TUAB checkpoint takes, in its order (braindecode's
# BIOT_CHANNEL_ORDER[:16], from the BIOT repo's datasets/TUAB/process.py).
BIOT_16 = (
    "FP1-F7", "F7-T7", "T7-P7", "P7-O1", "FP2-F8", "F8-T8", "T8-P8", "P8-O2",
    "FP1-F3", "F3-C3", "C3-P3", "P3-O1", "FP2-F4", "F4-C4", "C4-P4", "P4-O2",
)  # fmt: skip


@dataclass(frozen=True)
class Contract:
    """What a pretrained model's weights expect of its input."""

    model: str  # braindecode class name
    sfreq: float
    channels: str  # "fixed": `order` gathered by name; "names": any of `vocabulary`, passed by
    # name; "positions": any electrode with a standard position; "any": order-free
    scaling: str  # a SCALINGS key
    patch: int  # samples per patch (the window is a whole number of them)
    max_samples: int  # longest window pretraining allows
    hub: str  # Hugging Face repo id of the weights braindecode publishes
    source: str  # where the numbers above come from
    order: tuple[str, ...] = ()
    head: tuple[str, ...] = ("final_layer",)  # state-dict prefixes that may start fresh
    blocks: str = ""  # attribute holding the transformer blocks (last_blocks, layer decay)
    small: dict[str, Any] = field(default_factory=dict)  # tiny model_kwargs for tests/demo


def _vocabulary(name: str) -> tuple[str, ...]:
    """The channel names a `names` model knows, upper-case."""
    from brainpipe.training.torchaudio_guard import import_braindecode

    import_braindecode()  # the stand-in torchaudio first, where the real one cannot load
    if name == "Labram":
        from braindecode.models.labram import LABRAM_CHANNEL_ORDER

        return tuple(n.upper() for n in LABRAM_CHANNEL_ORDER)
    if name == "EEGPT":
        from braindecode.models.eegpt import EEGPT_CHANNELS

        return tuple(EEGPT_CHANNELS)
    return ()


CONTRACTS: dict[str, Contract] = {
    c.model: c
    for c in (
        Contract(
            "Labram", 200.0, "names", "uv_100", 200, 3000, "braindecode/labram-pretrained",
            "LaBraM repo make_TUAB.py (µV) and its issue #26 (input µV/100); hub config 3000 samples",
            blocks="blocks",
            small={"embed_dim": 40, "num_layers": 2, "num_heads": 2},
        ),
        Contract(
            "CBraMod", 200.0, "any", "uv_100", 200, 6000, "braindecode/cbramod-pretrained",
            "CBraMod paper/repo: 200 Hz, 1-s patches, 30-s pretraining segments, µV/100",
            blocks="encoder.layers",
            small={"n_layer": 2, "nhead": 2, "dim_feedforward": 64},
        ),
        Contract(
            "EEGPT", 256.0, "any", "mv", 64, 1024, "braindecode/eegpt-pretrained",
            "EEGPT paper: 256 Hz, 64-sample patches, 4-s pretraining windows; scale: mV (its "
            "issue #24; set train.input_scaling to override)",
            head=("final_layer", "chan_proj"),
            blocks="target_encoder.blocks",
            small={"embed_dim": 32, "depth": 2, "num_heads": 2},
        ),
        Contract(
            "BIOT", 200.0, "fixed", "percentile95", 200, 2000,
            "braindecode/biot-pretrained-prest-16chs",
            "BIOT repo datasets/TUAB: 16 TCP channels at 200 Hz, 10-s windows, x / q95(|x|)",
            order=BIOT_16,
            blocks="encoder.transformer.layers.layers",
            small={"embed_dim": 32, "num_heads": 2, "num_layers": 1},
        ),
        Contract(
            "LUNA", 256.0, "positions", "window_zscore", 40, 1280, "PulpBio/LUNA",
            "LUNA paper: 256 Hz, 40-sample patches, 5-s windows; scaling not published in "
            "braindecode (per-window z-score here; set train.input_scaling to override)",
            blocks="blocks",
            small={"embed_dim": 32, "depth": 2, "num_heads": 2, "num_queries": 2},
        ),
        Contract(
            "REVE", 200.0, "positions", "zscore_clip15", 200, 6000, "brain-bzh/reve-base",
            "braindecode REVE docs: 200 Hz, per-channel z-score clipped at 15 SD; 1-s patches",
            blocks="transformer.layers",
            small={"embed_dim": 32, "depth": 2, "heads": 2, "head_dim": 16},
        ),
    )
}  # fmt: skip


def contract_of(model: str) -> Contract | None:
    return CONTRACTS.get(model)


@dataclass(frozen=True)
class InputPlan:
    """How the cache's windows become the model's input (plain data: stored in checkpoints)."""

    scaling: str
    gather: list[int] | None  # cache channel per model input channel; -1: zero-filled
    names: list[str]  # the model's channel names, in input order
    zero_filled: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scaling": self.scaling,
            "gather": self.gather,
            "names": self.names,
            "zero_filled": self.zero_filled,
        }


def _pair_key(name: str) -> tuple[str, ...]:
    """Canonical electrodes of a channel name, each with its 10-10 alias folded in."""
    parts = canonical_name(name).split("-")
    return tuple(min(p, alias(p) or p) for p in parts)


def _find(cache_names: tuple[str, ...], wanted: str) -> int | None:
    key = _pair_key(wanted)
    hits = [i for i, n in enumerate(cache_names) if _pair_key(n) == key]
    return hits[0] if hits else None


def resolve_scaling(contract: Contract | None, setting: str) -> str:
    """`train.input_scaling`: `auto` is the contract's scaling (none without a contract)."""
    if setting != "auto":
        return setting
    return contract.scaling if contract else "none"


def plan_input(
    contract: Contract | None,
    cache_names: tuple[str, ...],
    sfreq: float,
    normalize: str,
    n_times: int,
    scaling_setting: str = "auto",
    missing: str = "refuse",
) -> InputPlan:
    """Check the cache against the contract; the InputPlan, or one BrainpipeError with the fix."""
    scaling = resolve_scaling(contract, scaling_setting)
    if scaling in NEEDS_UV and normalize != "none":
        raise BrainpipeError(
            f"train.input_scaling={scaling} ({SCALINGS[scaling]}) needs the cache in µV but it "
            f"was built with preprocess.normalize={normalize}; rebuild with "
            "`preprocess.normalize=none` (brainpipe build-cache --force)"
        )
    if contract is None:
        return InputPlan(scaling, None, list(cache_names), [])
    name = contract.model
    if abs(sfreq - contract.sfreq) > 1e-6:
        raise BrainpipeError(
            f"train.model={name} was pretrained at {contract.sfreq:g} Hz but the cache is at "
            f"{sfreq:g} Hz; rebuild with `preprocess.sfreq={contract.sfreq:g}`"
        )
    _check_window(contract, n_times, sfreq)
    return _plan_channels(contract, cache_names, scaling, missing)


def _check_window(contract: Contract, n_times: int, sfreq: float) -> None:
    name, p, longest = contract.model, contract.patch, contract.max_samples
    if n_times % p:
        raise BrainpipeError(
            f"train.model={name} takes whole patches of {p} samples but a window of "
            f"{n_times} samples is {n_times / p:.2f} patches; set `window.seconds` to a "
            f"multiple of {p / sfreq:g}"
        )
    if n_times > longest:
        raise BrainpipeError(
            f"train.model={name} was pretrained on at most {longest} samples "
            f"({longest / sfreq:g} s) but the window has {n_times}; set "
            f"`window.seconds` <= {longest / sfreq:g}"
        )


def _plan_channels(
    contract: Contract, cache_names: tuple[str, ...], scaling: str, missing: str
) -> InputPlan:
    name = contract.model
    if contract.channels == "fixed":
        gather = [_find(cache_names, w) for w in contract.order]
        absent = [w for w, g in zip(contract.order, gather, strict=True) if g is None]
        if absent and missing != "zero":
            raise BrainpipeError(
                f"train.model={name} needs channels {absent} that the cache lacks (it has "
                f"{list(cache_names)}); build the cache with them (for BIOT: "
                "`preprocess.montage=tcp`) or set `train.missing_channels=zero`"
            )
        idx = [-1 if g is None else g for g in gather]
        return InputPlan(scaling, idx, list(contract.order), absent)
    if contract.channels == "names":
        vocab = _vocabulary(name)
        known = {alias(v): v for v in vocab if alias(v)} | {v: v for v in vocab}
        unknown = [n for n in cache_names if canonical_name(n) not in known]
        if unknown:
            raise BrainpipeError(
                f"train.model={name} knows no channel named {unknown} (its vocabulary has "
                f"{len(vocab)} 10-10 names); drop them from `preprocess.channels`"
            )
        names = [known[canonical_name(n)] for n in cache_names]
        return InputPlan(scaling, None, names, [])
    if contract.channels == "positions":
        positions = standard_positions()
        bad = [n for n in cache_names if _position_name(n, positions) is None]
        if bad:
            raise BrainpipeError(
                f"train.model={name} places channels by electrode position and {bad} have no "
                "standard 10-05 position; drop them from `preprocess.channels`"
            )
        return InputPlan(scaling, None, [_position_name(n, positions) for n in cache_names], [])
    return InputPlan(scaling, None, list(cache_names), [])


def standard_positions() -> dict[str, np.ndarray]:
    """mne's standard_1005 electrode positions (metres, head frame), upper-case names."""
    import mne

    montage = mne.channels.make_standard_montage("standard_1005")
    return {k.upper(): np.asarray(v) for k, v in montage.get_positions()["ch_pos"].items()}


def _position_name(name: str, positions: dict[str, np.ndarray]) -> str | None:
    c = canonical_name(name)
    for n in (c, alias(c)):
        if n and n in positions:
            return n
    return None


def chs_info(names: list[str]) -> list[dict[str, Any]]:
    """braindecode's `chs_info` for named electrodes, with their standard positions."""
    positions = standard_positions()
    out = []
    for n in names:
        loc = np.zeros(12)
        if n in positions:
            loc[:3] = positions[n]
        out.append({"ch_name": n, "kind": "eeg", "loc": loc.tolist()})
    return out


def scale(x: torch.Tensor, scaling: str) -> torch.Tensor:
    """One of SCALINGS on float32 (B, C, T) windows, per window and channel where it says so."""
    if scaling == "none":
        return x
    if scaling == "uv_100":
        return x / 100.0
    if scaling == "mv":
        return x / 1000.0
    if scaling in ("window_zscore", "zscore_clip15"):
        std, mean = torch.std_mean(x, dim=-1, keepdim=True)
        z = (x - mean) / (std + 1e-6)
        return z.clamp(-15.0, 15.0) if scaling == "zscore_clip15" else z
    if scaling == "percentile95":
        q = torch.quantile(x.abs(), 0.95, dim=-1, keepdim=True)
        return x / (q + 1e-8)
    raise BrainpipeError(f"train.input_scaling={scaling!r}: valid are {', '.join(SCALINGS)}")


class InputAdapter(torch.nn.Module):
    """The model, fed as its contract says: channels gathered by name, scaled on the device.

    `forward_kwargs` are passed to the model with every batch (LaBraM's `ch_names`). The
    gather index is a buffer so it moves with the model and is rebuilt from `model_args`, not
    stored in the state dict: the state dict is the backbone's, under `model.`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        scaling: str,
        gather: list[int] | None = None,
        forward_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        if scaling not in SCALINGS:
            raise BrainpipeError(
                f"train.input_scaling={scaling!r}: valid are {', '.join(SCALINGS)}"
            )
        self.model = model
        self.scaling = scaling
        self.forward_kwargs = dict(forward_kwargs or {})
        idx = torch.tensor(gather if gather is not None else [], dtype=torch.long)
        self.register_buffer("gather", idx, persistent=False)
        self.has_gather = gather is not None
        self.frozen_modules: list[str] = []  # set by adapt.apply_finetune
        self.pretrained_report: dict[str, Any] | None = None

    def train(self, mode: bool = True) -> InputAdapter:
        """Like Module.train, but frozen modules stay in eval mode (see adapt.apply_finetune)."""
        super().train(mode)
        for name in self.frozen_modules:
            self.model.get_submodule(name).eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_gather:
            # A zero channel appended last: index -1 picks it for the zero-filled inputs.
            x = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], dim=1)[:, self.gather]
        return self.model(scale(x, self.scaling), **self.forward_kwargs)
