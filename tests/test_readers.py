"""readers.py and its hooks: mne's formats, reader options, directory recordings, and the lazy
dataset over an index mixing EDF with other formats."""

from __future__ import annotations

import struct
from pathlib import Path

import mne
import numpy as np
import pytest
from helpers import write_edf
from mne.io._read_raw import _get_supported

from brainpipe.cache import build_cache
from brainpipe.cachefile import CacheReader
from brainpipe.config import load_config
from brainpipe.datasets import EdfWindowDataset
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index
from brainpipe.indexfile import Index
from brainpipe.readers import MNE_FORMATS, format_refusal, known_suffixes


def write_fif(path: Path, names, types, sfreq=100.0, seconds=20.0, seed=0, scale=30e-6):
    rng = np.random.default_rng(seed)
    info = mne.create_info(list(names), sfreq, list(types))
    raw = mne.io.RawArray(rng.normal(0, 1, (len(names), int(sfreq * seconds))) * scale, info)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw.save(path, overwrite=True, verbose="error")
    return path


def to_maxshield(path: Path) -> Path:
    """Rewrite a FIF's raw-data block as an Internal Active Shielding one (what MaxShield
    systems record): mne then refuses it unless allow_maxshield is passed."""
    data = path.read_bytes()
    for kind in (104, 105):  # FIFF_BLOCK_START, FIFF_BLOCK_END of FIFFB_RAW_DATA (102)
        old = struct.pack(">iiiii", kind, 3, 4, 0, 102)
        assert data.count(old) == 1
        data = data.replace(old, struct.pack(">iiiii", kind, 3, 4, 0, 119))  # FIFFB_IAS_RAW_DATA
    path.write_bytes(data)
    return path


def test_every_mne_format_is_indexed_or_listed_with_a_reason():
    assert set(_get_supported()) <= {*MNE_FORMATS, ".edf", ".bdf"}
    assert {".fif", ".ds", ".mff", ".vhdr", ".edf", ".bdf"} <= set(known_suffixes())
    assert "BrainVision" in format_refusal(".eeg")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("corpus.extensions=[.edf, .xyz]", "'.xyz': not a format brainpipe or mne reads"),
        ("corpus.extensions=[.asc]", "EyeLink eye tracking"),
        ('corpus.reader_options={"fif": {"allow_maxshield": true}}', "corpus.reader_options"),
        ('corpus.reader_options={".fif": true}', "corpus.reader_options"),
    ],
)
def test_config_refuses_formats_and_options_it_cannot_use(override, message):
    with pytest.raises(BrainpipeError, match=message):
        load_config(None, [override])


def test_maxshield_fif_is_indexed_with_its_reader_option_and_not_without(tmp_path):
    root = tmp_path / "raw"
    to_maxshield(write_fif(root / "sub-01_raw.fif", ["MEG 0111", "MEG 0112"], ["mag", "grad"]))
    write_fif(root / "sub-02_raw.fif", ["MEG 0111", "MEG 0112"], ["mag", "grad"], seed=1)
    base = ["corpus.extensions=[.fif]", "preprocess.montage=meg", "preprocess.sfreq=100"]
    base += ["preprocess.h_freq=30", "window.seconds=2", "window.stride_seconds=2"]

    plain = build_index(root, tmp_path / "plain.npz", load_config(None, base), progress=False)
    (err,) = plain.index.errors
    assert err["path"] == "sub-01_raw.fif"
    assert "Internal Active Shielding" in err["reason"] and "allow_maxshield" in err["reason"]

    cfg = load_config(None, [*base, 'corpus.reader_options={".fif": {"allow_maxshield": true}}'])
    index = build_index(root, tmp_path / "ms.npz", cfg, progress=False).index
    assert sorted(index.path.tolist()) == ["sub-01_raw.fif", "sub-02_raw.fif"]
    # build-cache opens it with the same options
    result = build_cache(tmp_path / "ms.npz", tmp_path / "c.h5", cfg, workers=1, progress=False)
    assert result.n_written == 2 and result.n_skipped == 0
    # and so does the lazy dataset, from the options the index recorded
    ds = EdfWindowDataset(tmp_path / "ms.npz", window_s=2.0)
    r = list(ds.paths).index("sub-01_raw.fif")
    x, _ = ds[int(ds.cum[r - 1]) if r else 0]
    ref = mne.io.read_raw(root / "sub-01_raw.fif", allow_maxshield=True, verbose="error")
    np.testing.assert_allclose(x, ref.get_data(start=0, stop=200), rtol=1e-6)


