"""Foundation models: contracts refused before any work, channels by name, units on the device,
strict offline weights, frozen backbones. Random-initialised braindecode models saved with
`save_pretrained` stand in for the published weights (the Hub is unreachable here)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from brainpipe.config import STANDARD_1020
from brainpipe.errors import BrainpipeError
from brainpipe.preprocess import TCP_PAIRS
from brainpipe.training.adapt import adapted_args, setup_finetune
from brainpipe.training.foundation import (
    BIOT_16,
    CONTRACTS,
    InputAdapter,
    contract_of,
    plan_input,
    scale,
    standard_positions,
)
from brainpipe.training.models import build_model, load_checkpoint_model, model_classes
from brainpipe.training.torchaudio_guard import import_braindecode, torchaudio_missing
from brainpipe.training.weights import resolve_pretrained

warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

import_braindecode()  # so that torchaudio_missing() tells at collection
TCP = tuple(f"{a}-{b}" for a, b in TCP_PAIRS)  # NEDC names: F7-T3, T3-T5, ...


def settings(model: str, **kw) -> SimpleNamespace:
    """A TrainConfig's foundation-model keys (adapted_args reads only these)."""
    base = dict(
        model=model, model_kwargs={}, pretrained=None, finetune="full", finetune_blocks=1,
        input_scaling="auto", missing_channels="refuse", layer_decay=1.0,
        grad_checkpointing=False, lr=1e-3,
    )  # fmt: skip
    return SimpleNamespace(**(base | kw))


def save_random(model: str, out: Path, n_chans: int, n_times: int, n_outputs: int = 2) -> Path:
    """A random-initialised model in braindecode's save_pretrained layout."""
    c = CONTRACTS[model]
    kw = dict(c.small, n_chans=n_chans, n_times=n_times, n_outputs=n_outputs, sfreq=c.sfreq)
    if model == "REVE":
        write_position_bank(out)
        import os

        os.environ["REVE_POSITIONS_PATH"] = str(out)
        kw["chs_info"] = [{"ch_name": n} for n in STANDARD_1020[:n_chans]]
    torch.manual_seed(0)
    model_classes()[model](**kw).save_pretrained(str(out))
    return out


def write_position_bank(out: Path) -> None:
    """REVE's position bank, from mne's standard positions (the real one comes from the Hub)."""
    out.mkdir(parents=True, exist_ok=True)
    bank = {k: v.tolist() for k, v in standard_positions().items()}
    (out / "reve_positions.json").write_text(json.dumps(bank))


# ---------------------------------------------------------------------------------------------
# Units on the device
# ---------------------------------------------------------------------------------------------


def test_scalings_match_a_hand_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 40, (3, 4, 1000)).astype(np.float32)
    x[0, 1, 7] = 5000.0  # an artifact: clipped by zscore_clip15
    t = torch.from_numpy(x)
    np.testing.assert_allclose(scale(t, "uv_100").numpy(), x / 100, rtol=1e-6)
    np.testing.assert_allclose(scale(t, "mv").numpy(), x / 1000, rtol=1e-6)
    mean, std = x.mean(-1, keepdims=True), x.std(-1, ddof=1, keepdims=True)
    z = (x - mean) / (std + 1e-6)
    np.testing.assert_allclose(scale(t, "window_zscore").numpy(), z, rtol=1e-4, atol=1e-5)
    clipped = scale(t, "zscore_clip15").numpy()
    assert clipped[0, 1, 7] == 15.0 and z[0, 1, 7] > 15
    np.testing.assert_allclose(clipped, np.clip(z, -15, 15), rtol=1e-4, atol=1e-5)
    q = np.quantile(np.abs(x), 0.95, axis=-1, keepdims=True)
    np.testing.assert_allclose(scale(t, "percentile95").numpy(), x / (q + 1e-8), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Contracts: each refusal names the setting to change
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "cache", "message"),
    [
        ("Labram", dict(sfreq=100.0), "rebuild with `preprocess.sfreq=200`"),
        ("EEGPT", dict(sfreq=200.0, n_times=800), "rebuild with `preprocess.sfreq=256`"),
        ("Labram", dict(normalize="zscore"), "rebuild with `preprocess.normalize=none`"),
        ("CBraMod", dict(normalize="robust"), "`preprocess.normalize=none`"),
        ("Labram", dict(n_times=1100), "set `window.seconds` to a multiple of 1"),
        ("Labram", dict(n_times=4000), "set `window.seconds` <= 15"),
        ("EEGPT", dict(sfreq=256.0, n_times=2560), "`window.seconds` <= 4"),
        ("BIOT", dict(channels=STANDARD_1020), "set `train.missing_channels=zero`"),
        ("Labram", dict(channels=("FP1", "EKG1")), "drop them from `preprocess.channels`"),
        ("REVE", dict(channels=("FP1", "XYZ")), "no standard 10-05 position"),
    ],
)
def test_contract_refusals_name_the_fix(model, cache, message):
    c = contract_of(model)
    args = dict(channels=STANDARD_1020, sfreq=c.sfreq, normalize="none", n_times=1000) | cache
    with pytest.raises(BrainpipeError, match=message.replace("(", r"\(").replace("`", ".")):
        plan_input(c, args["channels"], args["sfreq"], args["normalize"], args["n_times"])


