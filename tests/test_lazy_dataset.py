"""`EdfWindowDataset` on awkward trees (issue 16 item 18): a file whose samples scale to
NaN/Inf, and mixed montages without `channels`."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_edf

from brainpipe.config import load_config
from brainpipe.datasets import EdfWindowDataset
from brainpipe.errors import BrainpipeError
from brainpipe.index import build_index

CFG = load_config(None, ["corpus.layout=tuab"])


def _set_physical_range(path, signal: int, lo: str, hi: str) -> None:
    """Overwrite one signal's physical min/max header fields (8 ASCII bytes each)."""
    raw = bytearray(path.read_bytes())
    ns = int(raw[252:256].decode())
    pmin = 256 + ns * (16 + 80 + 8)
    raw[pmin + 8 * signal : pmin + 8 * signal + 8] = lo.ljust(8).encode()
    raw[pmin + 8 * ns + 8 * signal : pmin + 8 * ns + 8 * signal + 8] = hi.ljust(8).encode()
    path.write_bytes(bytes(raw))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
def test_non_finite_window_raises_naming_the_file(tmp_path):
    root = tmp_path / "raw"
    good = write_edf(root / "edf/train/normal/01_tcp_ar/aaaaaaaa_s001_t000.edf", 250, 10, seed=1)
    bad = write_edf(root / "edf/train/normal/01_tcp_ar/aaaaaaab_s001_t000.edf", 250, 10, seed=2)
    # A range of 2e308 overflows the scale to inf: every sample of that channel is +-inf or NaN.
    _set_physical_range(bad, 0, "-1e308", "1e308")
    build_index(root, tmp_path / "i.npz", CFG, progress=False)
    ds = EdfWindowDataset(tmp_path / "i.npz", window_s=2.0)
    bad_first = next(
        i for i in range(len(ds)) if ds.paths[ds.locate(i)[0]].endswith("b_s001_t000.edf")
    )
    assert np.isfinite(ds[0][0]).all() and str(good.name) in str(ds.paths[ds.locate(0)[0]])
    with pytest.raises(BrainpipeError, match=r"aaaaaaab_s001_t000\.edf: non-finite samples"):
        ds[bad_first]


def test_mixed_montages_give_one_window_shape(tmp_path):
    root = tmp_path / "raw"
    d = root / "edf/train/normal/01_tcp_ar"
    write_edf(d / "aaaaaaaa_s001_t000.edf", 250, 10, seed=1)
    write_edf(d / "aaaaaaab_s001_t000.edf", 250, 10, seed=2)
    few = [f"EEG {c}-REF" for c in ("FP1", "FP2", "C3")]
    write_edf(d / "aaaaaaac_s001_t000.edf", 250, 10, labels=few, seed=3)
    build_index(root, tmp_path / "i.npz", CFG, progress=False)
    ds = EdfWindowDataset(tmp_path / "i.npz", window_s=2.0)
    shapes = {ds[i][0].shape for i in range(len(ds))}
    assert len(shapes) == 1
    assert [p for p, _ in ds.excluded] == ["edf/train/normal/01_tcp_ar/aaaaaaac_s001_t000.edf"]
    assert ds.channels is not None and len(ds.channels) == next(iter(shapes))[0]
