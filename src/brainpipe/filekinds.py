"""Which brainpipe file a path holds, from its first bytes: an index, or a cache (or a set).

An index (`indexfile`) is an .npz, a zip archive (`PK`); a cache (`cachefile`) is HDF5 (its
8-byte signature); a cache set (`cacheset`) is a JSON manifest (`{`). The suffix is not trusted:
users rename files, and `inspect` must open what a file is, not what it is called.

    file_kind("data/index.npz")  # "index"
    file_kind("data/set.json")   # "cache"
"""

from __future__ import annotations

import os
from typing import Literal

from brainpipe.errors import BrainpipeError

ZIP_MAGIC = b"PK"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def file_kind(path: str | os.PathLike) -> Literal["index", "cache"]:
    """ "index" for an index, "cache" for an HDF5 cache or a cache set; else one BrainpipeError."""
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except FileNotFoundError as e:
        raise BrainpipeError(f"{path}: not found") from e
    except OSError as e:
        raise BrainpipeError(f"{path}: cannot read ({e.strerror})") from e
    if magic.startswith(ZIP_MAGIC):
        return "index"
    if magic == HDF5_MAGIC or magic.lstrip().startswith(b"{"):
        return "cache"  # an HDF5 cache or a cache set (JSON)
    raise BrainpipeError(f"{path}: neither a brainpipe index (.npz) nor a cache (.h5, set .json)")
