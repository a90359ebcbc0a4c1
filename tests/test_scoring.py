"""Event scoring: every NEDC v6.0.0 rule and the SzCORE wrapper on hand-computed cases, the
operating points, and the `brainpipe score` command on real annotation trees."""

import json
import math

import numpy as np
import pytest

from brainpipe.annotations import Event, write_hypothesis
from brainpipe.cli import main
from brainpipe.errors import BrainpipeError
from brainpipe.scoring import nedc_events, operating_points, score, sweep

DAY = 86400.0


def seiz(s, method="nedc-ovlp", refs=(), hyps=(), dur=100.0):
    """Score one recording; return the seiz label's totals as a dict."""
    out = score([np.array(refs)], [np.array(hyps)], [dur], method)
    return out, vars(out.labels["seiz"])


def counts(label):
    return (label["targets"], label["hits"], label["misses"], label["false_alarms"])


# ---------------------------------------------------------------------------------------------
# How NEDC sees a file
# ---------------------------------------------------------------------------------------------


def test_nedc_events_fill_gaps_and_join_touching_seizures():
    ev = nedc_events(np.array([[10.0, 20.0], [20.0, 30.0], [50.0, 60.0]]), 100.0)
    assert ev == [(0.0, 10.0, "bckg"), (10.0, 30.0, "seiz"), (30.0, 50.0, "bckg"),
                  (50.0, 60.0, "seiz"), (60.0, 100.0, "bckg")]  # fmt: skip
    assert nedc_events(np.zeros((0, 2)), 12.5) == [(0.0, 12.5, "bckg")]
    assert nedc_events(np.array([[0.0, 12.5]]), 12.5) == [(0.0, 12.5, "seiz")]
    # times are compared at 4 decimals: a 20 us gap is no gap
    assert len(nedc_events(np.array([[1.0, 2.00001], [2.00003, 3.0]]), 5.0)) == 3


# ---------------------------------------------------------------------------------------------
# OVLP
# ---------------------------------------------------------------------------------------------


def test_ovlp_partial_overlap_is_a_hit():
    s, z = seiz("x", refs=[[10, 20]], hyps=[[15, 25]])
    assert counts(z) == (1, 1, 0, 0)
    assert (z["sensitivity"], z["precision"], z["f1"], z["fa_per_24h"]) == (1, 1, 1, 0)
    b = vars(s.labels["bckg"])
    assert counts(b) == (2, 2, 0, 0)  # bckg [0,10] and [20,100], both overlapped by hyp bckg
    assert s.duration_s == 100.0 and s.n_recordings == 1


def test_ovlp_touching_events_do_not_overlap():
    _, z = seiz("x", refs=[[10, 20]], hyps=[[20, 30]])
    assert counts(z) == (1, 0, 1, 1)
    assert (z["sensitivity"], z["precision"], z["f1"]) == (0, 0, 0)
    assert z["fa_per_24h"] == pytest.approx(1 / 100 * DAY)


def test_ovlp_touching_reference_seizures_are_one_target():
    _, z = seiz("x", refs=[[10, 20], [20, 30]], hyps=[[25, 26]])
    assert counts(z) == (1, 1, 0, 0)


def test_ovlp_many_to_one_both_ways():
    # three hypotheses inside one seizure: one hit, no false alarm
    _, z = seiz("x", refs=[[10, 50]], hyps=[[12, 15], [20, 25], [40, 60]])
    assert counts(z) == (1, 1, 0, 0)
    # one hypothesis over two seizures: two hits
    _, z = seiz("x", refs=[[10, 20], [30, 40]], hyps=[[5, 45]])
    assert counts(z) == (2, 2, 0, 0)
    # a long false alarm counts once
    _, z = seiz("x", refs=[[10, 20]], hyps=[[10, 20], [30, 90]])
    assert counts(z) == (1, 1, 0, 1) and z["precision"] == 0.5


