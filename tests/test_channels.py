"""channels.py: names, types and electrode lookup over the label sets real recordings carry."""

from __future__ import annotations

import edfio
import mne
import numpy as np
import pytest

from brainpipe.channels import (
    canonical_name,
    channel_type,
    channel_types,
    coverage_line,
    locate,
)
from brainpipe.config import STANDARD_1020, PreprocessConfig
from brainpipe.errors import BrainpipeError
from brainpipe.preprocess import plan_channels

# TUH 01_tcp_ar, non-EEG signals included.
TUH = [
    *(f"EEG {e}-REF" for e in ("FP1", "FP2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2")),
    *(f"EEG {e}-REF" for e in ("F7", "F8", "T3", "T4", "T5", "T6", "A1", "A2", "FZ", "CZ", "PZ")),
    "EEG ROC-REF", "EEG LOC-REF", "EEG EKG1-REF", "EMG-REF", "EEG 26-REF", "PHOTIC-REF",
    "IBI", "BURSTS", "SUPPR",
]  # fmt: skip
# PhysioNet EEG Motor Movement/Imagery (EEGMMI), as its EDF headers write them: 10-10 names,
# mixed case, padded with dots.
EEGMMI = [
    "Fc5.",
    "Fc3.",
    "Fc1.",
    "Fcz.",
    "Fc2.",
    "Fc4.",
    "Fc6.",
    "C5..",
    "C3..",
    "C1..",
    "Cz..",
    "C2..",
    "C4..",
    "C6..",
    "Cp5.",
    "Cp3.",
    "Cp1.",
    "Cpz.",
    "Cp2.",
    "Cp4.",
    "Cp6.",
    "Fp1.",
    "Fpz.",
    "Fp2.",
    "Af7.",
    "Af3.",
    "Afz.",
    "Af4.",
    "Af8.",
    "F7..",
    "F5..",
    "F3..",
    "F1..",
    "Fz..",
    "F2..",
    "F4..",
    "F6..",
    "F8..",
    "Ft7.",
    "Ft8.",
    "T7..",
    "T8..",
    "T9..",
    "T10.",
    "Tp7.",
    "Tp8.",
    "P7..",
    "P5..",
    "P3..",
    "P1..",
    "Pz..",
    "P2..",
    "P4..",
    "P6..",
    "P8..",
    "Po7.",
    "Po3.",
    "Poz.",
    "Po4.",
    "Po8.",
    "O1..",
    "Oz..",
    "O2..",
    "Iz..",
]
# Sleep-EDF SC*-PSG.edf.
SLEEP_EDF = [
    "EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal", "Resp oro-nasal", "EMG submental",
    "Temp rectal", "Event marker",
]  # fmt: skip
# A Nihon Kohden EDF+ export and a BioSemi BDF.
NIHON_KOHDEN = [*(f"EEG {e}-Ref" for e in STANDARD_1020), "EEG A1-Ref", "DC03", "ECG", "EMG1"]
BIOSEMI = ["Fp1", "AF3", "F7", "F3", "FC1", "T7", "P7", "Status"]


@pytest.mark.parametrize(
    ("label", "name"),
    [
        # TUH
        ("EEG FP1-REF", "FP1"), ("EEG FP1-LE", "FP1"), ("EEG T3-REF", "T3"),
        ("EEG A1-REF", "A1"), ("EEG FZ-REF", "FZ"), ("EEG CZ-AR", "CZ"), ("FP1", "FP1"),
        ("Fp1", "FP1"), (" EEG  O2-REF ", "O2"), ("EEG EKG1-REF", "EKG1"), ("EKG1-REF", "EKG1"),
        ("PHOTIC-REF", "PHOTIC"), ("EMG-REF", "EMG"), ("EEG 26-REF", "26"), ("IBI", "IBI"),
        ("BURSTS", "BURSTS"), ("DC1-DC", "DC1-DC"),
        # other references and case
        ("EEG C3-AVG", "C3"), ("C4_REF", "C4"), ("Fz", "FZ"), ("EEG Fp1-Ref", "FP1"),
        # PhysioNet's dots
        ("Fc5.", "FC5"), ("T7..", "T7"), ("Cz..", "CZ"), ("T10.", "T10"), ("Iz..", "IZ"),
        # bipolar labels keep both electrodes
        ("EEG Fpz-Cz", "FPZ-CZ"),
    ],
)  # fmt: skip
def test_canonical_name_on_real_labels(label, name):
    assert canonical_name(label) == name


