"""fastconv: spanning conv2d calls run as conv1d give conv2d's outputs and gradients, other
calls are left alone, and training a braindecode model through brainpipe's step with the
rewrite follows the same trajectory as without it."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from brainpipe.training.fastconv import SpanningConvAsConv1d, conv_context, spanning_conv2d
from brainpipe.training.torchaudio_guard import import_braindecode

# (input shape, weight shape, conv2d keyword arguments): kernels spanning W, spanning H, with
# bias, stride, padding and dilation along the other axis.
SPANNING = [
    ((4, 1, 200, 7), (6, 1, 13, 7), {}),
    ((4, 1, 200, 7), (6, 1, 13, 7), {"stride": (3, 1), "padding": (5, 0), "dilation": (2, 1)}),
    ((2, 1, 5, 90), (3, 1, 5, 11), {"stride": 2, "padding": (0, 4)}),
    ((3, 1, 64, 20), (40, 1, 25, 20), {"padding": "valid"}),
]
NOT_SPANNING = [
    ((4, 1, 200, 7), (6, 1, 13, 3), {}),  # kernel narrower than the input
    ((4, 2, 200, 7), (6, 2, 13, 7), {}),  # two input planes
    ((4, 1, 200, 7), (6, 1, 13, 7), {"padding": 1}),  # padding along the spanned axis
    ((4, 1, 20, 100), (6, 1, 1, 64), {"padding": "same"}),  # EEGNet's temporal conv
    ((4, 1, 1, 100), (6, 1, 1, 9), {}),  # height 1: torch's own conv1d form already
]


def _with_bias(w_shape):
    return torch.randn(w_shape[0], dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize(("x_shape", "w_shape", "kw"), SPANNING)
def test_spanning_conv2d_equals_conv2d_with_gradients(x_shape, w_shape, kw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(w_shape, generator=g, dtype=torch.float64, requires_grad=True)
    b = _with_bias(w_shape)
    ref = F.conv2d(x, w, b, **kw)
    out = spanning_conv2d(x, w, b, **kw)
    assert out is not None and out.shape == ref.shape
    torch.testing.assert_close(out, ref)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    want = torch.autograd.grad(ref, (x, w, b), grad)
    got = torch.autograd.grad(out, (x, w, b), grad)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize(("x_shape", "w_shape", "kw"), NOT_SPANNING)
def test_other_convolutions_are_not_rewritten(x_shape, w_shape, kw):
    x, w = torch.randn(x_shape), torch.randn(w_shape)
    assert spanning_conv2d(x, w, None, **kw) is None
    mode = SpanningConvAsConv1d()
    with mode:
        out = F.conv2d(x, w, None, **kw)
    assert mode.rewritten == 0
    torch.testing.assert_close(out, F.conv2d(x, w, None, **kw))


def test_mode_rewrites_module_calls_and_keyword_calls():
    conv = torch.nn.Conv2d(1, 5, (9, 6))
    x = torch.randn(2, 1, 50, 6)
    mode = SpanningConvAsConv1d()
    with mode:
        a = conv(x)
        b = torch.conv2d(input=x, weight=conv.weight, bias=conv.bias)
    assert mode.rewritten == 2
    torch.testing.assert_close(a, F.conv2d(x, conv.weight, conv.bias))
    torch.testing.assert_close(b, a)


def _train(model, x, y, rewrite: bool, steps: int = 5) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        ctx = conv_context(model, torch.device("cpu")) if rewrite else contextlib.nullcontext()
        with ctx:
            out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", ["ShallowFBCSPNet", "Deep4Net"])
def test_braindecode_models_train_alike_with_and_without(name):
    import_braindecode()
    import braindecode.models as bm

    x = torch.randn(16, 20, 1000, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 2

    def fresh():
        torch.manual_seed(0)
        m = getattr(bm, name)(n_chans=20, n_outputs=2, n_times=1000, final_conv_length="auto")
        return m.eval()  # no dropout: both runs see the same function

    stock, fast = _train(fresh(), x, y, False), _train(fresh(), x, y, True)
    assert stock[0] != stock[-1]  # it trained
    assert fast == pytest.approx(stock, rel=1e-3)
    # the first layer really ran as conv1d
    mode = SpanningConvAsConv1d()
    with mode:
        fresh()(x)
    assert mode.rewritten >= 1


def test_context_skips_cuda_compiled_and_models_without_spanning_convs():
    conv = torch.nn.Conv2d(1, 3, (5, 5))
    x = torch.randn(1, 1, 10, 10)  # 5 < 10: nothing to rewrite
    with conv_context(conv, torch.device("cpu")) as mode:
        assert mode is not None
        conv(x)
    with conv_context(conv, torch.device("cpu")) as mode:  # remembered: no mode any more
        assert mode is None
    spanning = torch.nn.Conv2d(1, 3, (5, 10))
    for _ in range(2):
        with conv_context(spanning, torch.device("cpu")) as mode:
            spanning(torch.randn(1, 1, 10, 10))
        assert mode is not None and mode.rewritten == 1
    with conv_context(spanning, torch.device("cuda")) as mode:
        assert mode is None
    spanning._orig_mod = spanning  # what torch.compile's wrapper carries
    with conv_context(spanning, torch.device("cpu")) as mode:
        assert mode is None