def test_ovlp_empty_hypothesis_and_empty_reference():
    s, z = seiz("x", refs=[[10, 20]], hyps=np.zeros((0, 2)))
    assert counts(z) == (1, 0, 1, 0)
    assert (z["sensitivity"], z["precision"], z["f1"], z["fa_per_24h"]) == (0, 0, 0, 0)
    assert counts(vars(s.labels["bckg"])) == (2, 2, 0, 0)
    s, z = seiz("x", refs=np.zeros((0, 2)), hyps=[[10, 20]])
    assert counts(z) == (0, 0, 0, 1)
    assert z["sensitivity"] == 0  # NEDC prints 0 for an undefined rate
    assert z["fa_per_24h"] == pytest.approx(864.0)
    assert counts(vars(s.labels["bckg"])) == (1, 1, 0, 0)


def test_events_longer_than_the_recording_are_clipped():
    s, z = seiz("x", refs=[[90, 150]], hyps=[[95, 200]], dur=100.0)
    assert counts(z) == (1, 1, 0, 0)
    assert s.duration_s == 100.0
    # a hypothesis wholly past the end is no false alarm
    _, z = seiz("x", refs=[[10, 20]], hyps=[[150, 160]], dur=100.0)
    assert counts(z) == (1, 0, 1, 0)


def test_fa_per_24h_is_over_the_total_scored_duration():
    s = score(
        [np.array([[10.0, 20.0]]), np.zeros((0, 2))],
        [np.array([[10.0, 20.0], [100.0, 110.0]]), np.zeros((0, 2))],
        [3600.0, 23 * 3600.0],
        "nedc-ovlp",
        names=["a", "b"],
    )
    z = s.labels["seiz"]
    assert (z.false_alarms, z.fa_per_24h, s.duration_s) == (1, 1.0, DAY)
    assert [(r.name, r.hits, r.misses, r.false_alarms) for r in s.recordings] == [
        ("a", 1, 0, 1),
        ("b", 0, 0, 0),
    ]


def test_events_as_event_objects_and_overlapping_input_joined():
    s = score([[Event(10, 20, "seiz"), Event(15, 30, "seiz")]], [[Event(25, 26, "seiz")]], [100.0])
    assert counts(vars(s.labels["seiz"])) == (1, 1, 0, 0)


# ---------------------------------------------------------------------------------------------
# TAES
# ---------------------------------------------------------------------------------------------