@pytest.mark.parametrize(
    ("labels", "types"),
    [
        (TUH[-9:], ["eog", "eog", "ecg", "emg", "eeg", "stim", "misc", "misc", "misc"]),
        (SLEEP_EDF, ["eeg", "eeg", "eog", "misc", "emg", "misc", "stim"]),
        (NIHON_KOHDEN[-4:], ["eeg", "misc", "ecg", "emg"]),
        (BIOSEMI, ["eeg"] * 7 + ["stim"]),
        (["MEG 0113", "EEG 001", "STI 014", "EOG 061", "STI101"], ["eeg", "eeg", "stim", "eog", "stim"]),
    ],
)  # fmt: skip
def test_channel_types_of_real_label_sets(labels, types):
    assert list(channel_types(tuple(labels))) == types


def test_channel_types_agree_with_mne_on_an_edf_it_types(tmp_path):
    # mne types EDF channels from the label's first word (infer_types) and the stim channel by
    # name; where its type is one of ours, ours must be the same.
    labels = ["EEG Fpz-Cz", "EOG horizontal", "EMG submental", "ECG I", "TRIGGER", "EEG C3"]
    signals = [
        edfio.EdfSignal(np.zeros(200), 100, label=lab, physical_range=(-500, 500)) for lab in labels
    ]
    edfio.Edf(signals).write(tmp_path / "x.edf")
    raw = mne.io.read_raw_edf(tmp_path / "x.edf", infer_types=True, verbose="error")
    assert raw.get_channel_types() == [channel_type(lab) for lab in labels]


def test_eegmmi_fills_the_10_20_montage_through_its_10_10_names():
    plan = plan_channels(EEGMMI, PreprocessConfig())
    assert plan.names == STANDARD_1020 and plan.missing == ()
    picked = {n: EEGMMI[plan.source[plan.anode[k]]] for k, n in enumerate(plan.names)}
    assert picked["T3"] == "T7.." and picked["T6"] == "P8.." and picked["FP1"] == "Fp1."


def test_a_10_10_montage_is_filled_by_10_20_recordings():
    ten_ten = tuple(
        {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}.get(e, e) for e in STANDARD_1020
    )
    plan = plan_channels(TUH, PreprocessConfig(channels=ten_ten))
    assert plan.names == ten_ten  # the cache stores the names the config lists
    assert TUH[plan.source[plan.anode[ten_ten.index("T7")]]] == "EEG T3-REF"


@pytest.mark.parametrize(
    ("labels", "named"),
    [
        (["EEG T3-REF", "T7", "C3"], ("'EEG T3-REF'", "'T7'")),
        (["Fp1.", "FP1", "C3"], ("'Fp1.'", "'FP1'")),
        (["EEG FP1-REF", "EEG FP1-LE", "C3"], ("'EEG FP1-REF'", "'EEG FP1-LE'")),
    ],
)
def test_two_channels_for_one_electrode_are_an_error_naming_both(labels, named):
    with pytest.raises(BrainpipeError) as e:
        locate(labels, ["FP1", "T3", "C3"])
    assert all(n in str(e.value) for n in named) and "\n" not in str(e.value)
    with pytest.raises(BrainpipeError, match="both stand for"):
        plan_channels([*labels, *TUH], PreprocessConfig(on_missing="zero"))


def test_duplicates_the_montage_does_not_need_are_no_error():
    assert locate(["EKG", "EKG", "C3"], ["C3"]) == [2]


def test_only_eeg_typed_channels_fill_an_eeg_montage():
    # a file's own types win over the label: an eog-typed "Fp1" is not the FP1 electrode
    assert locate(["Fp1", "C3"], ["FP1", "C3"], ["eog", "eeg"]) == [None, 1]
    assert locate(["Fp1", "C3"], ["FP1", "C3"], ["bad", "eeg"]) == [None, 1]
    with pytest.raises(BrainpipeError, match="missing channels: FP1"):
        plan_channels(["Fp1", *STANDARD_1020[1:]], PreprocessConfig(), ["bad"] + ["eeg"] * 18)


def test_coverage_line_counts_full_partial_and_ambiguous_recordings():
    line = coverage_line([TUH, EEGMMI, SLEEP_EDF, ["T3", "T7", "C3"], TUH, ["C3"]], STANDARD_1020)
    assert line == (
        "EEG channels (10-20): 3 recordings with all 19, 1 with some, 1 with none, "
        "1 naming one electrode twice (e.g. T3 and T7)"
    )


def test_a_montage_may_list_a_non_eeg_channel_by_name():
    # sleep staging wants the EOG beside the EEG: the wanted name's own type decides
    assert locate(SLEEP_EDF, ["EEG Fpz-Cz", "EOG horizontal", "EMG submental"]) == [0, 2, 4]
    # the generic "eeg" of EDF readers and of indexes written before is refined by the label
    assert locate(["ROC", "C3"], ["ROC", "C3"], ["eeg", "eeg"]) == [0, 1]
    assert locate(["ROC", "C3"], ["ROC", "C3"], ["misc", "eeg"]) == [None, 1]