def test_directory_formats_are_one_recording_each(tmp_path):
    root = tmp_path / "raw"
    ds_dir = root / "sub-01" / "rest.ds"
    ds_dir.mkdir(parents=True)
    (ds_dir / "rest.meg4").write_bytes(b"MEG41CP" + b"\0" * 64)
    (ds_dir / "rest.res4").write_bytes(b"\0" * 64)
    mff = root / "sub-02" / "rest.mff"
    mff.mkdir(parents=True)
    (mff / "signal1.bin").write_bytes(b"\0" * 64)
    (mff / "info.xml").write_text("<fileInfo/>")
    write_edf(root / "sub-03" / "rest.edf", 100.0, labels=["EEG Fp1-REF", "EEG C3-REF"])
    cfg = load_config(None, ["corpus.extensions=[.edf, .ds, .mff]"])
    result = build_index(root, tmp_path / "i.npz", cfg, progress=False)
    assert result.index.path.tolist() == ["sub-03/rest.edf"]
    # broken (synthetic) CTF/EGI directories: one error each, for the directory, from mne's
    # CTF/EGI readers; never "Unsupported file type" for the files inside
    errors = {e["path"]: e["reason"] for e in result.index.errors}
    assert sorted(errors) == ["sub-01/rest.ds", "sub-02/rest.mff"]
    assert not any("Unsupported file type" in r for r in errors.values())


def test_index_types_channels_as_mne_does(tmp_path):
    root = tmp_path / "raw"
    labels = ["EEG Fp1-REF", "EEG C3-REF", "EOG horizontal", "EKG", "TRIGGER", "Resp oro-nasal"]
    write_edf(root / "a.edf", 100.0, labels=labels)
    index = build_index(root, tmp_path / "i.npz", load_config(), progress=False).index
    assert index.channel_types(0) == ("eeg", "eeg", "eog", "ecg", "stim", "misc")


@pytest.fixture
def mixed(tmp_path):
    """An index of one EDF in 10-10 names with PhysioNet's dots, and one EEG FIF."""
    root = tmp_path / "raw"
    write_edf(root / "S001R01.edf", 100.0, labels=["Fp1.", "C3..", "T7..", "Cz.."], seed=1)
    write_fif(root / "sub-02_eeg.fif", ["Fp1", "C3", "T3", "STI 014"], ["eeg"] * 3 + ["stim"])
    build_index(root, tmp_path / "i.npz", load_config(), progress=False)
    return tmp_path / "i.npz", root


def test_lazy_dataset_reads_fif_rows_through_mne_and_t7_as_t3(mixed):
    index_path, root = mixed
    ds = EdfWindowDataset(index_path, window_s=2.0, channels=["FP1", "T3", "C3"])
    assert ds.excluded == [] and sorted(ds.paths.tolist()) == ["S001R01.edf", "sub-02_eeg.fif"]
    assert len(ds) == 20  # 10 windows of 2 s from each 20 s recording
    for r, path in enumerate(ds.paths.tolist()):
        x, _ = ds[int(ds.cum[r]) - 1]
        start = ds.locate(int(ds.cum[r]) - 1)[1]
        raw = mne.io.read_raw(root / path, verbose="error")
        names = ["Fp1.", "T7..", "C3.."] if path.endswith(".edf") else ["Fp1", "T3", "C3"]
        ref = raw.get_data(picks=names, start=start, stop=start + 200)
        np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-12)


def test_lazy_dataset_can_leave_other_formats_out_with_one_line(mixed):
    index_path, _ = mixed
    ds = EdfWindowDataset(index_path, window_s=2.0, read_other_formats=False)
    assert ds.paths.tolist() == ["S001R01.edf"]
    assert ds.excluded == [("sub-02_eeg.fif", "not EDF/BDF (read_other_formats=False)")]
    assert ds.excluded_line().startswith("1 recordings used, 1 left out (1 ")


def test_lazy_dataset_leaves_out_a_recording_naming_one_electrode_twice(tmp_path):
    root = tmp_path / "raw"
    write_edf(root / "a.edf", 100.0, labels=["EEG T3-REF", "EEG T7-REF", "EEG C3-REF"])
    write_edf(root / "b.edf", 100.0, labels=["EEG T3-REF", "EEG C3-REF"])
    build_index(root, tmp_path / "i.npz", load_config(), progress=False)
    ds = EdfWindowDataset(tmp_path / "i.npz", window_s=2.0, channels=["T3", "C3"])
    assert ds.paths.tolist() == ["b.edf"]
    ((path, why),) = ds.excluded
    assert path == "a.edf" and "'EEG T3-REF' and 'EEG T7-REF'" in why