def test_a_scale_free_contract_takes_a_zscored_cache():
    plan = plan_input(contract_of("REVE"), STANDARD_1020, 200.0, "zscore", 1000)
    assert plan.scaling == "zscore_clip15"
    # An explicit train.input_scaling wins over the contract's, and is checked the same way.
    with pytest.raises(BrainpipeError, match="preprocess.normalize=none"):
        plan_input(contract_of("REVE"), STANDARD_1020, 200.0, "zscore", 1000, "uv_100")


# ---------------------------------------------------------------------------------------------
# Channels by name
# ---------------------------------------------------------------------------------------------


def test_biot_gathers_its_16_derivations_by_name_across_10_20_and_10_10():
    # The cache has NEDC's 22 TCP derivations named with T3/T4/T5/T6; BIOT's list says T7/P7.
    plan = plan_input(contract_of("BIOT"), TCP, 200.0, "none", 2000)
    assert plan.names == list(BIOT_16) and plan.zero_filled == []
    want = [TCP.index(n.replace("T7", "T3").replace("T8", "T4").replace("P7", "T5").replace("P8", "T6")) for n in BIOT_16]  # fmt: skip
    assert plan.gather == want
    # The adapter feeds the model exactly those channels, in BIOT's order.
    seen = []
    probe = torch.nn.Module()
    probe.forward = lambda x: seen.append(x) or x.sum((1, 2))[:, None]
    x = torch.arange(len(TCP), dtype=torch.float32)[None, :, None].repeat(2, 1, 5)
    InputAdapter(probe, "none", plan.gather)(x)
    assert seen[0][0, :, 0].tolist() == [float(i) for i in want]


def test_a_missing_channel_is_refused_or_zero_filled():
    cache = tuple(n for n in TCP if n != "C3-P3")
    with pytest.raises(BrainpipeError, match=r"needs channels \['C3-P3'\]"):
        plan_input(contract_of("BIOT"), cache, 200.0, "none", 2000)
    plan = plan_input(contract_of("BIOT"), cache, 200.0, "none", 2000, missing="zero")
    assert plan.zero_filled == ["C3-P3"] and plan.gather[BIOT_16.index("C3-P3")] == -1
    seen = []
    probe = torch.nn.Module()
    probe.forward = lambda x: seen.append(x) or x[:, :1, 0]
    InputAdapter(probe, "none", plan.gather)(torch.ones(1, len(cache), 4))
    assert seen[0][0, BIOT_16.index("C3-P3")].abs().sum() == 0
    assert seen[0][0].abs().sum() == 4 * 15


def test_labram_gets_channel_names_and_aliases_resolve():
    cache = ("FP1", "T3", "T7..", "O2")[::2] + ("EEG T4-REF",)  # FP1, T7.., EEG T4-REF
    plan = plan_input(contract_of("Labram"), cache, 200.0, "none", 1000)
    assert plan.names == ["FP1", "T7", "T4"]  # each in LaBraM's own vocabulary spelling
    plan = plan_input(contract_of("EEGPT"), ("FP1", "T3", "T5"), 256.0, "none", 1024)
    assert plan.gather is None and plan.names == ["FP1", "T3", "T5"]


