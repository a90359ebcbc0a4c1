"""TUEV (TUH EEG Events v2): the `.rec` format and its variants, the layout's path facts, the
event-window protocol (one 5-s window centred on each 1-s event), and the whole chain on a
synthetic TUEV tree of real EDF + `.rec` files: index -> build-cache -> train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import ONE_CPU_EPOCH

from brainpipe.annotations import TUEV_CHANNELS, TUEV_CLASSES, read_rec
from brainpipe.cachefile import compute_windows
from brainpipe.config import load_config
from brainpipe.corpus import Facts, parse_tuev_path
from brainpipe.errors import BrainpipeError
from brainpipe.preprocess import TCP_PAIRS

CONFIG = Path(__file__).parents[1] / "configs" / "tuev.yaml"
# As TUEV v2 ships them: channel number into the TCP montage, seconds, class code 1-6.
REC = "14,53.0000,54.0000,6\n15,53.0000,54.0000,6\n0,120.0000,121.0000,4\n"


def rows(path) -> list[tuple]:
    return [(e.channel, e.onset_s, e.offset_s, e.label) for e in read_rec(path).events]


def test_rec_rows_become_per_channel_events_with_class_names(tmp_path):
    p = tmp_path / "aaaaaaar_00000001.rec"
    p.write_text(REC)
    assert rows(p) == [
        ("FP1-F3", 53.0, 54.0, "bckg"),
        ("F3-C3", 53.0, 54.0, "bckg"),
        ("FP1-F7", 120.0, 121.0, "eyem"),
    ]
    # The channel numbers follow the TCP montage the cache derives (preprocess.TCP_PAIRS).
    assert tuple(f"{a}-{c}" for a, c in TCP_PAIRS) == TUEV_CHANNELS
    assert TUEV_CLASSES == ("spsw", "gped", "pled", "eyem", "artf", "bckg")


@pytest.mark.parametrize(
    "text",
    [
        "14,53,54,6\n",  # integers
        "14.0,53.0,54.0,6.0\n",  # everything a float (numpy.savetxt's default)
        "14,5.3e1,5.4E+01,6\n",  # exponents
        " 14 , 53.000 , 54.000 , 6 \n",  # padding
        "\ufeff14,53.0000,54.0000,6\r\n",  # BOM and CRLF (a Windows editor)
        "# channel,start,stop,class\n\n14,53.0000,54.0000,6",  # comment, blank, no last newline
    ],
)
def test_rec_number_formats_and_line_variants(tmp_path, text):
    p = tmp_path / "x.rec"
    p.write_bytes(text.encode())
    assert rows(p) == [("FP1-F3", 53.0, 54.0, "bckg")]


@pytest.mark.parametrize(
    "text, match",
    [
        ("22,1,2,6\n", r"row 1: channel '22' is not a TUEV channel \(an integer 0-21\)"),
        ("-1,1,2,6\n", "channel '-1' is not a TUEV channel"),
        ("1.5,1,2,6\n", "channel '1.5' is not a TUEV channel"),
        ("1,1,2,7\n", r"class '7' is not a TUEV class \(an integer 1-6\)"),
        ("1,1,2,0\n", "class '0' is not a TUEV class"),
        ("1,1,2,bckg\n", "class 'bckg' is not a number"),
        ("1,2,1,6\n", "start time 2.0 is after stop time 1.0"),
        ("1,1,2\n", "expected 'channel,start,stop,class'"),
        ("1,nan,2,6\n", "not a finite number"),
    ],
)
def test_bad_rec_rows_are_one_error_naming_file_and_row(tmp_path, text, match):
    p = tmp_path / "bad.rec"
    p.write_text("0,0,1,6\n" + text)
    with pytest.raises(BrainpipeError, match=match.replace("row 1", "row 2")) as e:
        read_rec(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_rec_events_past_the_recording_end_are_clipped_and_counted(tmp_path):
    p = tmp_path / "x.rec"
    p.write_text("0,8,9,1\n0,9.5,10.5,2\n0,10,11,3\n")
    got = read_rec(p, duration_s=10.0)
    assert [(e.onset_s, e.offset_s, e.label) for e in got.events] == [
        (8.0, 9.0, "spsw"),
        (9.5, 10.0, "gped"),
    ]
    assert got.n_clipped == 2


def test_tuev_paths():
    train = "v2.0.1/edf/train/aaaaaaar/aaaaaaar_00000001.edf"
    assert parse_tuev_path(train) == Facts(
        split="train", subject="aaaaaaar", token="aaaaaaar_00000001"
    )
    evl = "edf/eval/032/bckg_032_a_.edf"  # eval: named after a class, the folder is the subject
    assert parse_tuev_path(evl) == Facts(split="eval", subject="032", token="bckg_032_a_")
    assert parse_tuev_path("edf/train/x.edf") == Facts(split="train")  # no subject folder
    assert parse_tuev_path("other/x.edf") == Facts()


def test_event_windows_are_centred_on_each_event_and_kept_inside_the_recording():
    sfreq, window = 200.0, 1000  # 5-s windows
    offsets, lengths = np.array([0, 6000]), np.array([6000, 3000])  # 30 s and 15 s
    # recording, onset, offset, class: one event a row, as TUEV's per-channel rows.
    events = (
        np.array([0, 0, 0, 1, 1]),
        np.array([10.0, 10.0, 0.0, 14.0, 7.0]),
        np.array([11.0, 11.0, 1.0, 15.0, 8.0]),
        np.array([5, 5, 3, 0, 1]),
    )
    w = compute_windows(offsets, lengths, window, 999, np.zeros(2), events, sfreq, anchor="events")
    # 10-11 s -> 8-13 s (2 s either side); 0-1 s would start at -2 s: moved to 0; 14-15 s of a
    # 15-s recording would end at 17 s: moved to end at 15 s. Ordered by recording, then start.
    assert w["recording"].tolist() == [0, 0, 0, 1, 1]
    assert w["start"].tolist() == [0, 1600, 1600, 6000 + 1000, 6000 + 2000]
    assert w["label"].tolist() == [3, 5, 5, 1, 0]
    assert w["counts"].tolist() == [3, 2] and w["first"].tolist() == [0, 3]
    # crop_start_s shifts the cached signal: event times stay the recording's own.
    w = compute_windows(
        offsets, lengths, window, 999, np.zeros(2), events, sfreq, np.array([2.0, 0.0]),
        anchor="events",
    )  # fmt: skip
    assert w["start"].tolist()[:3] == [0, 1200, 1200]
    # Recordings not kept or shorter than a window give none.
    w = compute_windows(
        offsets, np.array([6000, 900]), window, 999, np.zeros(2), events, sfreq,
        keep=np.array([True, True]), anchor="events",
    )  # fmt: skip
    assert w["recording"].tolist() == [0, 0, 0] and w["counts"].tolist() == [3, 0]


def test_anchor_events_needs_the_events_task():
    with pytest.raises(BrainpipeError, match="window.anchor'=events .* needs cache.task=events"):
        load_config(None, ["window.anchor=events"])


def test_bipolar_montage_takes_any_derivations():
    from brainpipe.preprocess import plan_channels

    cfg = load_config(None, ["preprocess.montage=bipolar", "preprocess.channels=[FP1-F7, T3-T5]"])
    labels = ["EEG FP1-REF", "EEG F7-REF", "EEG T3-REF", "EEG T5-REF", "EEG O1-REF"]
    plan = plan_channels(labels, cfg.preprocess)
    assert plan.names == ("FP1-F7", "T3-T5")
    src = [labels[i] for i in plan.source]
    pick = [(src[a], src[c]) for a, c in zip(plan.anode, plan.cathode, strict=True)]
    assert pick == [("EEG FP1-REF", "EEG F7-REF"), ("EEG T3-REF", "EEG T5-REF")]
    with pytest.raises(BrainpipeError, match="'FP1' is not a derivation 'ANODE-CATHODE'"):
        load_config(None, ["preprocess.montage=bipolar", "preprocess.channels=[FP1]"])


def test_synthetic_tuev_indexes_caches_by_event_and_trains(tmp_path, monkeypatch):
    """The whole chain on a synthetic TUEV tree (real EDF + .rec files, several number formats):
    every .rec row becomes one window centred on it, labelled with its class."""
    from brainpipe.cache import build_cache
    from brainpipe.cachefile import CacheReader
    from brainpipe.index import build_index
    from brainpipe.indexfile import Index
    from brainpipe.synthetic import make_corpus
    from brainpipe.training.train import train

    monkeypatch.setenv("TQDM_DISABLE", "1")
    corpus = make_corpus(tmp_path / "raw", "tuev", n_subjects=5, seed=3, duration_s=(20, 30))
    cfg = load_config(
        CONFIG,
        [
            "cache.workers=1",
            *ONE_CPU_EPOCH,
            "train.model_kwargs={n_filters_time: 4, n_filters_spat: 4}",
            "train.batch_size=32",
        ],
    )
    build_index(tmp_path / "raw", tmp_path / "i.npz", cfg, progress=False)
    ix = Index.load(tmp_path / "i.npz")
    assert sorted(map(str, ix.arrays["path"])) == sorted(corpus.paths)
    assert ix.arrays["split"].tolist().count("eval") >= 1
    res = build_cache(tmp_path / "i.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    assert res.skipped == []
    with CacheReader(tmp_path / "c.h5") as r:
        assert r.task == "events" and r.window_anchor == "events"
        assert r.label_names == TUEV_CLASSES and r.channels[:2] == ("FP1-F7", "F7-T3")
        assert len(r.channels) == 16 and r.window_samples == 1000
        paths = r.recordings["path"].astype(str).tolist()
        for rec in corpus.recordings:  # one window per .rec row, centred, in the class's index
            k = paths.index(rec.path)
            lo, n = int(r.recordings["first_window"][k]), int(r.recordings["n_windows"][k])
            want = sorted(
                (min(max(round((t + 0.5) * 200 - 500), 0), int(rec.duration_s * 200) - 1000),
                 TUEV_CLASSES.index(e.kind))
                for e in rec.events
                for t in range(int(e.onset_s), int(e.offset_s))
                for _ in e.channels
            )  # fmt: skip
            start = r.windows["start"][lo : lo + n] - r.recordings["offset"][k]
            got = sorted(zip(start.tolist(), r.windows["label"][lo : lo + n].tolist(), strict=True))
            assert got == want, rec.path
    summary = train(tmp_path / "c.h5", tmp_path / "run", cfg)
    assert summary["label_names"] == list(TUEV_CLASSES) and summary["epochs"] == 1
    # what the TUEV papers report, on the official eval split
    assert {"balanced_accuracy", "cohen_kappa", "f1_weighted"} <= set(summary["eval"])


def test_synthetic_tuev_is_seeded_and_its_rec_files_say_what_was_planned(tmp_path):
    from brainpipe.synthetic import make_corpus

    a = make_corpus(tmp_path / "a", "tuev", n_subjects=4, seed=5, duration_s=(10, 15))
    b = make_corpus(tmp_path / "b", "tuev", n_subjects=4, seed=5, duration_s=(10, 15))
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert {str(f) for f in files} >= {*a.paths, *a.annotation_files}
    for f in files:
        if f.suffix in (".edf", ".rec"):
            assert (a.root / f).read_bytes() == (b.root / f).read_bytes(), f
    formats = set()
    for rec in a.recordings:
        rec_path = a.root / rec.path.removesuffix(".edf")
        text = rec_path.with_suffix(".rec").read_bytes()
        formats.add(text.split(b",")[1] if text else b"")
        got = [
            (e.channel, e.onset_s, e.label) for e in read_rec(rec_path.with_suffix(".rec")).events
        ]
        want = [
            (TUEV_CHANNELS[c], float(t), e.kind)
            for e in rec.events
            for t in range(int(e.onset_s), int(e.offset_s))
            for c in e.channels
        ]
        assert got == want, rec.path
        split, subject = rec.path.split("/")[1:3]
        assert (split, subject) == (rec.split, rec.subject)
    assert len(formats) > 1  # the number formats vary between files
