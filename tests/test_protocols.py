"""Issue 22's protocols and metrics: multi-class metrics against scikit-learn, model selection
by a configured metric, subject-wise folds, aggregation over seeds and folds, the corpus's own
validation split, and seeds x folds end to end from one command (tiny caches, CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import make_cache, small_config
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from brainpipe.cachefile import CacheReader
from brainpipe.cli import main
from brainpipe.errors import BrainpipeError
from brainpipe.metrics import compute_metrics, selection_score, subject_selection_score
from brainpipe.protocols import (
    aggregate,
    aggregate_metrics,
    assign_folds,
    grid,
    parse_seeds,
    plan_splits,
)

# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def _random_probs(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y


@pytest.mark.parametrize("k", [2, 3, 6])
def test_window_metrics_match_sklearn(k):
    probs, y = _random_probs(300, k, seed=k)
    rec = np.arange(300) // 10  # 30 recordings of 10 windows, labels mixed within them
    m = compute_metrics(probs, y, rec, task="events")
    pred = probs.argmax(1)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["cohen_kappa"] == pytest.approx(cohen_kappa_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    want_auc = (
        roc_auc_score(y, probs[:, 1])
        if k == 2
        else roc_auc_score(np.eye(k)[y], probs, average="macro")
    )
    assert m["auroc"] == pytest.approx(want_auc)
    want_ap = (
        average_precision_score(y, probs[:, 1])
        if k == 2
        else average_precision_score(np.eye(k)[y], probs, average="macro")
    )
    assert m["auprc"] == pytest.approx(want_ap)
    # Recordings holding several classes have no recording label: no recording metrics.
    assert math.isnan(m["recording_balanced_accuracy"]) and math.isnan(m["recording_cohen_kappa"])
    assert m["recording_confusion_matrix"] is None


def test_recording_metrics_where_each_recording_has_one_label():
    probs, y = _random_probs(240, 3, seed=7)
    y = np.repeat(np.arange(24) % 3, 10)  # 24 recordings, one class each
    rec = np.repeat(np.arange(24), 10)
    probs = 0.6 * probs + 0.4 * np.eye(3)[y] * (np.arange(240) % 3 != 0)[:, None]
    m = compute_metrics(probs, y, rec, task="events")
    rec_p = probs.reshape(24, 10, 3).mean(1)
    rec_y = y[::10]
    assert m["recording_balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(rec_y, rec_p.argmax(1))
    )
    assert m["recording_f1_weighted"] == pytest.approx(
        f1_score(rec_y, rec_p.argmax(1), average="weighted")
    )
    assert m["recording_cohen_kappa"] == pytest.approx(cohen_kappa_score(rec_y, rec_p.argmax(1)))
    assert m["recording_confusion_matrix"] == confusion_matrix(rec_y, rec_p.argmax(1)).tolist()
    assert m["n_recordings"] == 24


def test_confusion_matrix_names_every_class_of_the_cache():
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]])
    m = compute_metrics(probs, np.array([0, 0]), np.array([0, 1]))
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert math.isnan(m["auroc"])


def test_select_by_a_configured_metric():
    a = {"balanced_accuracy": 0.9, "cohen_kappa": 0.2, "loss": 0.5}
    b = {"balanced_accuracy": 0.8, "cohen_kappa": 0.4, "loss": 0.4}
    assert selection_score(a) > selection_score(b)  # the default: balanced accuracy
    assert selection_score(b, "cohen_kappa") > selection_score(a, "cohen_kappa")
    assert selection_score(b, "loss") > selection_score(a, "loss")  # lower is better
    seiz = {"balanced_accuracy": 0.5, "loss": 1.0, "events": {"mean_sensitivity": 0.7}}
    assert selection_score(seiz)[0] == 0.7
    assert selection_score(seiz, "events.mean_sensitivity")[0] == 0.7
    s1, s2 = {"eer": 0.1, "identification_top1": 0.5}, {"eer": 0.2, "identification_top1": 0.9}
    assert subject_selection_score(s1) > subject_selection_score(s2)
    assert subject_selection_score(s2, "identification_top1") > subject_selection_score(
        s1, "identification_top1"
    )


def test_subject_tasks_refuse_folds_and_val_split():
    with pytest.raises(BrainpipeError, match="are for train.task=classify"):
        small_config("train.task=pairs", "train.folds=3")


def test_unknown_select_by_fails_in_one_line():
    from brainpipe.training.objectives import objective_for

    with pytest.raises(BrainpipeError, match="train.select_by='kappa' is not a metric"):
        objective_for("classify", select_by="kappa")
    assert objective_for("classify", select_by="cohen_kappa").score(
        {"cohen_kappa": 0.3, "loss": 1.0}
    ) == [0.3, -1.0]


# ---------------------------------------------------------------------------------------------
# Folds, grid, aggregation
# ---------------------------------------------------------------------------------------------


def test_folds_never_split_a_subject_are_deterministic_and_balanced():
    subjects = [f"sub-{i:03d}" for i in range(23)]
    classes = [i % 2 for i in range(23)]
    a = assign_folds(subjects, 5, seed=3, classes=classes)
    assert set(a) == set(subjects) and set(a.values()) == set(range(5))  # each subject once
    sizes = np.bincount(list(a.values()))
    assert sizes.max() - sizes.min() <= 1
    assert a == assign_folds(list(reversed(subjects)), 5, seed=3, classes=classes[::-1])
    assert a != assign_folds(subjects, 5, seed=4, classes=classes)
    for f in range(5):  # stratified: each fold gets its share of both classes
        got = [c for s, c in zip(subjects, classes, strict=True) if a[s] == f]
        assert 1 <= sum(got) <= 3
    # A subject keeps its fold when another joins the corpus, for the same seed (keyed hash).
    b = assign_folds([*subjects, "sub-999"], 2, seed=0)
    c = assign_folds(subjects, 2, seed=0)
    assert sum(b[s] != c[s] for s in subjects) <= len(subjects) // 2 + 1
    with pytest.raises(BrainpipeError, match="--folds 5"):
        assign_folds(subjects[:4], 5)


def test_seeds_and_grid_names():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("0-4") == [0, 1, 2, 3, 4]
    for bad in ("a", "1,1", ""):
        with pytest.raises(BrainpipeError, match="--seeds"):
            parse_seeds(bad)
    assert [c.name for c in grid([0, 1])] == ["seed-0", "seed-1"]
    assert [c.name for c in grid(None, 2)] == ["fold-0", "fold-1"]
    assert [c.name for c in grid([3], 2)] == ["seed-3-fold-0", "seed-3-fold-1"]
    assert grid(None, 2, base_seed=7)[1].seed == 7


def test_aggregate_mean_and_std_per_split_and_level():
    runs = {
        "seed-0": {
            "eval": {"balanced_accuracy": 0.8, "recording_balanced_accuracy": 1.0,
                     "confusion_matrix": [[4, 1], [0, 5]], "events": {"mean_sensitivity": 0.5}},
            "val": {"balanced_accuracy": 0.7}, "best_epoch": 2, "epochs": 3,
        },
        "seed-1": {
            "eval": {"balanced_accuracy": 0.6, "recording_balanced_accuracy": None,
                     "confusion_matrix": [[2, 3], [2, 3]], "events": {"mean_sensitivity": 0.7}},
            "val": {"balanced_accuracy": 0.9}, "best_epoch": 3, "epochs": 3,
        },
    }  # fmt: skip
    s = aggregate(runs, seeds=[0, 1])
    ev = s["eval"]
    assert ev["balanced_accuracy"] == {
        "mean": pytest.approx(0.7),
        "std": pytest.approx(0.1),
        "n": 2,
    }
    assert ev["recording_balanced_accuracy"] == {"mean": 1.0, "std": 0.0, "n": 1}  # NaN left out
    assert ev["confusion_matrix"]["mean"] == [[3.0, 2.0], [1.0, 4.0]]
    assert ev["events"]["mean_sensitivity"]["mean"] == pytest.approx(0.6)
    assert s["val"]["balanced_accuracy"]["std"] == pytest.approx(0.1)
    assert s["protocol"] == {"seeds": [0, 1], "folds": 0, "n_runs": 2, "runs": ["seed-0", "seed-1"]}
    assert s["runs"]["seed-1"]["eval"]["balanced_accuracy"] == 0.6
    assert aggregate_metrics([{"name": "x"}, {"name": "y"}]) == {}  # text is not averaged


# ---------------------------------------------------------------------------------------------
# Splits: the corpus's own validation split, folds
# ---------------------------------------------------------------------------------------------

SUBJECTS = (
    [(f"s{i:02d}", "train", i % 2) for i in range(8)]
    + [(f"d{i:02d}", "dev", i % 2) for i in range(4)]
    + [(f"e{i:02d}", "eval", i % 2) for i in range(4)]
)


@pytest.fixture(scope="module")
def dev_cache(tmp_path_factory) -> Path:
    return make_cache(
        tmp_path_factory.mktemp("protocols") / "cache.h5",
        SUBJECTS,
        recordings_per_subject=1,
        seconds=12.0,
        cfg=small_config(),
    )


def test_val_split_uses_the_corpus_split_and_carving_stays_the_default(dev_cache):
    with CacheReader(dev_cache) as r:
        plan = plan_splits(r, small_config("train.val_split=dev"))
        assert plan.val.split == "dev" and plan.val.subjects is None
        assert plan.train.split == "train" and plan.train.subjects is None
        assert plan.eval.split == "eval"
        carved = plan_splits(r, small_config())
        assert carved.val.split == "train" and set(carved.val.subjects) < {
            f"s{i:02d}" for i in range(8)
        }
        with pytest.raises(BrainpipeError, match="no recordings in split 'val'"):
            plan_splits(r, small_config("train.val_split=val"))
        with pytest.raises(BrainpipeError, match="validation split of its own"):
            plan_splits(r, small_config("train.val_split=eval"))


def test_fold_plan_holds_out_one_fold_of_train_subjects(dev_cache):
    with CacheReader(dev_cache) as r:
        held = []
        for f in range(4):
            cfg = small_config("train.folds=4", f"train.fold={f}", "train.val_split=dev")
            plan = plan_splits(r, cfg)
            assert plan.eval.split == "train" and plan.val.split == "dev"
            assert not set(plan.eval.subjects) & set(plan.train.subjects)
            assert set(plan.eval.subjects) | set(plan.train.subjects) == {
                f"s{i:02d}" for i in range(8)
            }
            held.append(set(plan.eval.subjects.tolist()))
        assert sum(len(h) for h in held) == 8 and len(set().union(*held)) == 8
        every = plan_splits(r, small_config("train.folds=4", "train.fold_splits=all"))
        assert every.eval.split is None and len(every.eval.subjects) == 4  # 16 subjects / 4


# ---------------------------------------------------------------------------------------------
# Seeds x folds from one command
# ---------------------------------------------------------------------------------------------

FAST = [
    "preprocess.sfreq=50",
    "preprocess.h_freq=20",
    "window.seconds=2",
    "window.stride_seconds=2",
    "train.model_kwargs={n_filters_time: 4, n_filters_spat: 4, pool_time_length: 10, pool_time_stride: 5}",
    "train.batch_size=32",
    "train.num_workers=0",
    "train.device=cpu",
    "train.epochs=1",
    "train.val_split=dev",
]


def test_seeds_by_folds_train_aggregate_and_resume(dev_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run = tmp_path / "grid"
    argv = ["train", "--cache", str(dev_cache), "--run-dir", str(run), "--seeds", "0,1"]
    argv += ["--folds", "2", *[x for o in FAST for x in ("--set", o)]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 runs, seeds [0, 1], 2 subject-wise folds" in out and "eval: balanced_accuracy" in out
    cells = ["seed-0-fold-0", "seed-0-fold-1", "seed-1-fold-0", "seed-1-fold-1"]
    for c in cells:
        assert (run / c / "last.pt").exists() and (run / c / "predictions.npz").exists()
    s = json.loads((run / "summary.json").read_text())
    assert s["protocol"]["runs"] == cells and s["protocol"]["seeds"] == [0, 1]
    for split in ("eval", "val"):
        for key in ("balanced_accuracy", "cohen_kappa", "f1_weighted", "recording_auroc"):
            assert set(s[split][key]) == {"mean", "std", "n"}, (split, key)
    values = [s["runs"][c]["eval"]["balanced_accuracy"] for c in cells]
    assert s["eval"]["balanced_accuracy"]["mean"] == pytest.approx(np.mean(values))
    assert s["eval"]["balanced_accuracy"]["std"] == pytest.approx(np.std(values))
    # Each fold's eval is its held-out train subjects, the two folds cover them all once.
    plan = json.loads((run / "protocol.json").read_text())
    f0, f1 = (set(s["runs"][f"seed-0-fold-{f}"]["fold_subjects"]) for f in (0, 1))
    assert not f0 & f1 and f0 | f1 == {f"s{i:02d}" for i in range(8)} == set(
        plan["fold_of_subject"]
    )
    cfg = json.loads(json.dumps(__import__("torch").load(run / cells[1] / "last.pt")["config"]))
    assert cfg["train"]["fold"] == 1 and cfg["train"]["folds"] == 2
    # A second run needs --resume; with it, finished cells are kept and the summary rewritten.
    assert main(argv) == 1
    assert "pass --resume" in capsys.readouterr().err
    mtime = (run / cells[0] / "last.pt").stat().st_mtime_ns
    assert main([*argv, "--resume"]) == 0
    assert "seed-0-fold-0: finished, kept" in capsys.readouterr().out
    assert (run / cells[0] / "last.pt").stat().st_mtime_ns == mtime
    # One cell (a Slurm array task), then the aggregate step alone.
    (run / "summary.json").unlink()
    (run / cells[3] / "summary.json").unlink()
    assert main([*argv, "--aggregate"]) == 1
    assert "1 of 4 runs are not finished (seed-1-fold-1)" in capsys.readouterr().err
    assert main([*argv, "--cell", "3", "--resume"]) == 0
    assert main([*argv, "--aggregate"]) == 0
    assert json.loads((run / "summary.json").read_text())["protocol"]["n_runs"] == 4


def test_predict_tune_on_val_is_the_validation_split_train_used(dev_cache):
    from brainpipe.training.predict import split_dataset

    with CacheReader(dev_cache) as r:
        own = split_dataset(r, small_config("train.val_split=dev"), "val")
        assert own.split == "dev" and set(own.subjects().tolist()) == {
            f"d{i:02d}" for i in range(4)
        }
        carved = split_dataset(r, small_config(), "val")
        assert carved.split == "train" and set(carved.subjects().tolist()) <= {
            f"s{i:02d}" for i in range(8)
        }