def test_cache_and_lazy_dataset_agree_on_channels(mixed, tmp_path):
    index_path, _ = mixed
    cfg = load_config(
        None,
        ["preprocess.channels=[FP1, C3, T3]", "preprocess.sfreq=100", "preprocess.h_freq=30"]
        + ["window.seconds=2", "window.stride_seconds=2", "preprocess.notch_freqs=[]"],
    )
    build_cache(index_path, tmp_path / "c.h5", cfg, workers=1, progress=False)
    ds = EdfWindowDataset(index_path, window_s=2.0, channels=["FP1", "C3", "T3"])
    with CacheReader(tmp_path / "c.h5") as reader:
        assert reader.recordings["path"].astype(str).tolist() == sorted(ds.paths.tolist())
        assert int(reader.recordings["n_windows"].sum()) == len(ds)


def test_index_file_is_loadable_with_the_new_types(mixed):
    index = Index.load(mixed[0])
    fif = index.path.tolist().index("sub-02_eeg.fif")
    assert index.channel_types(fif) == ("eeg", "eeg", "eeg", "stim")


def test_inspect_counts_recordings_by_10_20_coverage_through_the_normalizer(mixed, capsys):
    from brainpipe.cli import main

    assert main(["inspect", str(mixed[0])]) == 0
    # both recordings hold FP1, C3 and T3 (the EDF as "T7..") and nothing else of the 19
    assert "EEG channels (10-20): 0 recordings with all 19, 2 with some, 0 with none" in (
        capsys.readouterr().out
    )


def _window(args):
    ds, i = args
    return ds[i][0]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_lazy_dataset_with_mne_rows_pickles_for_every_start_method(mixed, method):
    import multiprocessing as mp
    import pickle

    ds = EdfWindowDataset(mixed[0], window_s=2.0, channels=["FP1", "T3"])
    last = len(ds) - 1
    want = [ds[0][0], ds[last][0]]  # opens an EDF header and an mne Raw in this process
    assert pickle.loads(pickle.dumps(ds))._headers == {}
    with mp.get_context(method).Pool(1) as pool:
        got = pool.map(_window, [(ds, 0), (ds, last)])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_recording_files_are_what_mne_opens_together():
    """What object storage copies for one recording: its parts, never a neighbour's."""
    from brainpipe.readers import recording_files

    keys = [
        "sub-01/eeg/sub-01_task-rest_eeg.vhdr",
        "sub-01/eeg/sub-01_task-rest_eeg.vmrk",
        "sub-01/eeg/sub-01_task-rest_eeg.eeg",
        "sub-01/eeg/sub-01_task-rest_channels.tsv",
        "sub-01/eeg/sub-01_task-rest_eeg2.eeg",
        "sub-01/eeg/deeper/sub-01_task-rest_eeg.eeg",
        "sub-02/meg/sub-02_task-noise_split-01_meg.fif",
        "sub-02/meg/sub-02_task-noise_split-02_meg.fif",
        "sub-02/meg/sub-02_task-other_split-02_meg.fif",
        "raw/run.fif",
        "raw/run-1.fif",
        "raw/run-2.fif",
        "raw/run-1b.fif",
        "raw/a-1.fif",
        "raw/a-2.fif",
        "ctf/s1.ds/s1.meg4",
        "ctf/s1.ds/s1.res4",
        "ctf/s1.dsx",
        "set/x.set",
        "set/x.fdt",
        "tusz/t.edf",
        "tusz/t.csv_bi",
    ]
    assert recording_files("sub-01/eeg/sub-01_task-rest_eeg.vhdr", keys) == [
        "sub-01/eeg/sub-01_task-rest_eeg.vhdr",
        "sub-01/eeg/sub-01_task-rest_eeg.eeg",
        "sub-01/eeg/sub-01_task-rest_eeg.vmrk",
    ]
    assert recording_files("sub-02/meg/sub-02_task-noise_split-01_meg.fif", keys) == [
        "sub-02/meg/sub-02_task-noise_split-01_meg.fif",
        "sub-02/meg/sub-02_task-noise_split-02_meg.fif",
    ]
    assert recording_files("raw/run.fif", keys) == ["raw/run.fif", "raw/run-1.fif", "raw/run-2.fif"]
    assert recording_files("raw/a-1.fif", keys) == ["raw/a-1.fif"]  # a-2 is another recording
    assert recording_files("ctf/s1.ds", keys) == ["ctf/s1.ds/s1.meg4", "ctf/s1.ds/s1.res4"]
    assert recording_files("set/x.set", keys) == ["set/x.set", "set/x.fdt"]
    assert recording_files("tusz/t.edf", keys) == ["tusz/t.edf"]  # the .csv_bi is read apart
