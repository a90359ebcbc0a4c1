"""Window probabilities to events: each post-processing rule on hand-made probabilities."""

import numpy as np
import pytest

from brainpipe.annotations import Event
from brainpipe.detection import detect_events, smooth
from brainpipe.errors import BrainpipeError


def test_smooth_is_a_centred_mean_with_honest_edges():
    p = np.array([0.0, 0.0, 1.0, 0.0, 0.0])
    assert np.allclose(smooth(p, 1), p)
    assert np.allclose(smooth(p, 3), [0, 1 / 3, 1 / 3, 1 / 3, 0])
    # edges average only the windows that exist
    assert np.allclose(smooth(np.array([1.0, 1.0, 1.0]), 5), [1, 1, 1])
    # even k: one more window before the centre than after
    assert np.allclose(smooth(np.array([0.0, 0.0, 0.0, 1.0]), 2), [0, 0, 0, 0.5])
    # k=4: window i averages i-2..i+1 (those present)
    assert np.allclose(smooth(np.array([0.0, 1.0, 0.0]), 4), [1 / 2, 1 / 3, 1 / 3])
    with pytest.raises(BrainpipeError):
        smooth(p, 0)


def starts(n, stride=1.0):
    return np.arange(n) * stride


def test_threshold_and_union_of_window_spans():
    # 1 s windows every 1 s: windows 2,3 and 6 pass 0.5 (>= is positive)
    p = np.array([0.1, 0.2, 0.5, 0.9, 0.4, 0.0, 0.7, 0.0])
    d = detect_events(p, starts(8), window_s=1.0, threshold=0.5)
    assert d.onset_s.tolist() == [2.0, 6.0] and d.offset_s.tolist() == [4.0, 7.0]
    assert np.allclose(d.confidence, [0.7, 0.7])
    e = d.events()
    assert [(x.onset_s, x.offset_s, x.label, x.channel) for x in e] == [
        (2.0, 4.0, "seiz", "TERM"),
        (6.0, 7.0, "seiz", "TERM"),
    ]
    assert all(isinstance(x, Event) and x.confidence == pytest.approx(0.7) for x in e)


def test_overlapping_windows_make_one_event():
    # 4 s windows every 2 s; windows 1 and 2 (2-6 s and 4-8 s) overlap
    p = np.array([0.0, 1.0, 1.0, 0.0, 0.0])
    d = detect_events(p, starts(5, 2.0), window_s=4.0, threshold=0.5)
    assert (d.onset_s.tolist(), d.offset_s.tolist()) == ([2.0], [8.0])


def test_merge_gap_and_minimum_duration():
    p = np.zeros(30)
    p[[2, 3]] = 1  # 2-4 s
    p[7] = 1  # 7-8 s: gap 3 s from the first
    p[20] = 1  # 20-21 s: alone and short
    kw = dict(window_s=1.0, threshold=0.5)
    d = detect_events(p, starts(30), **kw, merge_gap_s=3.0)
    assert d.onset_s.tolist() == [2.0, 7.0, 20.0]  # a gap equal to merge_gap_s is not merged
    d = detect_events(p, starts(30), **kw, merge_gap_s=3.5)
    assert (d.onset_s.tolist(), d.offset_s.tolist()) == ([2.0, 20.0], [8.0, 21.0])
    # confidence of the merged event includes the gap windows: 3 of 6 windows at 1
    assert d.confidence[0] == pytest.approx(0.5)
    d = detect_events(p, starts(30), **kw, merge_gap_s=3.5, min_duration_s=2.0)
    assert (d.onset_s.tolist(), d.offset_s.tolist()) == ([2.0], [8.0])
    d = detect_events(p, starts(30), **kw, min_duration_s=2.0)
    assert d.onset_s.tolist() == [2.0]


def test_smoothing_removes_a_lone_spike_and_keeps_a_run():
    p = np.zeros(20)
    p[3] = 1.0
    p[10:15] = 1.0
    d = detect_events(p, starts(20), window_s=1.0, threshold=0.5, smooth_windows=3)
    assert (d.onset_s.tolist(), d.offset_s.tolist()) == ([10.0], [15.0])


def test_clipped_to_the_recording_and_empty_cases():
    p = np.array([0.0, 0.0, 1.0])
    d = detect_events(p, starts(3, 2.0), window_s=4.0, threshold=0.5, duration_s=5.0)
    assert (d.onset_s.tolist(), d.offset_s.tolist()) == ([4.0], [5.0])
    assert d.confidence.tolist() == [1.0]
    d = detect_events(np.zeros(0), np.zeros(0), window_s=4.0)
    assert len(d.onset_s) == len(d.confidence) == 0 and d.events() == []
    d = detect_events(np.zeros(5), starts(5), window_s=1.0, threshold=0.5)
    assert len(d.onset_s) == 0


def test_bad_inputs():
    with pytest.raises(BrainpipeError, match="differ"):
        detect_events(np.zeros(3), np.zeros(2), window_s=1.0)
    with pytest.raises(BrainpipeError, match="ascending"):
        detect_events(np.zeros(3), np.array([0.0, 2.0, 1.0]), window_s=1.0)
    with pytest.raises(BrainpipeError, match="positive"):
        detect_events(np.zeros(3), starts(3), window_s=0.0)
