"""One recording opened for preprocessing: its planned channels, a time slice at a time.

`open_recording` gives (read, n_samples, sample rate, channel plan) for any recording brainpipe
indexes: EDF/BDF through `edf`'s memmap reader (only the picked channels' bytes), mne's formats
through `readers.open_raw` without preloading. The channel plan comes from the file's own header
(`preprocess.plan_channels`), with the channels the index marks bad planned as missing.
`load_recording` is the same, read whole. build-cache's workers and `verify` read through it.

Not in `readers.py` because that module sits below `config` (which asks it which suffixes a
corpus may list) while planning channels needs `preprocess`, which needs `config`: one module
would close the circle readers -> preprocess -> config -> readers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from brainpipe.channels import channel_types, mark_bad
from brainpipe.config import PreprocessConfig
from brainpipe.edf import read_header, read_signals
from brainpipe.errors import BrainpipeError
from brainpipe.preprocess import plan_channels
from brainpipe.readers import open_raw


def load_recording(
    path: str | os.PathLike,
    cfg: PreprocessConfig,
    reader_options: dict | None = None,
    bad: Collection[str] = (),
) -> tuple[np.ndarray, float, Any]:
    """Read what the preprocessing of `path` needs: (block in Volts, its sample rate, the plan).

    The whole recording at once (float64: 8.8 GB for an hour of 306-channel 1 kHz MEG);
    `cache.process_recording` reads it a time slice at a time through `open_recording` instead.
    """
    read, n, sfreq, plan = open_recording(path, cfg, reader_options, bad)
    return read(0, n), sfreq, plan


def open_recording(
    path: str | os.PathLike,
    cfg: PreprocessConfig,
    reader_options: dict | None = None,
    bad: Collection[str] = (),
) -> tuple[Callable[[int, int], np.ndarray], int, float, Any]:
    """(read, n_samples, sample rate, plan) for `path`; read(start, stop) returns samples
    [start, stop) of the planned channels, (len(plan.source), stop - start) float64 Volts.

    EDF/BDF go through our memmap reader (only the picked channels' bytes); other formats
    through mne without preloading (only the slice's data buffers). The plan is made from the
    file's own header, so a file edited since indexing is caught by the length check in
    `cache.process_recording`. `reader_options` are `corpus.reader_options`; `bad` the channel labels
    the index marks bad (BIDS), planned as missing.
    """
    path = str(path)
    if path.lower().endswith((".edf", ".bdf")):
        h = read_header(path)
        sig = h.signal_indices
        labels = [h.labels[i] for i in sig]
        plan = plan_channels(labels, cfg, mark_bad(labels, channel_types(tuple(labels)), bad))
        picks = [sig[j] for j in plan.source]
        rates = {h.sfreq(i) for i in picks}
        if len(rates) > 1:
            raise BrainpipeError(
                f"{path}: the picked channels have different sample rates {sorted(rates)}"
            )
        sfreq = rates.pop() if rates else h.sfreq(sig[0])
        n = h.n_samples(picks[0]) if picks else 0
        return (lambda start, stop: read_signals(h, picks, start, stop)), n, float(sfreq), plan
    raw = open_raw(path, reader_options)
    plan = plan_channels(raw.ch_names, cfg, mark_bad(raw.ch_names, raw.get_channel_types(), bad))
    picks = list(plan.source)

    def read(start: int, stop: int) -> np.ndarray:
        if not picks:
            return np.zeros((0, stop - start))
        return raw.get_data(picks=picks, start=start, stop=stop)

    return read, raw.n_times, float(raw.info["sfreq"]), plan
