"""The predict stage and the TUSZ path around it: hypotheses from a checkpoint, references from a
cache, event metrics in training, and the demo's check that the detector finds most seizures.

The end-to-end test runs what `make demo-tusz` runs (synthetic TUSZ corpus -> index ->
build-cache -> train -> predict -> score), smaller; the others use small real caches written by
the cache format's writer (`helpers.make_cache`) and checkpoints of untrained models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import SFREQ, make_cache, small_config

from brainpipe.annotations import Event, read_annotations, write_hypothesis
from brainpipe.cachefile import CacheReader
from brainpipe.cli import main
from brainpipe.config import load_config
from brainpipe.errors import BrainpipeError
from brainpipe.metrics import event_metrics, selection_score
from brainpipe.scoring import cache_references
from brainpipe.training.models import build_model, model_args
from brainpipe.training.objectives import class_weights, train_step
from brainpipe.training.predict import predict
from brainpipe.training.rundir import save_checkpoint
from brainpipe.training.train import train

ROOT = Path(__file__).resolve().parents[1]
TUSZ_SMOKE = ROOT / "configs" / "tusz_smoke.yaml"
FAST = [
    "train.model_kwargs={n_filters_time: 8, n_filters_spat: 8, pool_time_length: 10, pool_time_stride: 5}",
    "train.batch_size=32",
    "train.num_workers=0",
    "train.device=cpu",
]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


# Recording k of subject s has a seizure from 4 to 12 s when k is odd (20-23 s recordings).
SUBJECTS = [(f"s{i}", "train", -1) for i in range(6)] + [(f"e{i}", "eval", -1) for i in range(3)]


def seizure_cache(path: Path, cfg=None) -> Path:
    n_rec = 2 * len(SUBJECTS)
    odd = np.arange(1, n_rec, 2)
    events = {
        "recording": odd,
        "onset_s": np.full(len(odd), 4.0),
        "offset_s": np.full(len(odd), 12.0),
        "label": np.array(["cpsz"] * len(odd)),
    }
    return make_cache(
        path,
        SUBJECTS,
        cfg=cfg or small_config(*FAST),
        label_names=("bckg", "seiz"),
        events=events,
    )


@pytest.fixture(scope="module")
def tusz_cache(tmp_path_factory) -> Path:
    return seizure_cache(tmp_path_factory.mktemp("predict") / "tusz.h5")


def untrained_checkpoint(path: Path, cache: Path, cfg) -> Path:
    """A checkpoint as `train` writes it (the keys predict reads), of an untrained model."""
    with CacheReader(cache) as r:
        margs = model_args(
            cfg.train.model,
            cfg.train.model_kwargs,
            r.n_channels,
            int(round(cfg.window.seconds * r.sfreq)),
            len(r.label_names),
            r.sfreq,
        )
    torch.manual_seed(0)
    model = build_model(margs)
    save_checkpoint(
        {"model": model.state_dict(), "model_args": margs, "config": cfg.to_dict()}, path
    )
    return path


# ---------------------------------------------------------------------------------------------
# predict: outputs
# ---------------------------------------------------------------------------------------------


def test_predict_writes_windows_and_one_hypothesis_per_recording(tusz_cache, tmp_path):
    cfg = small_config(*FAST)
    ckpt = untrained_checkpoint(tmp_path / "best.pt", tusz_cache, cfg)
    out = tmp_path / "pred"
    s = predict(tusz_cache, ckpt, out, "eval", overrides=["postprocess.threshold=0"])

    reader = CacheReader(tusz_cache)
    r = reader.recordings
    rows = np.flatnonzero(r["split"] == "eval")
    assert s["n_recordings"] == len(rows) == 6
    # threshold 0: every window is positive, so each recording is one event over its windows
    assert s["n_events"] == 6
    for row in rows.tolist():
        hyp = out / "hyp" / Path(r["path"][row]).with_suffix(".csv_bi")
        ann = read_annotations(hyp)
        length_s = r["length"][row] / SFREQ
        assert ann.duration_s == pytest.approx(length_s, abs=1e-4)
        (ev,) = ann.events
        n_windows = (r["length"][row] - 100) // 100 + 1  # 2 s windows, 2 s stride at 50 Hz
        assert (ev.onset_s, ev.offset_s) == pytest.approx((0.0, 2.0 * n_windows), abs=1e-4)
        assert 0 <= ev.confidence <= 1

    w = np.load(out / "windows.npz")
    assert len(w["prob"]) == s["n_windows"] == int(((r["length"][rows] - 100) // 100 + 1).sum())
    assert np.all((w["prob"] >= 0) & (w["prob"] <= 1))
    assert float(w["window_s"]) == 2.0
    first = w["recording"] == rows[0]
    assert np.array_equal(w["start_s"][first], 2.0 * np.arange(first.sum()))
    assert set(w["name"].tolist()) == {Path(p).stem for p in r["path"][rows].tolist()}
    pp = json.loads((out / "postprocess.json").read_text())
    assert pp["threshold"] == 0 and pp["source"] == {"from": "config"}
    assert json.loads((out / "predict.json").read_text())["windows_per_s"] > 0

    # the hypotheses pair with the cache's references in `brainpipe score`
    assert main(["score", "--ref", str(tusz_cache), "--hyp", str(out / "hyp"), "--json",
                 "--method", "nedc-ovlp"]) == 0  # fmt: skip


def test_predict_refuses_bad_input(tusz_cache, tmp_path, capsys):
    cfg = small_config(*FAST)
    ckpt = untrained_checkpoint(tmp_path / "best.pt", tusz_cache, cfg)
    with pytest.raises(BrainpipeError, match="--tune-on eval is the split being predicted"):
        predict(tusz_cache, ckpt, tmp_path / "p", "eval", tune_on="eval")
    with pytest.raises(BrainpipeError, match="no recordings in split 'dev'"):
        predict(tusz_cache, ckpt, tmp_path / "p", "dev")
    abnormal = make_cache(tmp_path / "tuab.h5", cfg=cfg)
    with pytest.raises(BrainpipeError, match="needs a seizure cache"):
        predict(abnormal, ckpt, tmp_path / "p")
    with pytest.raises(BrainpipeError, match="postprocess.threshold"):
        predict(tusz_cache, ckpt, tmp_path / "p", overrides=["postprocess.threshold=1.5"])
    torch.save({"weights": 1}, tmp_path / "other.pt")
    code = main(["predict", "--cache", str(tusz_cache), "--checkpoint", str(tmp_path / "other.pt"),
                 "--out", str(tmp_path / "p")])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other.pt" in err and "brainpipe train" in err


def test_tune_on_a_validation_split_records_its_choice(tusz_cache, tmp_path):
    cfg = small_config(*FAST, "train.val_fraction=0.4")
    ckpt = untrained_checkpoint(tmp_path / "best.pt", tusz_cache, cfg)
    s = predict(tusz_cache, ckpt, tmp_path / "pred", "eval", tune_on="val")
    pp = json.loads((tmp_path / "pred" / "postprocess.json").read_text())
    assert pp["source"]["from"] == "--tune-on val" and pp["source"]["settings_tried"] > 100
    assert s["postprocess"] == {k: v for k, v in pp.items() if k != "source"}


# ---------------------------------------------------------------------------------------------
# score --ref CACHE
# ---------------------------------------------------------------------------------------------


def test_score_against_the_events_stored_in_a_cache(tusz_cache, tmp_path, capsys):
    reader = CacheReader(tusz_cache)
    refs = cache_references(reader)
    r = reader.recordings
    # eval recordings e0_s001_t000 (no seizure) and e0_s001_t001 (seizure 4-12 s)
    d0, d1 = (refs.durations_s[refs.names.index(n)] for n in ("e0_s001_t000", "e0_s001_t001"))
    assert d1 == pytest.approx(r["length"][refs.names.index("e0_s001_t001")] / SFREQ)
    hyp = tmp_path / "hyp"
    write_hypothesis(hyp / "e0_s001_t000.csv_bi", [Event(1.0, 3.0, "seiz")], d0)  # 1 FA
    write_hypothesis(hyp / "e0_s001_t001.csv_bi", [Event(11.0, 15.0, "seiz")], d1)  # a hit
    assert main(["score", "--ref", str(tusz_cache), "--hyp", str(hyp), "--method",
                 "nedc-ovlp", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    seiz = out["labels"]["seiz"]
    assert (seiz["targets"], seiz["hits"], seiz["misses"], seiz["false_alarms"]) == (1, 1, 0, 1)
    assert out["duration_s"] == pytest.approx(d0 + d1)
    assert seiz["fa_per_24h"] == pytest.approx(86400 / (d0 + d1))
    assert out["unpaired_references"] == 4  # the other eval recordings; train ones don't count

    write_hypothesis(hyp / "e0_s001_t001.csv_bi", [], d1 + 5)
    assert main(["score", "--ref", str(tusz_cache), "--hyp", str(hyp)]) == 1
    assert "differs from the reference's" in capsys.readouterr().err
    write_hypothesis(hyp / "zz_s001_t000.csv_bi", [], 10.0)
    assert main(["score", "--ref", str(tusz_cache), "--hyp", str(hyp)]) == 1
    assert "have no reference in" in capsys.readouterr().err
    tuab = make_cache(tmp_path / "tuab.h5")
    assert main(["score", "--ref", str(tuab), "--hyp", str(hyp)]) == 1
    assert "holds no seizure events" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Event metrics and best.pt
# ---------------------------------------------------------------------------------------------


def test_event_metrics_by_hand(tusz_cache):
    reader = CacheReader(tusz_cache)
    refs = cache_references(reader)
    rows = refs.rows[np.array(refs.splits) == "eval"]
    # 2 s windows every 2 s; probability 1 exactly on windows inside 4-12 s of odd recordings
    rec, starts, prob = [], [], []
    for row in rows.tolist():
        n = (reader.recordings["length"][row] - 100) // 100 + 1
        st = 2.0 * np.arange(n)
        rec.append(np.full(n, row))
        starts.append(st)
        prob.append(((st >= 4) & (st + 2 <= 12) & (row % 2 == 1)).astype(float))
    rec, starts, prob = map(np.concatenate, (rec, starts, prob))
    pp = load_config(None, ["postprocess.smooth_windows=1", "postprocess.min_duration_s=0"])
    m = event_metrics(prob, rec, starts, 2.0, refs, pp.postprocess)
    assert m["method"] == "nedc-ovlp" and m["n_recordings"] == 6
    assert (m["sensitivity"], m["fa_per_24h"], m["mean_sensitivity"]) == (1.0, 0.0, 1.0)
    assert set(m["sensitivity_at_fa_per_24h"]) == {"1", "2.5", "5", "10"}
    # a detector that fires on every even (seizure-free) recording instead
    wrong = ((rec % 2 == 0) & (starts < 4)).astype(float)
    m = event_metrics(wrong, rec, starts, 2.0, refs, pp.postprocess)
    assert m["sensitivity"] == 0.0 and m["fa_per_24h"] == pytest.approx(3 * 86400 / m["duration_s"])
    assert m["mean_sensitivity"] == 0.0
    # best.pt: the event metric outranks balanced accuracy and loss
    good = {"balanced_accuracy": 0.6, "loss": 0.9, "events": {"mean_sensitivity": 0.9}}
    bad = {"balanced_accuracy": 0.9, "loss": 0.1, "events": {"mean_sensitivity": 0.5}}
    assert selection_score(good) > selection_score(bad)


def test_pos_weight_weights_the_seizure_windows_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 5, 2))
    x = torch.randn(8, 5, 3).half()  # (B, T, C) as the loader hands it
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    with torch.no_grad():
        nll = F.cross_entropy(model(x.float().transpose(1, 2)), y, reduction="none")
    w = class_weights(4.0, ("bckg", "seiz"), torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    loss, _ = train_step(model, opt, sched, (x, y), torch.device("cpu"), False, None, w)
    expected = (nll[:6].sum() + 4 * nll[6:].sum()) / (6 + 4 * 2)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) != pytest.approx(float(nll.mean()), rel=1e-3)
    assert class_weights(1.0, ("bckg", "seiz"), torch.device("cpu")) is None
    with pytest.raises(BrainpipeError, match="two-class task"):
        class_weights(2.0, ("a", "b", "c"), torch.device("cpu"))
    with pytest.raises(BrainpipeError, match="train.pos_weight"):
        load_config(None, ["train.pos_weight=0"])


def test_train_on_a_seizure_cache_reports_events(tusz_cache, tmp_path):
    cfg = small_config(*FAST, "train.epochs=1", "train.pos_weight=3")
    s = train(tusz_cache, tmp_path / "run", cfg)
    ev = s["eval"]["events"]
    assert ev["method"] == "nedc-ovlp"
    assert set(ev["sensitivity_at_fa_per_24h"]) == {"1", "2.5", "5", "10"}
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["val"]["events"]["n_recordings"] > 0


# ---------------------------------------------------------------------------------------------
# The demo: the detector finds most seizures
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_tusz_detects_most_seizures(tmp_path, capsys):
    """`make demo-tusz`, smaller: OVLP sensitivity >= 0.8 at <= 30 FA/24h on the eval split."""
    raw, cache, run, pred = (tmp_path / p for p in ("raw", "cache.h5", "run", "pred"))
    conf = ["--config", str(TUSZ_SMOKE)]
    assert main(["synth", "--layout", "tusz", "--out", str(raw), "--n-subjects", "20",
                 "--seed", "1"]) == 0  # fmt: skip
    assert main(["index", "--raw", str(raw), "--index", str(tmp_path / "i.npz"), *conf]) == 0
    assert main(["build-cache", "--index", str(tmp_path / "i.npz"), "--cache", str(cache),
                 *conf]) == 0  # fmt: skip
    # eval_split '': predict scores eval here, the epochs need not (half the inference)
    assert main(["train", "--cache", str(cache), "--run-dir", str(run), *conf,
                 "--set", "train.eval_split="]) == 0  # fmt: skip
    assert main(["predict", "--cache", str(cache), "--checkpoint", str(run / "best.pt"),
                 "--split", "eval", "--out", str(pred), "--tune-on", "dev"]) == 0  # fmt: skip
    capsys.readouterr()
    # scored against the corpus's own annotation files, as an external scorer would
    assert main(["score", "--ref", str(raw / "edf" / "eval"), "--hyp", str(pred / "hyp"),
                 "--method", "nedc-ovlp", "--json"]) == 0  # fmt: skip
    seiz = json.loads(capsys.readouterr().out)["labels"]["seiz"]
    assert seiz["targets"] >= 8
    assert seiz["sensitivity"] >= 0.8 and seiz["fa_per_24h"] <= 30, seiz
