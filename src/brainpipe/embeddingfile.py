"""The embeddings file `brainpipe embed` writes: one HDF5 file, its writer and its reader.

    /embedding   (n_windows, dim) float32, one row per window of the cache
    /recording   (n_windows,) int64   row of the cache's recordings table
    /path        (n_windows,) str     the recording's path (relative to the raw root)
    /subject     (n_windows,) str     its subject ("" when the corpus has none)
    /start       (n_windows,) int64   first sample of the window within its recording
    attrs: format_version, cache, checkpoint, epoch, sfreq, window_samples, model (JSON),
           created; written last, so a file without them is not finished

Written atomically (temp + fsync + rename): a killed `embed` leaves no half file.

    write_embeddings("emb.h5", emb, recording, path, subject, start, attrs={...})
    e = read_embeddings("emb.h5"); e["embedding"], e["subject"], e.attrs["checkpoint"]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainpipe.errors import BrainpipeError
from brainpipe.fsutil import atomic_output

FORMAT_VERSION = 1
COLUMNS = ("embedding", "recording", "path", "subject", "start")


def write_embeddings(
    out: str | os.PathLike,
    embedding: np.ndarray,
    recording: np.ndarray,
    path: np.ndarray,
    subject: np.ndarray,
    start: np.ndarray,
    attrs: dict[str, Any],
) -> None:
    import h5py

    n = len(embedding)
    if not all(len(a) == n for a in (recording, path, subject, start)):
        raise ValueError("embedding columns of different lengths")
    text = h5py.string_dtype()
    with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("embedding", data=np.asarray(embedding, np.float32))
        f.create_dataset("recording", data=np.asarray(recording, np.int64))
        f.create_dataset("path", data=np.asarray(path, dtype=object), dtype=text)
        f.create_dataset("subject", data=np.asarray(subject, dtype=object), dtype=text)
        f.create_dataset("start", data=np.asarray(start, np.int64))
        for k, v in attrs.items():
            f.attrs[k] = v
        f.attrs["format_version"] = FORMAT_VERSION


@dataclass
class Embeddings:
    columns: dict[str, np.ndarray]
    attrs: dict[str, Any]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.columns[key]

    def __len__(self) -> int:
        return len(self.columns["embedding"])


def read_embeddings(path: str | os.PathLike) -> Embeddings:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BrainpipeError(f"{path}: not a readable embeddings file ({e})") from e
    with f:
        version = int(f.attrs.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise BrainpipeError(
                f"{path}: embeddings format version {version}, this brainpipe reads version "
                f"{FORMAT_VERSION}; run `brainpipe embed` again"
            )
        cols = {k: f[k][()] for k in COLUMNS}
        for k in ("path", "subject"):
            cols[k] = np.array([v.decode() if isinstance(v, bytes) else v for v in cols[k]])
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return Embeddings(cols, attrs)
