"""`brainpipe report`: the static HTML page of real run dirs, opened in a real headless browser.

Runs are trained here (tiny, CPU): a plain run, a two-seed protocol and a seizure run. The page
is loaded by Debian's `chromium` from the file system (no server): its script writes how many
of its images decoded into the DOM (`--dump-dom` reads it back) and a screenshot must not be
blank. Without chromium the test FAILS with one line (`apt-get install -y chromium`; `make
test` installs it): a browser test that skips is not a pass.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import make_cache, seizure_cache, small_config
from PIL import Image

from brainpipe.cli import main
from brainpipe.runfiles import read_predictions
from brainpipe.training.train import train

FAST = [
    "train.model_kwargs={n_filters_time: 4, n_filters_spat: 4, pool_time_length: 10, pool_time_stride: 5}",
    "train.batch_size=32",
    "train.num_workers=0",
    "train.device=cpu",
    "train.epochs=2",
]
SMALL = [
    "preprocess.sfreq=50",
    "preprocess.h_freq=20",
    "window.seconds=2",
    "window.stride_seconds=2",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail(
        "chromium not found: the report test opens the page in Debian's headless chromium; "
        "apt-get install -y chromium (make test installs it)",
        pytrace=False,
    )


def browse(page: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += ["--virtual-time-budget=5000", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("report")
    cache = make_cache(d / "cache.h5", cfg=small_config())
    train(cache, d / "plain", small_config(*FAST))
    argv = ["train", "--cache", str(cache), "--run-dir", str(d / "seeds"), "--seeds", "0,1"]
    assert main([*argv, *[x for o in [*SMALL, *FAST] for x in ("--set", o)]]) == 0
    cfg = small_config(*FAST, "train.val_fraction=0")
    tusz = seizure_cache(d / "tusz.h5", cfg)
    train(tusz, d / "seizure", cfg)
    return {"plain": d / "plain", "seeds": d / "seeds", "seizure": d / "seizure"}


def test_predictions_are_best_pts_probabilities(runs):
    p = read_predictions(runs["plain"])
    assert p is not None and p["label_names"] == ["normal", "abnormal"] and p["epoch"] >= 1
    ev = p["splits"]["eval"]
    assert ev["probs"].shape == (len(ev["label"]), 2)
    np.testing.assert_allclose(ev["probs"].sum(1), 1, atol=1e-5)
    assert set(ev["subject"].tolist()) == {f"e{i:02d}" for i in range(4)}


def test_report_renders_in_a_headless_browser(runs, tmp_path, capsys):
    out = tmp_path / "report"
    dirs = [str(runs[k]) for k in ("plain", "seeds", "seizure")]
    assert main(["report", *dirs, "--out", str(out)]) == 0
    assert f"wrote {out / 'index.html'}" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    for kind in ("curves", "confusion", "roc-pr", "subjects"):
        assert sum(f"-{kind}.png" in name for name in images) == 3, (kind, images)
    assert sum(name.endswith("-seizure.png") for name in images) == 1  # the seizure run's curve
    assert "mean ± std" in page and "seed-1" in page and "cohen_kappa" in page

    dom = browse(out / "index.html", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    got = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert got, dom.stdout[:2000]
    assert int(got.group(1)) == int(got.group(2)) == len(images)  # every image decoded

    shot = tmp_path / "shot.png"
    r = browse(out / "index.html", f"--screenshot={shot}", "--window-size=1400,1800")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # drawn, not a blank page