def test_taes_fractional_hit_and_false_alarm():
    s, z = seiz("x", "nedc-taes", refs=[[10, 20]], hyps=[[15, 25]])
    # half the seizure found, half a seizure's length of false alarm
    assert counts(z) == pytest.approx((1, 0.5, 0.5, 0.5))
    assert (z["sensitivity"], z["precision"], z["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert z["fa_per_24h"] == pytest.approx(0.5 / 100 * DAY)
    # bckg [0,10] vs hyp bckg [0,15]: hit 1, fa 0.5; bckg [20,100] vs [25,100]: hit 75/80
    assert counts(vars(s.labels["bckg"])) == pytest.approx((2, 1.9375, 0.0625, 0.5))


def test_taes_several_hypotheses_inside_one_seizure_add_up():
    _, z = seiz("x", "nedc-taes", refs=[[10, 50]], hyps=[[12, 20], [30, 40]])
    assert counts(z) == pytest.approx((1, 0.45, 0.55, 0.0))
    assert z["precision"] == 1.0


def test_taes_one_hypothesis_over_two_seizures_scores_one_and_misses_the_next():
    _, z = seiz("x", "nedc-taes", refs=[[10, 20], [30, 40]], hyps=[[5, 45]])
    # covers the first: hit 1, false alarm (25 + 5) / 10 capped at 1; the second: a full miss
    assert counts(z) == pytest.approx((2, 1, 1, 1))


def test_taes_exact_match_early_and_late_starts():
    _, z = seiz("x", "nedc-taes", refs=[[10, 20]], hyps=[[10, 20]])
    assert counts(z) == pytest.approx((1, 1, 0, 0))
    _, z = seiz("x", "nedc-taes", refs=[[10, 20]], hyps=[[8, 14]])  # starts 2 s early
    assert counts(z) == pytest.approx((1, 0.4, 0.6, 0.2))
    _, z = seiz("x", "nedc-taes", refs=[[10, 20]], hyps=[[0, 60]])  # false alarm capped at 1
    assert counts(z) == pytest.approx((1, 1, 0, 1))


def test_taes_no_overlap_is_a_miss_and_a_false_alarm():
    _, z = seiz("x", "nedc-taes", refs=[[10, 20]], hyps=[[20, 30]])
    assert counts(z) == pytest.approx((1, 0, 1, 1))
    _, z = seiz("x", "nedc-taes", refs=[[10, 20]], hyps=np.zeros((0, 2)))
    assert counts(z) == pytest.approx((1, 0, 1, 0))


def test_taes_whole_seconds_overlap_quirk_of_nedc():
    # NEDC's TAES "any overlap" compares int(start)..int(stop): a hypothesis starting 0.3 s after
    # the seizure ends still shares second 20 with it, and adds its (negative) share
    _, z = seiz("x", "nedc-taes", refs=[[10.5, 20.2]], hyps=[[12, 15], [20.5, 22]])
    d = 9.7
    assert counts(z) == pytest.approx((1, 2.7 / d, 1 - 2.7 / d, 1.8 / d))


# ---------------------------------------------------------------------------------------------
# EPOCH
# ---------------------------------------------------------------------------------------------


def test_epoch_counts_quarter_second_epochs():
    s, z = seiz("x", "nedc-epoch", refs=[[2, 4]], hyps=[[3, 6]], dur=10.0)
    # 40 epochs centred at 0.125 + 0.25 k; ref seiz 8, hyp seiz 12, both 4
    assert counts(z) == (8, 4, 4, 8)
    assert (z["sensitivity"], z["precision"], z["f1"]) == pytest.approx((0.5, 1 / 3, 0.4))
    assert z["fa_per_24h"] == pytest.approx(8 * 0.25 / 10 * DAY)
    b = vars(s.labels["bckg"])
    assert counts(b) == (32, 24, 8, 0)  # NEDC prints no bckg false alarms ...
    # NEDC's summary: both labels; its total false alarm rate counts fp of both (8 + 4 epochs)
    assert (s.total.hits, s.total.misses, s.total.false_alarms) == (28, 12, 8)
    assert s.total.fa_per_24h == pytest.approx(12 * 0.25 / 10 * DAY)
    # its summary F1 divides by the last label's (bckg) precision + sensitivity, as NEDC does
    assert s.total.f1 == pytest.approx(2 * 0.7 * 0.7 / (24 / 28 + 24 / 32))
    assert b["precision"] == pytest.approx(24 / 28)  # ... but its precision counts them
    assert b["fa_per_24h"] == pytest.approx(4 * 0.25 / 10 * DAY)


def test_epoch_centre_on_a_boundary_takes_the_earlier_event():
    _, z = seiz("x", "nedc-epoch", refs=[[2.125, 3.0]], hyps=np.zeros((0, 2)), dur=4.0)
    assert z["targets"] == 3  # 2.375, 2.625, 2.875; 2.125 is the end of bckg [0, 2.125]
    _, z = seiz("x", "nedc-epoch", refs=[[2.0, 3.0]], hyps=np.zeros((0, 2)), dur=3.0)
    assert z["targets"] == 4  # 2.125 .. 2.875; the last epoch (2.875) ends inside


# ---------------------------------------------------------------------------------------------
# SzCORE (timescoring)
# ---------------------------------------------------------------------------------------------


def test_szcore_tolerances_merge_and_split():
    # a detection up to 30 s before onset counts
    _, z = seiz("x", "szcore", refs=[[100, 110]], hyps=[[75, 80]], dur=3600.0)
    assert counts(z) == (1, 1, 0, 0)
    # ... and up to 60 s after the end; 65 s after is a false alarm
    _, z = seiz("x", "szcore", refs=[[100, 110]], hyps=[[165, 168]], dur=3600.0)
    assert counts(z) == (1, 1, 0, 0)
    _, z = seiz("x", "szcore", refs=[[100, 110]], hyps=[[175, 180]], dur=3600.0)
    assert counts(z) == (1, 0, 1, 1)
    assert z["fa_per_24h"] == pytest.approx(24.0)
    # seizures closer than 90 s are one; longer than 5 min are split
    _, z = seiz("x", "szcore", refs=[[100, 110], [150, 160]], hyps=[], dur=3600.0)
    assert z["targets"] == 1
    _, z = seiz("x", "szcore", refs=[[100, 800]], hyps=[], dur=3600.0)
    assert z["targets"] == 3


def test_szcore_micro_average_and_undefined_rates():
    s = score(
        [np.array([[100.0, 110.0]]), np.zeros((0, 2))],
        [np.zeros((0, 2)), np.array([[500.0, 510.0]])],
        [43200.0, 43200.0],
        "szcore",
    )
    z = s.labels["seiz"]
    assert (z.targets, z.hits, z.misses, z.false_alarms, z.fa_per_24h) == (1, 0, 1, 1, 1.0)
    assert list(s.labels) == ["seiz"]
    s = score([np.zeros((0, 2))], [np.zeros((0, 2))], [100.0], "szcore")
    assert math.isnan(s.labels["seiz"].sensitivity)
    assert s.to_dict()["labels"]["seiz"]["sensitivity"] is None


def test_unknown_method():
    with pytest.raises(BrainpipeError, match="nedc-ovlp, nedc-taes, nedc-epoch, szcore"):
        score([], [], [], "ovlp")


# ---------------------------------------------------------------------------------------------
# Operating points
# ---------------------------------------------------------------------------------------------


def test_operating_points_interpolate_the_upper_envelope():
    curve = [
        {"fa_per_24h": fa, "sensitivity": s}
        for fa, s in [(0, 0), (0.5, 0.2), (2, 0.6), (4, 0.5), (12, 0.9)]
    ]
    pts = operating_points(curve)
    assert [p["fa_per_24h"] for p in pts] == [1.0, 2.5, 5.0, 10.0]
    assert [p["sensitivity"] for p in pts] == pytest.approx([0.2 + 0.4 / 3, 0.6, 0.6375, 0.825])
    assert not any(p["beyond_curve"] for p in pts)
    pts = operating_points(curve[:3])
    assert pts[3] == {"fa_per_24h": 10.0, "sensitivity": 0.6, "beyond_curve": True}


def test_sweep_over_confidence_thresholds():
    # two half-day recordings: FA/24h equals the count of false alarms
    refs = [np.array([[100.0, 200.0]]), np.array([[500.0, 600.0]])]
    hyps = [
        np.array([[150, 160, 0.9], [1000, 1010, 0.8], [2000, 2010, 0.3]], dtype=float),
        np.array([[550, 560, 0.5]], dtype=float),
    ]
    rows = sweep(refs, hyps, [43200.0, 43200.0], "nedc-ovlp")
    got = [(r["threshold"], r["fa_per_24h"], r["sensitivity"]) for r in rows]
    assert got == [(0.3, 2, 1), (0.5, 1, 1), (0.8, 1, 0.5), (0.9, 0, 0.5), (math.inf, 0, 0)]
    pts = operating_points(rows)
    assert [(p["sensitivity"], p["beyond_curve"]) for p in pts] == [
        (1.0, False),
        (1.0, True),
        (1.0, True),
        (1.0, True),
    ]


# ---------------------------------------------------------------------------------------------
# `brainpipe score` on annotation trees
# ---------------------------------------------------------------------------------------------


def tusz_ref(path, duration, seizures, label="cpsz"):
    rows, t = [], 0.0
    for on, off in seizures:
        if on > t:
            rows.append(f"TERM,{t:.4f},{on:.4f},bckg,1.0000")
        rows.append(f"TERM,{on:.4f},{off:.4f},{label},1.0000")
        t = off
    if t < duration:
        rows.append(f"TERM,{t:.4f},{duration:.4f},bckg,1.0000")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# version = csv_v1.0.0\n# bname = {path.stem}\n# duration = {duration:.2f} secs\n#\n"
        "channel,start_time,stop_time,label,confidence\n" + "\n".join(rows) + "\n"
    )


@pytest.fixture
def trees(tmp_path):
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    tusz_ref(
        ref / "eval/aaaaaaac/s001_2002/01_tcp_ar/aaaaaaac_s001_t000.csv_bi", 43200.0, [(100, 200)]
    )
    tusz_ref(
        ref / "eval/aaaaaaad/s001_2002/01_tcp_ar/aaaaaaad_s001_t000.csv_bi", 43200.0, [(500, 600)]
    )
    tusz_ref(ref / "eval/aaaaaaae/s001_2002/01_tcp_ar/aaaaaaae_s001_t000.csv_bi", 600.0, [])
    # a per-channel file beside the term file is not read
    (ref / "eval/aaaaaaac/s001_2002/01_tcp_ar/aaaaaaac_s001_t000.csv").write_text("garbage")
    write_hypothesis(
        hyp / "aaaaaaac_s001_t000.csv_bi",
        [Event(150, 160, "seiz", confidence=0.9), Event(1000, 1010, "seiz", confidence=0.8),
         Event(2000, 2010, "seiz", confidence=0.3)],
        43200.0,
    )  # fmt: skip
    write_hypothesis(
        hyp / "aaaaaaad_s001_t000.csv_bi", [Event(550, 560, "seiz", confidence=0.5)], 43200.0
    )
    return ref, hyp


def test_score_json(trees, capsys):
    ref, hyp = trees
    assert (
        main(["score", "--ref", str(ref), "--hyp", str(hyp), "--method", "nedc-ovlp", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (out["method"], out["duration_s"], out["n_recordings"]) == ("nedc-ovlp", DAY, 2)
    assert out["unpaired_references"] == 1
    assert out["total"]["false_alarms"] == 2 and out["total"]["targets"] == 2 + 4
    assert set(out["labels"]) == {"seiz", "bckg"}
    assert out["labels"]["seiz"] == {
        "targets": 2, "hits": 2, "misses": 0, "false_alarms": 2, "sensitivity": 1.0,
        "precision": 0.5, "f1": pytest.approx(2 / 3), "fa_per_24h": 2.0,
    }  # fmt: skip
    assert out["recordings"] == [
        {"name": "aaaaaaac_s001_t000", "duration_s": 43200.0, "hits": 1, "misses": 0, "false_alarms": 2},
        {"name": "aaaaaaad_s001_t000", "duration_s": 43200.0, "hits": 1, "misses": 0, "false_alarms": 0},
    ]  # fmt: skip


def test_score_text_every_method_and_sweep_outputs(trees, tmp_path, capsys):
    ref, hyp = trees
    curve, png = tmp_path / "out/curve.csv", tmp_path / "out/curve.png"
    argv = [
        "score",
        "--ref",
        str(ref),
        "--hyp",
        str(hyp),
        "--curve",
        str(curve),
        "--plot",
        str(png),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for m in ("nedc-ovlp:", "nedc-taes:", "nedc-epoch:", "szcore:"):
        assert m in out
    assert "sensitivity at 1 FA/24h: 1" in out
    assert "aaaaaaad_s001_t000 1 0 0" in out
    lines = curve.read_text().splitlines()
    assert lines[0] == "method,threshold,sensitivity,precision,f1,false_alarms,fa_per_24h"
    assert len(lines) == 1 + 4 * 5 and lines[1].startswith("nedc-ovlp,0.3,1.0,")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_json_several_methods_is_an_array(trees, capsys):
    ref, hyp = trees
    argv = ["score", "--ref", str(ref), "--hyp", str(hyp), "--json", "--sweep"]
    assert main([*argv, "--method", "nedc-taes", "--method", "szcore"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["method"] for o in out] == ["nedc-taes", "szcore"]
    assert [p["fa_per_24h"] for p in out[0]["operating_points"]] == [1.0, 2.5, 5.0, 10.0]


def test_score_errors_name_the_fix(trees, tmp_path, capsys):
    ref, hyp = trees
    write_hypothesis(hyp / "zzzzzzzz_s001_t000.csv_bi", [], 100.0)
    assert main(["score", "--ref", str(ref), "--hyp", str(hyp)]) == 1
    err = capsys.readouterr().err
    assert "1 hypothesis recording(s) have no reference" in err and "zzzzzzzz_s001_t000" in err
    (hyp / "zzzzzzzz_s001_t000.csv_bi").unlink()

    write_hypothesis(hyp / "aaaaaaae_s001_t000.csv_bi", [], 700.0)
    assert main(["score", "--ref", str(ref), "--hyp", str(hyp)]) == 1
    assert "differs from the reference's 600.0 s" in capsys.readouterr().err
    write_hypothesis(hyp / "aaaaaaae_s001_t000.csv_bi", [], 600.0)

    bad = ref / "eval/aaaaaaae/s001_2002/01_tcp_ar/aaaaaaae_s001_t000.csv_bi"
    bad.write_text("channel,start_time,stop_time,label\nTERM,0,600,bckg\n")
    assert main(["score", "--ref", str(ref), "--hyp", str(hyp)]) == 1
    assert "no '# duration' header" in capsys.readouterr().err

    cache = tmp_path / "cache.h5"
    cache.write_bytes(b"\x89HDF\r\n\x1a\n")
    assert main(["score", "--ref", str(cache), "--hyp", str(hyp)]) == 1
    assert "not a readable HDF5 cache" in capsys.readouterr().err
    assert main(["score", "--ref", str(ref), "--hyp", str(hyp), "--method", "ovlp"]) == 1
    assert "is not one of" in capsys.readouterr().err


def test_score_reads_tse_references(tmp_path, capsys):
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.mkdir()
    (ref / "r1.tse_bi").write_text(
        "version = tse_v1.0.0\n\n0.0 10.0 bckg 1.0\n10.0 20.0 seiz 1.0\n20.0 100.0 bckg 1.0\n"
    )
    write_hypothesis(hyp / "r1.csv_bi", [Event(15, 25, "seiz")], 100.0)
    assert (
        main(["score", "--ref", str(ref), "--hyp", str(hyp), "--method", "nedc-taes", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["labels"]["seiz"]["hits"] == 0.5 and out["duration_s"] == 100.0


def test_per_channel_references_merge_and_stray_csv_in_hypotheses_is_ignored(tmp_path, capsys):
    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.mkdir()
    (ref / "r1.csv").write_text(
        "# duration = 100.00 secs\nchannel,start_time,stop_time,label,confidence\n"
        "FP1-F7,10,20,fnsz,1\nF7-T3,15,30,fnsz,1\nF7-T3,60,70,fnsz,1\n"
    )
    write_hypothesis(hyp / "r1.csv_bi", [Event(25, 26, "seiz"), Event(80, 90, "seiz")], 100.0)
    (hyp / "curve.csv").write_text("method,threshold\n")  # a previous run's --curve output
    assert (
        main(["score", "--ref", str(ref), "--hyp", str(hyp), "--method", "nedc-ovlp", "--json"])
        == 0
    )
    seiz = json.loads(capsys.readouterr().out)["labels"]["seiz"]
    # channels' union: [10, 30] and [60, 70]; hypotheses hit the first, miss the second, 1 FA
    assert (seiz["targets"], seiz["hits"], seiz["misses"], seiz["false_alarms"]) == (2, 1, 1, 1)
