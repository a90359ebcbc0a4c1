import pytest
from hypothesis import given
from hypothesis import strategies as st

from brainpipe.corpus import (
    Facts,
    GenericLayout,
    parse_tuab_path,
    parse_tusz_path,
    read_manifest,
)
from brainpipe.errors import BrainpipeError


@pytest.mark.parametrize(
    "path, facts",
    [
        (
            "edf/train/normal/01_tcp_ar/aaaaaaav_s004_t000.edf",
            Facts("train", "normal", "aaaaaaav", "s004", "t000", "01_tcp_ar"),
        ),
        (
            "v3.0.1/edf/eval/abnormal/01_tcp_ar/aaaaamtb_s001_t002.edf",
            Facts("eval", "abnormal", "aaaaamtb", "s001", "t002", "01_tcp_ar"),
        ),
        # older TUH releases used numeric subject ids
        (
            "edf/train/abnormal/01_tcp_ar/00000016_s004_t000.edf",
            Facts("train", "abnormal", "00000016", "s004", "t000", "01_tcp_ar"),
        ),
        # empty and "." segments are skipped; only directories give split, label and montage
        (
            "edf//eval/./normal/01_tcp_ar/aaaaaaav_s004_t000.edf",
            Facts("eval", "normal", "aaaaaaav", "s004", "t000", "01_tcp_ar"),
        ),
        ("aaaaaaav_s004_t000.edf", Facts("", "", "aaaaaaav", "s004", "t000", "")),
        ("train/normal/", Facts(split="train")),
        ("train/01_tcp_ar/.", Facts(split="train")),
    ],
)
def test_tuab_paths(path, facts):
    assert parse_tuab_path(path) == facts


@pytest.mark.parametrize(
    "path, facts",
    [
        (
            "edf/train/aaaaaaac/s001_2002/02_tcp_le/aaaaaaac_s001_t000.edf",
            Facts("train", "", "aaaaaaac", "s001", "t000", "02_tcp_le"),
        ),
        (
            "edf/dev/aaaaaajy/s003_2003/03_tcp_ar_a/aaaaaajy_s003_t001.edf",
            Facts("dev", "", "aaaaaajy", "s003", "t001", "03_tcp_ar_a"),
        ),
    ],
)
def test_tusz_paths(path, facts):
    assert parse_tusz_path(path) == facts


def test_generic_regex_and_fallback():
    lay = GenericLayout(r"sub-(?P<subject>\d+)/.*_(?P<label>rest|task)\.fif")
    assert lay("sub-07/ses-1/sub-07_ses-1_rest.fif") == Facts(subject="07", label="rest")
    # no match: the file is its own subject and has no label
    assert lay("other/x.edf") == Facts(subject="other/x")
    assert GenericLayout()("a/b.edf").subject == "a/b"


def test_manifest(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,subject,label,split\nrec1.edf,s1,abnormal,train\nrec2.edf,s2,normal,eval\n")
    lay = GenericLayout(manifest=read_manifest(m))
    assert lay("rec1.edf") == Facts(split="train", label="abnormal", subject="s1")
    assert lay("rec3.edf").subject == "rec3"
    bad = tmp_path / "bad.csv"
    bad.write_text("file,subject\n")
    with pytest.raises(BrainpipeError, match="'path' column"):
        read_manifest(bad)


def test_manifest_saved_with_a_byte_order_mark(tmp_path):
    m = tmp_path / "m.csv"
    m.write_bytes("\ufeffpath,subject,split\r\nrec1.edf,s1,train\r\n".encode())
    assert GenericLayout(manifest=read_manifest(m))("rec1.edf") == Facts(
        split="train", subject="s1"
    )


@given(st.text(max_size=80))
def test_path_parsers_never_raise(path):
    for parse in (parse_tuab_path, parse_tusz_path):
        assert isinstance(parse(path), Facts)


def test_event_labeler_exact_text_then_first_whole_regex():
    from brainpipe.corpus import event_labeler

    label = event_labeler(
        {
            "Sleep stage ?": "unknown",  # exact text, though "?" is a regex operator
            "Sleep stage W": "W",
            "Sleep stage [34]": "N3",
            "Sleep stage R": "REM",
            "T[12]": "imagery",
            "T1": "left",  # exact text wins over an earlier regex
        }
    )
    assert [label(d) for d in ("Sleep stage ?", "Sleep stage W", "Sleep stage 3", "Sleep stage 4")] == [
        "unknown", "W", "N3", "N3",
    ]  # fmt: skip
    assert label("Sleep stage R") == "REM" and label("T1") == "left" and label("T2") == "imagery"
    assert label("T12") == "" and label("xT1") == "" and label("Sleep stage 5") == ""
    # Every key is also a regex: "Sleep stage ?" matches "Sleep stage" (the space optional).
    assert label("Sleep stage") == "unknown"
    assert event_labeler({})("anything") == ""
