"""Spanning convolutions as conv1d on the CPU: the same function, about 4x less time.

The first layer of the field's CNN baselines (ShallowFBCSPNet, Deep4Net: braindecode's
`CombinedConv`) is a conv2d with one input plane whose kernel spans every electrode:
`(B, 1, T, C) * (F, 1, k, C) -> (B, F, T', 1)`. That is exactly a conv1d over time with the
electrodes as input channels: `(B, C, T) * (F, C, k) -> (B, F, T')`. oneDNN (PyTorch's CPU
convolution) handles the conv2d form badly, its weight gradient most of all: on 2 cores, batch
64 x 20 electrodes x 1,000 samples, forward+backward of that layer takes ~300 ms as conv2d and
~70 ms as conv1d, which makes a whole ShallowFBCSPNet training step ~3x faster
(`scripts/bench_conv.py` measures it per model; the outputs and gradients agree to float32
rounding, `tests/test_fastconv.py`).

`SpanningConvAsConv1d` is a `TorchFunctionMode`: inside it every `conv2d` call that meets the
identity's conditions (one input plane, groups 1, the kernel covering one whole axis of the input
with no padding or dilation along it) runs as conv1d; everything else runs unchanged. Autograd
records the conv1d, so the backward pass is the fast one too. No module, weight or state_dict
changes: checkpoints are the braindecode model's own.

It is entered around each forward pass on the CPU only (`conv_context`): CUDA has not been
measured with it, and torch.compile'd models lower their convolutions themselves.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, int):
        return v, v
    if isinstance(v, tuple | list) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return int(v[0]), int(v[1])
    return None


def spanning_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> torch.Tensor | None:
    """`F.conv2d(x, weight, ...)` computed as conv1d when the kernel spans a whole axis of a
    one-plane input; None when the call is not of that form (the caller runs conv2d)."""
    if padding == "valid":
        padding = 0
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if stride is None or padding is None or dilation is None or groups != 1:
        return None
    if x.dim() != 4 or weight.dim() != 4 or x.shape[1] != 1 or weight.shape[1] != 1:
        return None
    h, w = x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
    # A spanned axis of length 1 is conv1d already (torch runs conv1d as a conv2d of height 1).
    if kw == w > 1 and padding[1] == 0 and dilation[1] == 1:
        # (B, 1, H, W) -> (B, W, H): the spanned axis becomes conv1d's input channels.
        y = F.conv1d(
            x[:, 0].transpose(1, 2), weight[:, 0].transpose(1, 2), bias,
            stride[0], padding[0], dilation[0],
        )  # fmt: skip
        return y.unsqueeze(3)
    if kh == h > 1 and padding[0] == 0 and dilation[0] == 1:
        y = F.conv1d(x[:, 0], weight[:, 0], bias, stride[1], padding[1], dilation[1])
        return y.unsqueeze(2)
    return None


class SpanningConvAsConv1d(TorchFunctionMode):
    """Inside this mode, conv2d calls of the spanning form run as conv1d (`spanning_conv2d`);
    `rewritten` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.rewritten = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d:  # also F.conv2d and nn.Conv2d's call: the same builtin
            call = dict(kwargs)
            if "input" in call:
                call["x"] = call.pop("input")
            y = spanning_conv2d(*args, **call)
            if y is not None:
                self.rewritten += 1
                return y
        return func(*args, **kwargs)


# Models whose forward pass had no spanning convolution: the mode's dispatch costs such a
# model (EEGNet) 5-10% of its step for nothing, so it is entered once and then no more.
_NOTHING_TO_REWRITE: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


@contextlib.contextmanager
def conv_context(
    model: torch.nn.Module, device: torch.device
) -> Iterator[SpanningConvAsConv1d | None]:
    """The rewrite around a forward pass of `model` where it is measured to pay: on the CPU,
    eager models (not torch.compile'd), with a spanning convolution in their forward pass.
    Yields the active mode, or None where the pass runs unchanged."""
    if device.type != "cpu" or hasattr(model, "_orig_mod") or model in _NOTHING_TO_REWRITE:
        yield None
        return
    mode = SpanningConvAsConv1d()
    with mode:
        yield mode
    if not mode.rewritten:
        _NOTHING_TO_REWRITE.add(model)
