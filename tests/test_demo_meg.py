"""`make demo-meg` end to end: synthetic MEG (subjects with their own alpha peak and topography)
-> index -> build-cache -> train subject pairs on CPU -> embed; it must learn who is who on
subjects it never saw (issue 12)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brainpipe.embeddingfile import read_embeddings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_demo_meg_learns_held_out_subjects(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("needs make")
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        ["make", "-s", "demo-meg", f"DEMO={tmp_path}", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "channels (102): 102 MEG: 102 mag" in out  # inspect, by type
    m = re.search(r"eval: pair_auroc=([\d.]+), eer=([\d.]+), identification_top1=([\d.]+)", out)
    assert m, out[-3000:]
    auroc, eer, top1 = map(float, m.groups())
    # 4 held-out subjects: chance is EER 0.5, AUROC 0.5, top-1 0.25.
    assert eer < 0.4 and auroc > 0.65 and top1 > 0.4, out[-2000:]
    emb = read_embeddings(tmp_path / "meg" / "embeddings.h5")
    assert emb["embedding"].shape[1] == 32 and len(set(emb["subject"])) == 20