# ---------------------------------------------------------------------------------------------
# Weights: offline, strict, reported
# ---------------------------------------------------------------------------------------------


def test_offline_round_trip_loads_every_backbone_key(tmp_path):
    saved = save_random("Labram", tmp_path / "w", n_chans=4, n_times=1000, n_outputs=5)
    t = settings("Labram", pretrained=str(saved))
    args = adapted_args(t, STANDARD_1020[:4], 200.0, "none", 1000, 2)
    model = build_model(args)
    from safetensors.torch import load_file

    state = load_file(str(saved / "model.safetensors"))
    mine = model.model.state_dict()
    for k, v in state.items():
        if not k.startswith("final_layer"):
            assert torch.equal(mine[k], v), k
    rep = model.pretrained_report
    assert rep["sha256"] == hashlib.sha256((saved / "model.safetensors").read_bytes()).hexdigest()
    # The saved head has 5 outputs, this task 2: only the head starts fresh.
    assert rep["fresh_keys"] == ["final_layer.bias", "final_layer.weight"]
    assert rep["loaded_keys"] == len(state) - 2
    assert model(torch.randn(2, 4, 1000)).shape == (2, 2)


def test_labram_temporal_embedding_is_sliced_to_a_shorter_window(tmp_path):
    saved = save_random("Labram", tmp_path / "w", n_chans=4, n_times=3000)
    args = adapted_args(settings("Labram", pretrained=str(saved)), STANDARD_1020[:4], 200.0, "none", 1000, 2)  # fmt: skip
    model = build_model(args)
    from safetensors.torch import load_file

    full = load_file(str(saved / "model.safetensors"))["temporal_embedding"]
    assert torch.equal(model.model.temporal_embedding, full[:, :6])


def test_renamed_keys_are_an_error_naming_them(tmp_path):
    from safetensors.torch import load_file, save_file

    saved = save_random("Labram", tmp_path / "w", n_chans=4, n_times=1000)
    state = load_file(str(saved / "model.safetensors"))
    renamed = {(k.replace("blocks.1.", "layers.1.")): v for k, v in state.items()}
    save_file(renamed, str(saved / "model.safetensors"))
    args = adapted_args(settings("Labram", pretrained=str(saved)), STANDARD_1020[:4], 200.0, "none", 1000, 2)  # fmt: skip
    with pytest.raises(BrainpipeError, match=r"backbone keys .*blocks\.1\..*layers\.1\."):
        build_model(args)


def test_a_hub_id_resolves_from_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = tmp_path / "hub" / "models--someone--labram" / "snapshots" / "abc123"
    save_random("Labram", snap, n_chans=4, n_times=1000)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    assert resolve_pretrained("someone/labram") == snap / "model.safetensors"
    with pytest.raises(BrainpipeError, match="hf download someone/other"):
        resolve_pretrained("someone/other")
    with pytest.raises(BrainpipeError, match="neither a weights directory"):
        resolve_pretrained(str(tmp_path / "no" / "such" / "dir"))
    # A weights file named otherwise (PulpBio/LUNA's LUNA_base.safetensors) is found alone.
    (snap / "model.safetensors").rename(snap / "LUNA_base.safetensors")
    assert resolve_pretrained(str(snap)) == snap / "LUNA_base.safetensors"
    (snap / "other.safetensors").write_bytes(b"")
    with pytest.raises(BrainpipeError, match="2 .safetensors files; name the weights file"):
        resolve_pretrained(str(snap))


# ---------------------------------------------------------------------------------------------
# Fine-tuning modes
# ---------------------------------------------------------------------------------------------


