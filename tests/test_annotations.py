"""The TUSZ annotation format: every variant TUH ships, the refusals, and the hypothesis writer.

Each test writes a real file and reads it back through the public reader.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brainpipe.annotations import (
    Event,
    format_hypothesis,
    merge_channel_events,
    parse_annotations,
    read_annotations,
    write_hypothesis,
)
from brainpipe.cachefile import compute_windows
from brainpipe.errors import BrainpipeError

CSV_BI = """# version = csv_v1.0.0
# bname = aaaaaaac_s001_t000
# duration = 301.00 secs
# montage_file = $NEDC_NFC/lib/nedc_eas_default_montage.txt
#
channel,start_time,stop_time,label,confidence
TERM,0.0000,42.2786,bckg,1.0000
TERM,42.2786,81.7760,seiz,1.0000
TERM,81.7760,301.0000,bckg,1.0000
"""


def test_csv_bi(tmp_path):
    p = tmp_path / "a.csv_bi"
    p.write_text(CSV_BI)
    (ev,) = parse_annotations(p)
    assert (ev.onset_s, ev.offset_s, ev.label, ev.channel) == (42.2786, 81.776, "seiz", "TERM")


def test_columns_found_by_name_not_position(tmp_path):
    # a file whose columns are reordered and whose header lines differ still parses right
    p = tmp_path / "b.csv_bi"
    p.write_text(
        "#version=csv_v1.0.0\n# annotation_label_file = x\n\nlabel,confidence,channel,stop_time,start_time\nfnsz,1.0,TERM,20.5,10.0\n"
    )
    (ev,) = parse_annotations(p)
    assert (ev.onset_s, ev.offset_s, ev.label) == (10.0, 20.5, "fnsz")


def test_missing_columns_is_an_error_not_an_empty_list(tmp_path):
    p = tmp_path / "c.csv_bi"
    p.write_text("# header\nchannel,begin,end,label\nTERM,1,2,seiz\n")
    with pytest.raises(BrainpipeError, match="start_time"):
        parse_annotations(p)
    q = tmp_path / "d.csv_bi"
    q.write_text("channel,start_time,stop_time,label\nTERM,x,2,seiz\n")
    with pytest.raises(BrainpipeError, match="row 2"):
        parse_annotations(q)


def test_per_channel_events_merge_to_terms(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text(
        "# v\nchannel,start_time,stop_time,label,confidence\n"
        "FP1-F7,0,10,bckg,1\nFP1-F7,10,20,seiz,1\nF7-T3,15,25,seiz,1\nF7-T3,40,45,gnsz,1\n"
    )
    merged = merge_channel_events(parse_annotations(p))
    assert [(e.onset_s, e.offset_s) for e in merged] == [(10, 25), (40, 45)]


# ---------------------------------------------------------------------------------------------
# The variants of issue 11 ("Labels in")
# ---------------------------------------------------------------------------------------------

# The issue's example, with every header variant at once: a bare '#', `# label = seiz`, fields
# padded with spaces, a seizure type as the label, no trailing newline.
PADDED = (
    "# version = csv_v1.0.0\n"
    "# bname = aaaaaaac_s001_t000\n"
    "# duration = 300.00 secs\n"
    "# montage_file = $NEDC_NFC/lib/nedc_eas_default_montage.txt\n"
    "#\n"
    "# label = seiz\n"
    "channel, start_time, stop_time, label, confidence\n"
    "FP1 - F7, 0.0000, 36.0000, bckg, 1.0000\n"
    "FP1 - F7, 36.0000, 180.0000, cpsz, 0.8000\n"
    "FP1 - F7, 180.0000, 300.0000, bckg, 1.0000"
)


def test_padded_fields_header_variants_and_no_trailing_newline(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text(PADDED)
    ann = read_annotations(p)
    assert ann.duration_s == 300.0
    assert ann.events == (Event(36.0, 180.0, "cpsz", "FP1 - F7", 0.8),)
    assert ann.unknown_labels == () and ann.n_clipped == 0


def test_per_sample_mask_of_the_issue_example(tmp_path):
    # 300 s, cpsz from 36 to 180 s at 256 Hz: the mask is 1 exactly on samples [9216, 46080).
    # The mask is the cache's window labels with one-sample windows (cachefile.compute_windows).
    p = tmp_path / "a.csv_bi"
    p.write_text(PADDED)
    (ev,) = merge_channel_events(parse_annotations(p))
    sfreq, n = 256.0, 300 * 256
    w = compute_windows(
        offsets=np.array([0]),
        lengths=np.array([n]),
        window=1,
        stride=1,
        rec_labels=np.array([0]),
        events=(np.array([0]), np.array([ev.onset_s]), np.array([ev.offset_s])),
        sfreq=sfreq,
    )
    assert len(w["label"]) == n
    assert np.array_equal(np.flatnonzero(w["label"]), np.arange(9216, 46080))


def test_header_without_spaces_and_only_seizure_rows(tmp_path):
    # Gaps are background; the recording's length comes from `# duration`.
    p = tmp_path / "a.csv_bi"
    p.write_text(
        "#version=csv_v1.0.0\n#bname=x\n#duration=1200.5000 secs\n"
        "channel,start_time,stop_time,label,confidence\n"
        "TERM,10.0,20.0,seiz,1.0\nTERM,600.25,700.5,seiz,0.5\n"
    )
    ann = read_annotations(p)
    assert ann.duration_s == 1200.5
    assert [(e.onset_s, e.offset_s, e.confidence) for e in ann.events] == [
        (10.0, 20.0, 1.0),
        (600.25, 700.5, 0.5),
    ]


@pytest.mark.parametrize(
    "line",
    ["# duration = 300.00 secs", "#duration=300.00 secs", "#  duration = 300.00 secs",
     "# duration = 300.0000", "# DURATION = 300 secs"],
)  # fmt: skip
def test_duration_header_forms(tmp_path, line):
    p = tmp_path / "a.csv_bi"
    p.write_text(f"# version = csv_v1.0.0\n{line}\n#\n#\nchannel,start_time,stop_time,label\n")
    ann = read_annotations(p)
    assert (ann.duration_s, ann.events) == (300.0, ())


def test_quoted_fields_from_a_spreadsheet(tmp_path):
    p = tmp_path / "a.csv_bi"
    p.write_text('"channel","start_time","stop_time","label"\n"TERM","1.5"," 2.5 ","seiz"\r\n')
    assert read_annotations(p).events == (Event(1.5, 2.5, "seiz"),)


def test_no_confidence_column(tmp_path):
    p = tmp_path / "a.csv_bi"
    p.write_text("channel,start_time,stop_time,label\nTERM,1.5,2.5,seiz\n")
    ann = read_annotations(p)
    assert ann.events == (Event(1.5, 2.5, "seiz", "TERM", 1.0),)
    assert ann.duration_s is None


@pytest.mark.parametrize(
    "label",
    ["seiz", "fnsz", "gnsz", "cpsz", "absz", "spsz", "tcsz", "tnsz", "mysz", "atsz", "cnsz"],
)
def test_every_seizure_type_is_a_seizure(tmp_path, label):
    p = tmp_path / "a.csv_bi"
    p.write_text(f"channel,start_time,stop_time,label\nTERM,1,2,{label.upper()}\nTERM,2,3,bckg\n")
    ann = read_annotations(p)
    assert [e.label for e in ann.events] == [label]
    assert ann.unknown_labels == ()


def test_unknown_labels_are_reported_and_count_as_seizure_by_default(tmp_path):
    p = tmp_path / "a.csv_bi"
    p.write_text(
        "channel,start_time,stop_time,label\nTERM,0,1,bckg\nTERM,1,2,xyzz\nTERM,2,3,musc\n"
        "TERM,3,4,fnsz\n"
    )
    ann = read_annotations(p)
    assert [e.label for e in ann.events] == ["xyzz", "fnsz"]
    assert ann.unknown_labels == ("xyzz",)
    # explicit seizure labels: everything else is background
    ann = read_annotations(p, seizure_labels=["fnsz"])
    assert [e.label for e in ann.events] == ["fnsz"]
    assert ann.unknown_labels == ("xyzz",)


TSE = "version = tse_v1.0.0\n\n0.0000 36.0000 bckg 1.0000\n36.0000 180.0000 cpsz 1.0000\n180.0000 300.0000 bckg 1.0000\n"


@pytest.mark.parametrize("suffix", [".tse", ".tse_bi"])
def test_tse(tmp_path, suffix):
    p = tmp_path / f"a{suffix}"
    p.write_text(TSE if suffix == ".tse" else TSE.replace("cpsz", "seiz"))
    ann = read_annotations(p)
    # v1 rows tile the recording: its length is the last row's end
    assert ann.duration_s == 300.0
    (ev,) = ann.events
    assert (ev.onset_s, ev.offset_s, ev.channel) == (36.0, 180.0, "TERM")
    assert ev.label == ("cpsz" if suffix == ".tse" else "seiz")


def test_tse_without_confidence_and_recognised_by_content(tmp_path):
    p = tmp_path / "a.txt"  # the version line, not the suffix, says it is a tse file
    p.write_text("version = tse_v1.0.0\n  1.0   2.0   gnsz\n")
    assert read_annotations(p).events == (Event(1.0, 2.0, "gnsz"),)
    bad = tmp_path / "b.tse"
    bad.write_text("version = tse_v1.0.0\n1.0 2.0\n")
    with pytest.raises(BrainpipeError, match=r"b\.tse: row 2 is malformed"):
        read_annotations(bad)


def test_events_past_the_end_are_clipped_and_counted(tmp_path):
    p = tmp_path / "a.csv_bi"
    p.write_text(
        "# duration = 100.00 secs\nchannel,start_time,stop_time,label\n"
        "TERM,10,20,seiz\nTERM,90,120,seiz\nTERM,150,160,seiz\nTERM,100,130,bckg\n"
    )
    ann = read_annotations(p)
    assert [(e.onset_s, e.offset_s) for e in ann.events] == [(10, 20), (90, 100)]
    assert ann.n_clipped == 2
    # the recording's own length (e.g. its EDF) wins over the header
    ann = read_annotations(p, duration_s=95.0)
    assert [(e.onset_s, e.offset_s) for e in ann.events] == [(10, 20), (90, 95)]
    assert ann.duration_s == 95.0


def test_zero_length_events_are_dropped(tmp_path):
    p = tmp_path / "a.csv_bi"
    p.write_text("channel,start_time,stop_time,label\nTERM,5,5,seiz\nTERM,6,7,seiz\n")
    assert [e.onset_s for e in read_annotations(p).events] == [6]


# ---------------------------------------------------------------------------------------------
# Labels that lie (issue 16 items 11 and 15): one error naming the file and the row
# ---------------------------------------------------------------------------------------------

HEAD = "# duration = 300.00 secs\nchannel,start_time,stop_time,label,confidence\nTERM,0,10,bckg,1\n"


@pytest.mark.parametrize(
    "row, match",
    [
        ("TERM,10,20," + "s" * 200_000 + ",1", "row 4: label 'sss"),
        ("TERM,10,20,se\x00iz,1", "row 4: label"),
        ("TERM,10,20,1.0000,1", "row 4: label '1.0000' is not a label name"),
        ("TERM,20,10,seiz,1", "row 4: start time 20.0 is after stop time 10.0"),
        ("TERM,nan,10,seiz,1", "row 4: start time is nan"),
        ("TERM,10,inf,seiz,1", "row 4: stop time is inf"),
        ("TERM,-1,10,seiz,1", "row 4: start time -1.0 is negative"),
        ("TERM,10,20,seiz,high", "row 4: confidence 'high' is not a number"),
        ("TERM,10,20", "row 4 is malformed"),
        ("T\x00ERM,10,20,seiz,1", "row 4: channel"),
        ("TERM," + "1" * 200_000 + "x,20,seiz,1", "row 4: start time '1111"),
    ],
)
def test_bad_rows_are_one_error_naming_file_and_row(tmp_path, row, match):
    p = tmp_path / "bad.csv_bi"
    p.write_text(HEAD + row + "\n")
    with pytest.raises(BrainpipeError, match=match) as e:
        read_annotations(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and "\n" not in msg and len(msg) < 400


def test_header_column_order_not_matching_rows(tmp_path):
    # `confidence,label` over `label,confidence` rows once made every row a seizure "1.0000"
    p = tmp_path / "swapped.csv_bi"
    p.write_text("channel,start_time,stop_time,confidence,label\nTERM,0,10,bckg,1.0000\n")
    with pytest.raises(BrainpipeError, match=r"swapped\.csv_bi: row 2: .*column order"):
        read_annotations(p)


def test_bad_duration_header(tmp_path):
    p = tmp_path / "a.csv_bi"
    p.write_text("# duration = nan secs\nchannel,start_time,stop_time,label\n")
    with pytest.raises(BrainpipeError, match="row 1: # duration is nan"):
        read_annotations(p)
    p.write_text("# duration = 0.00 secs\nchannel,start_time,stop_time,label\n")
    with pytest.raises(BrainpipeError, match="not a positive length"):
        read_annotations(p)


def test_unreadable_and_non_utf8(tmp_path):
    with pytest.raises(BrainpipeError, match="cannot read annotations"):
        read_annotations(tmp_path / "missing.csv_bi")
    p = tmp_path / "latin.csv_bi"
    p.write_bytes(b"# bname = caf\xe9\nchannel,start_time,stop_time,label\nTERM,1,2,seiz\n")
    assert len(read_annotations(p).events) == 1


@pytest.mark.parametrize(
    "encode",
    [
        lambda t: "\ufeff".encode() + t.encode(),  # Notepad's "UTF-8 with BOM"
        lambda t: t.encode("utf-16"),  # Notepad's "Unicode": UTF-16 LE with its BOM
        lambda t: "\ufeff".encode() + t.replace("\n", "\r\n").encode(),  # and CRLF
    ],
    ids=["utf8-bom", "utf16", "utf8-bom-crlf"],
)
def test_a_byte_order_mark_is_read_as_the_file_it_is(tmp_path, encode):
    p = tmp_path / "a.csv_bi"
    p.write_bytes(encode(CSV_BI))
    ann = read_annotations(p)
    assert [(e.onset_s, e.offset_s, e.label) for e in ann.events] == [(42.2786, 81.776, "seiz")]
    assert ann.duration_s == 301.0
    # Without the header comments the BOM sits on the column row itself.
    p.write_bytes(encode("channel,start_time,stop_time,label\nTERM,1,2,seiz\n"))
    assert len(read_annotations(p).events) == 1
    p = tmp_path / "a.tse"
    p.write_bytes(encode("version = tse_v1.0.0\n\n0.0 10.0 bckg 1.0\n10.0 12.5 cpsz 1.0\n"))
    assert [e.label for e in read_annotations(p).events] == ["cpsz"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_fail_with_one_line(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fuzz") / "x.csv_bi"
    p.write_bytes(b"channel,start_time,stop_time,label,confidence\n" + data)
    try:
        ann = read_annotations(p)
    except BrainpipeError as e:
        assert "\n" not in str(e)
    else:
        for ev in ann.events:
            assert 0 <= ev.onset_s < ev.offset_s


# ---------------------------------------------------------------------------------------------
# Hypothesis writer
# ---------------------------------------------------------------------------------------------


def test_hypothesis_round_trip(tmp_path):
    events = [
        Event(36.0, 180.0, "seiz", confidence=0.91234),
        Event(200.5, 210.25, "seiz", confidence=0.6),
    ]
    p = write_hypothesis(tmp_path / "out" / "aaaaaaac_s001_t000.csv_bi", events, 300.0)
    text = p.read_text()
    assert text.splitlines()[:5] == [
        "# version = csv_v1.0.0",
        "# bname = aaaaaaac_s001_t000",
        "# duration = 300.0000 secs",
        "#",
        "channel,start_time,stop_time,label,confidence",
    ]
    assert text.splitlines()[5:] == [
        "TERM,0.0000,36.0000,bckg,1.0000",
        "TERM,36.0000,180.0000,seiz,0.9123",
        "TERM,180.0000,200.5000,bckg,1.0000",
        "TERM,200.5000,210.2500,seiz,0.6000",
        "TERM,210.2500,300.0000,bckg,1.0000",
    ]
    ann = read_annotations(p)
    assert ann.duration_s == 300.0
    assert [(e.onset_s, e.offset_s, e.label, e.confidence) for e in ann.events] == [
        (36.0, 180.0, "seiz", 0.9123),
        (200.5, 210.25, "seiz", 0.6),
    ]
    assert not list(p.parent.glob(".*tmp*"))


def test_hypothesis_clips_overlaps_and_refuses_bad_values(tmp_path):
    text = format_hypothesis(
        [Event(250, 400, "seiz"), Event(0, 10, "seiz"), Event(5, 20, "seiz")], 300.0, "r"
    )
    rows = [ln for ln in text.splitlines() if ln.startswith("TERM")]
    assert rows == [
        "TERM,0.0000,10.0000,seiz,1.0000",
        "TERM,10.0000,20.0000,seiz,1.0000",
        "TERM,20.0000,250.0000,bckg,1.0000",
        "TERM,250.0000,300.0000,seiz,1.0000",
    ]
    assert format_hypothesis([], 12.5).splitlines()[-1] == "TERM,0.0000,12.5000,bckg,1.0000"
    with pytest.raises(BrainpipeError, match="not a positive length"):
        format_hypothesis([], 0.0)
    with pytest.raises(BrainpipeError, match="confidence outside"):
        format_hypothesis([Event(1, 2, "seiz", confidence=float("nan"))], 10.0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 500, allow_nan=False),
            st.floats(0.01, 100, allow_nan=False),
            st.floats(0, 1, allow_nan=False),
        ),
        max_size=8,
    ),
    st.floats(1, 600, allow_nan=False),
)
def test_hypothesis_round_trip_property(tmp_path_factory, spans, duration):
    # whatever the detector hands over, the file reads back as disjoint events inside the
    # recording, at the 4 decimals TUSZ writes
    events = [Event(on, on + length, "seiz", confidence=c) for on, length, c in spans]
    p = write_hypothesis(tmp_path_factory.mktemp("w") / "r.csv_bi", events, duration)
    ann = read_annotations(p)
    assert ann.duration_s == pytest.approx(duration, abs=1e-4) and ann.n_clipped == 0
    back = [(e.onset_s, e.offset_s) for e in ann.events]
    assert all(a < b for a, b in back) and back == sorted(back)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(back, back[1:], strict=False))
    covered = sum(b - a for a, b in back)
    union = sum(b - a for a, b in _union([(e.onset_s, min(e.offset_s, duration)) for e in events]))
    assert covered == pytest.approx(union, abs=1e-3 * (len(events) + 1))


def _union(spans):
    out = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out
