"""Each foundation model fine-tuned end to end through `brainpipe train`: a synthetic corpus,
a cache at the model's rate, random-initialised weights saved by `save_pretrained`, small
model_kwargs so that it stays a CPU test."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from test_foundation import save_random, write_position_bank

from brainpipe.cli import main
from brainpipe.preprocess import TCP_PAIRS

warnings.filterwarnings("ignore")

# Cache settings per model: rate, montage, window seconds, fine-tune mode.
CASES = {
    "Labram": (200, "referential", 5, "linear_probe"),
    "CBraMod": (200, "referential", 5, "full"),
    "BIOT": (200, "tcp", 5, "full"),
    "REVE": (200, "referential", 5, "last_blocks"),
    "EEGPT": (256, "referential", 4, "linear_probe"),
    "LUNA": (256, "referential", 5, "full"),
}
SETS = [
    "corpus.layout=tuab",
    "preprocess.h_freq=40",
    "preprocess.normalize=none",
    "cache.workers=1",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fm")
    raw, index = root / "raw", root / "index.npz"
    args = ["--layout", "tuab", "--out", str(raw), "--n-subjects", "12", "--seed", "0"]
    assert main(["synth", *args, "--duration", "20", "30"]) == 0
    assert main(["index", "--raw", str(raw), "--index", str(index), *_sets(SETS[0])]) == 0
    return root, index


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def caches(corpus) -> dict[tuple[int, str], Path]:
    root, index = corpus
    out = {}
    for sfreq, montage in sorted({(c[0], c[1]) for c in CASES.values()}):
        cache = root / f"cache_{sfreq}_{montage}.h5"
        sets = [*SETS, f"preprocess.sfreq={sfreq}", f"preprocess.montage={montage}"]
        assert (
            main(["build-cache", "--index", str(index), "--cache", str(cache), *_sets(*sets)]) == 0
        )
        out[(sfreq, montage)] = cache
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CASES))
def test_each_foundation_model_trains_from_local_weights(model, caches, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    sfreq, montage, seconds, mode = CASES[model]
    n_chans = 16 if model == "BIOT" else 19
    weights = save_random(model, tmp_path / "weights", n_chans, int(sfreq * seconds))
    if model == "REVE":
        write_position_bank(weights)
        monkeypatch.delenv("REVE_POSITIONS_PATH", raising=False)  # found beside the weights
    run = tmp_path / "run"
    sets = [
        *SETS, f"preprocess.sfreq={sfreq}", f"preprocess.montage={montage}",
        f"window.seconds={seconds}", f"window.stride_seconds={seconds}",
        f"train.model={model}", f"train.pretrained={weights}", f"train.finetune={mode}",
        "train.finetune_blocks=1", "train.epochs=1", "train.batch_size=8", "train.num_workers=0",
        "train.device=cpu", "train.max_steps_per_epoch=2", "train.val_fraction=0",
    ]  # fmt: skip
    cache = caches[(sfreq, montage)]
    assert main(["train", "--cache", str(cache), "--run-dir", str(run), *_sets(*sets)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pretrained"]["sha256"] and summary["pretrained"]["fresh_keys"] == []
    counts = summary["finetune"]
    assert counts["mode"] == mode
    assert (counts["trainable"] < counts["total"]) == (mode != "full")
    assert summary["eval"]["n_windows"] > 0
    # predict-side rebuild: the checkpoint's model_args rebuild the same adapter
    import torch

    from brainpipe.training.models import load_checkpoint_model

    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["model_args"]["input"]["scaling"] == summary["input_scaling"]
    load_checkpoint_model(ckpt, "last.pt")
    os.environ.pop("REVE_POSITIONS_PATH", None)


def test_tcp_names_used_by_the_e2e_cover_biot():
    names = {f"{a}-{b}" for a, b in TCP_PAIRS}
    assert len(names) == 22


@pytest.mark.slow
def test_a_probe_resumes_with_its_backbone_still_frozen(caches, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TQDM_DISABLE", "1")
    weights = save_random("Labram", tmp_path / "weights", 19, 1000)
    run = tmp_path / "run"
    sets = [
        *SETS, "preprocess.sfreq=200", "preprocess.montage=referential", "window.seconds=5",
        "window.stride_seconds=5", "train.model=Labram", f"train.pretrained={weights}",
        "train.finetune=linear_probe", "train.batch_size=8", "train.num_workers=0",
        "train.device=cpu", "train.max_steps_per_epoch=2", "train.val_fraction=0",
    ]  # fmt: skip
    cache = str(caches[(200, "referential")])
    base = ["train", "--cache", cache, "--run-dir", str(run)]
    assert main([*base, *_sets(*sets, "train.epochs=1")]) == 0
    first = torch.load(run / "last.pt", weights_only=True)["model"]
    assert main([*base, *_sets(*sets, "train.epochs=2"), "--resume"]) == 0
    second = torch.load(run / "last.pt", weights_only=True)
    assert second["epoch"] == 2
    changed = {k for k in first if not torch.equal(first[k], second["model"][k])}
    assert changed == {"model.final_layer.weight", "model.final_layer.bias"}