def _steps(model, groups, n=3):
    opt = torch.optim.AdamW(groups, lr=1e-2)
    model.train()
    for _ in range(n):
        loss = model(torch.randn(4, 4, 1000) * 30).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_linear_probe_leaves_the_backbone_bit_identical(tmp_path):
    saved = save_random("Labram", tmp_path / "w", n_chans=4, n_times=1000)
    t = settings("Labram", pretrained=str(saved), finetune="linear_probe", model_kwargs={"drop_prob": 0.3})  # fmt: skip
    model = build_model(adapted_args(t, STANDARD_1020[:4], 200.0, "none", 1000, 2))
    groups = setup_finetune(model, t, log=False)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    _steps(model, groups)
    after = model.model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["final_layer.bias", "final_layer.weight"]
    model.train()
    frozen = [m for n, m in model.model.named_modules() if n and not n.startswith("final_layer")]
    assert frozen and not any(m.training for m in frozen)  # dropout, layer norms: eval mode
    assert model.finetune_counts["trainable"] == sum(before[k].numel() for k in changed)


def test_last_blocks_and_layer_decay(tmp_path):
    saved = save_random("Labram", tmp_path / "w", n_chans=4, n_times=1000)
    t = settings("Labram", pretrained=str(saved), finetune="last_blocks", finetune_blocks=1, layer_decay=0.5)  # fmt: skip
    model = build_model(adapted_args(t, STANDARD_1020[:4], 200.0, "none", 1000, 2))
    groups = setup_finetune(model, t, log=False)
    trainable = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("blocks.1.") for n in trainable)
    assert not any(n.startswith(("blocks.0.", "patch_embed")) for n in trainable)
    assert sorted(g["lr"] for g in groups) == [5e-4, 1e-3]  # block 2 of 2: lr * 0.5; head: lr
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    _steps(model, groups, n=1)
    after = model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("blocks.0."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("blocks.1."))


def test_any_model_can_take_a_device_side_scaling():
    t = settings("ShallowFBCSPNet", input_scaling="window_zscore", model_kwargs={"n_filters_time": 4, "n_filters_spat": 4, "pool_time_length": 10, "pool_time_stride": 5})  # fmt: skip
    model = build_model(adapted_args(t, STANDARD_1020[:4], 50.0, "zscore", 100, 2))
    assert isinstance(model, InputAdapter) and model.scaling == "window_zscore"
    model.eval()
    x = torch.randn(3, 4, 100)
    # Per-window z-scoring makes the model blind to each window's gain and offset.
    torch.testing.assert_close(model(x), model(7.0 * x + 3.0), rtol=1e-4, atol=1e-4)


def test_a_probe_needs_pretrained_weights():
    with pytest.raises(BrainpipeError, match="set train.pretrained"):
        adapted_args(settings("Labram", finetune="linear_probe"), STANDARD_1020[:4], 200.0, "none", 1000, 2)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The braindecode 1.8.1 move
# ---------------------------------------------------------------------------------------------


def test_a_braindecode_0_8_1_checkpoint_loads_or_is_refused():
    from brainpipe.training.models import model_args

    args = model_args("EEGNet", {}, n_chans=4, n_times=200, n_outputs=2, sfreq=100.0)
    state = build_model(args).state_dict()
    # What brainpipe wrote with 0.8.1: EEGNetv4, add_log_softmax, the spatial conv's old key.
    old_state = {
        ("conv_spatial.weight" if k == "conv_spatial.parametrizations.weight.original" else k): v
        for k, v in state.items()
    }
    old_args = {"name": "EEGNetv4", "kwargs": args["kwargs"] | {"add_log_softmax": False}}
    model = load_checkpoint_model({"model_args": old_args, "model": old_state}, "old.pt")
    assert torch.equal(model.state_dict()["conv_spatial.parametrizations.weight.original"], state["conv_spatial.parametrizations.weight.original"])  # fmt: skip
    broken = dict(old_state)
    broken["no.such.key"] = broken.pop("conv_spatial.weight")
    with pytest.raises(BrainpipeError, match="old.pt: .*retrain with this brainpipe"):
        load_checkpoint_model({"model_args": old_args, "model": broken}, "old.pt")


@pytest.mark.skipif(torchaudio_missing() is None, reason="the real torchaudio loads here")
def test_models_that_need_torchaudio_are_refused_in_one_line():
    from brainpipe.training.models import model_args

    with pytest.raises(BrainpipeError, match="torchaudio.* CUDA image"):
        build_model(model_args("FBCNet", {}, n_chans=4, n_times=400, n_outputs=2, sfreq=100.0))
