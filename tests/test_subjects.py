"""Subject tasks (issue 12): samplers by subject, subject splits, pair/identification metrics,
`train.task=pairs|contrastive` end to end on a cache whose subjects carry signatures, and
`brainpipe embed`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import SFREQ, make_cache, small_config

from brainpipe.cli import main
from brainpipe.embeddingfile import read_embeddings
from brainpipe.errors import BrainpipeError
from brainpipe.metrics import subject_metrics
from brainpipe.samplers import PairBatchSampler, SubjectBatchSampler, carve_subjects


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


def test_pair_batches_shard_without_duplicate_anchors_and_hit_the_ratio():
    subject = np.repeat(np.arange(10), 20)
    batches = {
        rank: list(
            PairBatchSampler(subject, 16, same_fraction=0.25, seed=3, rank=rank, world_size=2)
        )  # fmt: skip
        for rank in (0, 1)
    }
    assert len(batches[0]) == len(batches[1]) == 100 // 16
    anchors = [b[:16] for r in (0, 1) for b in batches[r]]
    flat = np.concatenate(anchors)
    assert len(np.unique(flat)) == len(flat)  # no window anchors twice, on any rank
    for b in batches[0]:
        a, p = b[:16], b[16:]
        same = subject[a] == subject[p]
        assert same.sum() == 4 and not (a == p).any()
    s = PairBatchSampler(subject, 16, seed=3)
    s.set_epoch(1)
    again = PairBatchSampler(subject, 16, seed=3)
    again.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(next(iter(s)), next(iter(again)))  # resumable


def test_contrastive_batches_hold_k_windows_of_m_subjects():
    subject = np.repeat(np.arange(6), [9, 9, 9, 9, 9, 5])
    s = SubjectBatchSampler(subject, 12, 3, seed=0, world_size=2, rank=0)
    other = SubjectBatchSampler(subject, 12, 3, seed=0, world_size=2, rank=1)
    seen = []
    for b in [*s, *other]:
        assert len(b) == 12
        _, counts = np.unique(subject[b], return_counts=True)
        assert (counts % 3 == 0).all() and len(counts) >= 2
        seen += b.tolist()
    assert len(seen) == len(set(seen))
    with pytest.raises(BrainpipeError, match="contrastive batch needs two"):
        SubjectBatchSampler(subject, 5, 3)


def test_subject_carve_is_disjoint_and_deterministic():
    names = np.array([f"sub-{i:02d}" for i in range(20)])
    train, val, test = carve_subjects(names, 0.1, 0.2, seed=1)
    assert (len(train), len(val), len(test)) == (14, 2, 4)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    again = carve_subjects(names[::-1], 0.1, 0.2, seed=1)
    assert all((x == y).all() for x, y in zip((train, val, test), again, strict=True))
    assert not (carve_subjects(names, 0.1, 0.2, seed=2)[2] == test).all()
    with pytest.raises(BrainpipeError, match="add subjects"):
        carve_subjects(names[:5], 0.2, 0.2)


def test_subject_metrics_perfect_chance_and_undefined():
    rng = np.random.default_rng(0)
    subject = np.repeat(np.arange(8), 10)
    centres = rng.standard_normal((8, 16)) * 5
    good = subject_metrics(centres[subject] + rng.standard_normal((80, 16)) * 0.1, subject)
    assert good["eer"] < 0.01 and good["pair_auroc"] > 0.99 and good["identification_top1"] == 1
    noise = subject_metrics(rng.standard_normal((80, 16)), subject)
    assert 0.35 < noise["eer"] < 0.65 and noise["identification_top1"] < 0.4
    one = subject_metrics(rng.standard_normal((5, 4)), np.zeros(5))
    assert math.isnan(one["eer"]) and one["n_subjects"] == 1


# ---------------------------------------------------------------------------------------------
# End to end on a cache whose subjects have their own rhythm
# ---------------------------------------------------------------------------------------------

FAST = [
    "train.model_kwargs={n_filters_time: 8, n_filters_spat: 8, pool_time_length: 10, pool_time_stride: 5}",
    "train.num_workers=0",
    "train.device=cpu",
    "train.lr=0.005",
    "train.embedding_dim=16",
    "train.eval_split=''",
    "train.val_fraction=0.2",
    "train.test_fraction=0.3",
]


@pytest.fixture(scope="module")
def subjects_cache(tmp_path_factory):
    # No labels, one split: each subject's rhythm (3..17 Hz) is its signature.
    subjects = [(f"sub-{i:02d}", "", -1) for i in range(12)]
    path = tmp_path_factory.mktemp("subj") / "c.h5"
    return make_cache(path, subjects, signature=True, label_names=())


@pytest.mark.parametrize("task", ["pairs", "contrastive"])
def test_subject_task_learns_held_out_subjects(subjects_cache, tmp_path, task, capsys):
    run = tmp_path / "run"
    argv = ["train", "--cache", str(subjects_cache), "--run-dir", str(run)]
    for o in [*FAST, f"train.task={task}", "train.batch_size=32", "train.epochs=3",
              "train.windows_per_subject=4"]:  # fmt: skip
        argv += ["--set", o]
    argv += ["--set", f"preprocess.sfreq={SFREQ}", "--set", "preprocess.h_freq=20"]
    argv += ["--set", "window.seconds=2", "--set", "window.stride_seconds=2"]
    assert main(argv) == 0
    import json

    summary = json.loads((run / "summary.json").read_text())
    ev = summary["eval"]
    assert {"pair_auroc", "eer", "identification_top1", "n_subjects"} <= set(ev)
    assert ev["n_subjects"] == 4 and summary["val"]["n_subjects"] == 2  # held-out subjects
    assert ev["eer"] < 0.2, ev
    out = capsys.readouterr().out
    assert "eval eer" in out and "top1" in out
    from brainpipe.training.rundir import load_checkpoint

    best = load_checkpoint(run / "best.pt")
    vals = [h["val"]["eer"] for h in summary_history(run)]
    assert best["epoch"] == int(np.argmin(vals)) + 1 == summary["best_epoch"]
    # embed: every window of the cache, with recording, subject and start
    emb = tmp_path / "emb.h5"
    assert main(["embed", "--cache", str(subjects_cache), "--checkpoint", str(run / "best.pt"),
                 "--out", str(emb)]) == 0  # fmt: skip
    e = read_embeddings(emb)
    from brainpipe.cachefile import CacheReader

    windows = CacheReader(subjects_cache).windows
    assert e["embedding"].shape[1] == 16 and len(e) == len(windows["start"])
    np.testing.assert_array_equal(e["recording"], windows["recording"])
    assert set(e["subject"]) == {f"sub-{i:02d}" for i in range(12)}
    assert e.attrs["epoch"] == best["epoch"] and (e["start"] >= 0).all()
    assert not list(tmp_path.glob(".emb.h5.tmp-*"))


def summary_history(run):
    import json

    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_subject_task_without_enough_subjects_fails_before_work(tmp_path):
    path = make_cache(tmp_path / "c.h5", [("a", "", -1), ("b", "", -1)], label_names=())
    with pytest.raises(BrainpipeError, match="add subjects"):
        from brainpipe.training.train import train

        train(path, tmp_path / "run", small_config(*FAST, "train.task=pairs"))


def test_inspect_summarizes_meg_channels_by_type(tmp_path, capsys):
    from brainpipe.reporting import channel_type_summary
    from brainpipe.synthetic.plan import meg_channels

    names = list(meg_channels())[:306]
    assert channel_type_summary(names) == "306 MEG: 204 grad, 102 mag"
    assert channel_type_summary(names + ["EEG 001", "EOG 061"]).endswith("; 1 EEG, 1 EOG")
    assert channel_type_summary(["FP1", "FP2"]) is None


def _subject_cfg(*extra: str):
    return small_config(*FAST, "train.task=pairs", "train.batch_size=16", *extra)


def test_pairs_with_ring_workers_and_resume_match_a_straight_run(subjects_cache, tmp_path):
    import torch

    from brainpipe.training.rundir import load_checkpoint
    from brainpipe.training.train import train

    straight = train(subjects_cache, tmp_path / "a", _subject_cfg("train.epochs=2"))
    # Workers hand pair batches (2 x 16 windows) over in the batch ring; a resume replays epoch 2.
    train(subjects_cache, tmp_path / "b", _subject_cfg("train.epochs=1", "train.num_workers=2"))
    resumed = train(
        subjects_cache, tmp_path / "b", _subject_cfg("train.epochs=2", "train.num_workers=2"),
        resume=True,
    )  # fmt: skip
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert straight["eval"] == resumed["eval"]


@pytest.mark.slow
def test_pairs_under_ddp_two_processes(subjects_cache, tmp_path):
    import json
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os
            from helpers import small_config
            from brainpipe.training.train import train
            s = train({str(subjects_cache)!r}, {str(tmp_path / "run")!r},
                      small_config(*{[*FAST, "train.task=pairs", "train.batch_size=8", "train.epochs=1"]!r}))
            with open({str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.json", "w") as f:
                json.dump(s["eval"], f)
            """
        )
    )
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*cmd, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["n_subjects"] == 4  # all held-out windows, gathered
