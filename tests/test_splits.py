"""splits.py: subjects in more than one split, flagged by index and build-cache, refused by train."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import write_edf

from brainpipe.cache import build_cache
from brainpipe.cachefile import CacheReader
from brainpipe.config import STANDARD_1020, load_config
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index
from brainpipe.reporting import build_summary_text, scan_line
from brainpipe.splits import check_cache_subjects, overlap_warning, subjects_in_several_splits


def test_subjects_in_several_splits_ignores_recordings_without_subject_or_split():
    split = ["train", "eval", "train", "", "eval", "train", "eval"]
    subject = ["a", "a", "b", "b", "", "recording:x.edf", "recording:x.edf"]
    assert subjects_in_several_splits(split, subject) == {"a": ("eval", "train")}
    assert overlap_warning(["train", "eval"], ["a", "b"]) == ""
    assert overlap_warning(split, subject) == (
        "warning: 1 subjects are in more than one split: a (eval/train); "
        "their windows leak between training and evaluation"
    )


def _write(path: Path, seed: int) -> None:
    labels = [f"EEG {e}-REF" for e in STANDARD_1020]
    write_edf(path, 100, 30, labels=labels, seed=seed, unit="")


@pytest.fixture
def leaky(tmp_path):
    """A manifest corpus where subject s1 has a recording in train and one in eval."""
    root = tmp_path / "raw"
    rows = [("r1.edf", "s1", "train", "a"), ("r2.edf", "s1", "eval", "b"),
            ("r3.edf", "s2", "train", "b"), ("r4.edf", "s3", "eval", "a")]  # fmt: skip
    for k, (name, *_rest) in enumerate(rows):
        _write(root / name, k)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,subject,split,label\n" + "".join(",".join(r) + "\n" for r in rows))
    cfg = load_config(
        None,
        [f"corpus.manifest={manifest}", "preprocess.sfreq=100", "preprocess.h_freq=30"]
        + ["preprocess.notch_freqs=[]", "window.seconds=5", "window.stride_seconds=5"],
    )
    return root, cfg


def test_index_and_build_cache_summaries_warn(leaky, tmp_path):
    root, cfg = leaky
    result = build_index(root, tmp_path / "i.npz", cfg, progress=False)
    first, warning = scan_line(result).split("\n")
    assert first.startswith("indexed 4 recordings")
    assert warning.startswith("warning: 1 subjects are in more than one split: s1 (eval/train)")
    built = build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    assert build_summary_text(built).splitlines()[-1] == warning


def test_train_refuses_a_leaky_cache_unless_allowed(leaky, tmp_path):
    root, cfg = leaky
    build_index(root, tmp_path / "i.npz", cfg, progress=False)
    build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    with CacheReader(tmp_path / "c.h5") as reader:
        with pytest.raises(BrainpipeError) as e:
            check_cache_subjects(reader, cfg.train)
        assert str(e.value).startswith(
            f"{tmp_path / 'c.h5'}: 1 subjects are in more than one split"
        )
        assert "train.allow_subject_overlap=true" in str(e.value)
        check_cache_subjects(reader, dataclasses.replace(cfg.train, allow_subject_overlap=True))


def test_train_stops_before_any_work(leaky, tmp_path):
    pytest.importorskip("torch")
    from brainpipe.training.train import train

    root, cfg = leaky
    build_index(root, tmp_path / "i.npz", cfg, progress=False)
    build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    with pytest.raises(BrainpipeError, match="more than one split"):
        train(tmp_path / "c.h5", tmp_path / "run", cfg)
    assert not (tmp_path / "run").exists()


def test_config_key_for_train_is_there_and_off_by_default():
    assert load_config().train.allow_subject_overlap is False
    assert "allow_subject_overlap" not in load_config().to_dict()["train"]
    on = load_config(None, ["train.allow_subject_overlap=true"])
    assert on.to_dict()["train"]["allow_subject_overlap"] is True


def test_subject_splits_give_a_generic_tree_its_splits(tmp_path):
    # the README's EEGMMI example: subject from a regex, splits from the config
    for name in ("S001/S001R04.edf", "S001/S001R08.edf", "S002/S002R04.edf", "S003/S003R04.edf"):
        _write(tmp_path / "raw" / name, 0)
    cfg = load_config(
        None,
        [r"corpus.filename_regex=(?P<subject>S\d{3})R(?P<session>\d\d)"]
        + ['corpus.subject_splits={"train": [S001, S002], "eval": [S003]}'],
    )
    index = build_index(tmp_path / "raw", tmp_path / "i.npz", cfg, progress=False).index
    got = list(
        zip(index.subject.tolist(), index.session.tolist(), index.split.tolist(), strict=True)
    )
    assert sorted(got) == [("S001", "04", "train"), ("S001", "08", "train"), ("S002", "04", "train"),
                           ("S003", "04", "eval")]  # fmt: skip
