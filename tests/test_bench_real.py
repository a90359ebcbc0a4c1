"""scripts/bench_real.py's pure parts: the protocol's split, the manifest and config it writes
(read back by brainpipe's own config loader and channel finder on the real eegmat files), the
model arguments for either braindecode API, the aggregation and the table."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import sys
from pathlib import Path

import pytest

from brainpipe.channels import locate
from brainpipe.config import load_config
from brainpipe.corpus import read_manifest
from brainpipe.edf import read_header

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench_real.py"
spec = importlib.util.spec_from_file_location("bench_real", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_real"] = bench  # its dataclass looks its module up
spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def eegmat() -> Path:
    if not bench.DEFAULT_DATA.is_dir():
        pytest.fail(f"{bench.DEFAULT_DATA} is missing (../shared/realdata/eegmat, see its README)")
    return bench.DEFAULT_DATA


def test_protocol_split_on_the_real_file_names(eegmat):
    rows = bench.manifest_rows([p.name for p in eegmat.glob("*.edf")])
    by_split: dict[str, set[str]] = {}
    for r in rows:
        by_split.setdefault(r["split"], set()).add(r["subject"])
    assert by_split["train"] == {f"Subject{i:02d}" for i in range(28)}
    assert by_split["val"] == {f"Subject{i:02d}" for i in range(28, 32)}
    assert by_split["test"] == {f"Subject{i:02d}" for i in range(32, 36)}
    assert {(r["path"][-5], r["label"]) for r in rows} == {("1", "rest"), ("2", "task")}


def test_manifest_rows_refuses_other_names():
    with pytest.raises(ValueError, match="not an eegmat file name"):
        bench.manifest_rows(["Subject00_3.edf"])


def test_written_config_loads_and_finds_the_20_channels_in_order(eegmat, tmp_path):
    args = argparse.Namespace(
        model="ShallowFBCSPNet", epochs=2, batch_size=64, workers=0,
        balanced_sampling=False, val_fraction=0.2,
    )  # fmt: skip
    opts = bench.protocol_options()
    cfg = load_config(bench.write_inputs(tmp_path, eegmat, args, opts))
    p = cfg.preprocess
    assert (p.sfreq, p.l_freq, p.h_freq, p.notch_freqs, p.normalize) == (
        200.0,
        None,
        None,
        (),
        "none",
    )
    assert (cfg.window.seconds, cfg.window.stride_seconds) == (5.0, 5.0)
    assert cfg.train.eval_split == "test"
    assert getattr(cfg.train, "val_split", "val" if opts["val_split"] else "") == (
        "val" if opts["val_split"] else ""
    )
    manifest = read_manifest(cfg.corpus.manifest)
    assert len(manifest) == 72 and manifest["Subject31_2.edf"]["split"] == "val"
    labels = read_header(eegmat / "Subject00_1.edf").labels
    found = locate(labels, p.channels)
    assert found == [labels.index(c) for c in bench.CHANNELS]  # EEG A2-A1 included, ECG not


@pytest.mark.parametrize("name", ["ShallowFBCSPNet", "EEGNetv4", "Deep4Net"])
def test_model_kwargs_build_the_installed_braindecode_model(name):
    import torch

    bench._braindecode_importable()
    import braindecode.models as bm

    cls = getattr(bm, name, None) or getattr(bm, bench.RENAMED.get(name, name), None)
    if cls is None:
        pytest.skip(f"braindecode has no {name} under that name")
    kwargs = bench.model_kwargs(inspect.signature(cls).parameters, 20, 1000, 2, 200.0)
    model = cls(**kwargs).eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 20, 1000)).shape == (3, 2)


def test_model_kwargs_use_the_old_names_where_the_class_has_only_those():
    old = ["in_chans", "n_classes", "input_window_samples", "final_conv_length"]
    got = bench.model_kwargs(old, 20, 1000, 2, 200.0)
    assert got == {
        "in_chans": 20, "n_classes": 2, "input_window_samples": 1000, "final_conv_length": "auto",
    }  # fmt: skip


def test_parse_seeds():
    assert bench.parse_seeds("5") == [0, 1, 2, 3, 4]
    assert bench.parse_seeds("3,7") == [3, 7]
    with pytest.raises(ValueError):
        bench.parse_seeds("1,1")
    with pytest.raises(ValueError):
        bench.parse_seeds("0")


def test_mean_std_is_numpys_population_std():
    import numpy as np

    vals = [0.6, 0.7, 0.65]
    assert bench.mean_std(vals) == pytest.approx((np.mean(vals), np.std(vals)))
    assert bench.mean_std([0.5]) == (0.5, 0.0)


def test_selection_prefers_accuracy_then_loss_and_nan_is_worst():
    a = {"balanced_accuracy": 0.7, "loss": 0.9}
    b = {"balanced_accuracy": 0.7, "loss": 0.5}
    c = {"balanced_accuracy": math.nan, "loss": 0.1}
    assert max([a, b, c], key=bench.selection_key) is b
    assert bench.selection_key(c) < bench.selection_key(a)


def test_table_and_ratios():
    runs = [{"balanced_accuracy": v, "auroc": v, "auprc": v} for v in (0.6, 0.7)]
    rows = [
        bench.side_summary("brainpipe", runs, bench.Clock(10, 20), bench.Clock(30, 60)),
        bench.side_summary("braindecode", runs, bench.Clock(20, 40), bench.Clock(60, 120)),
    ]
    text = bench.render_table(rows)
    assert "0.650 ± 0.050" in text
    assert "wall time: prep 0.50x, train 0.50x, total 0.50x" in text
    assert "CPU time: prep 0.50x, train 0.50x, total 0.50x" in text
    assert "balanced accuracy: +0.000 (standard error 0.071; 2 and 2 seeds)" in text


def test_mean_difference_and_its_standard_error():
    import numpy as np

    a = [{"auroc": v} for v in (0.70, 0.74, 0.66)]
    b = [{"auroc": v} for v in (0.60, 0.64)]
    diff, se = bench.mean_difference(a, b, "auroc")
    assert diff == pytest.approx(0.70 - 0.62)
    want = np.sqrt(np.var([0.70, 0.74, 0.66], ddof=1) / 3 + np.var([0.60, 0.64], ddof=1) / 2)
    assert se == pytest.approx(want)
    assert math.isnan(bench.mean_difference(a[:1], b, "auroc")[1])
