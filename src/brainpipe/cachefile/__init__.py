"""The brainpipe cache format (HDF5): one folder, one contract, three files.

`layout.py` holds what the writer and the reader share (format version, status codes, `Layout`,
the window table, the task rule), `writer.py` the crash-safe write (`CacheWriter`), `reader.py`
the checked read (`CacheReader`); the layout is in docs/cache-format.md. Import from here:

    from brainpipe.cachefile import CacheReader, CacheWriter, Layout

The build stage (`brainpipe.cache`) only plans, schedules workers and hands their results to the
writer.
"""

from brainpipe.cachefile.layout import (
    COMPRESSION,
    FORMAT_VERSION,
    RESUME_KEYS,
    STATUS_DONE,
    STATUS_PENDING,
    STATUS_SKIPPED,
    Layout,
    compute_windows,
    plan_hash,
    task_events,
    task_of,
)
from brainpipe.cachefile.reader import MAX_COMPRESSION_RATIO, CacheReader
from brainpipe.cachefile.writer import CacheWriter, RowTarget, Written

__all__ = [
    "COMPRESSION",
    "FORMAT_VERSION",
    "MAX_COMPRESSION_RATIO",
    "RESUME_KEYS",
    "STATUS_DONE",
    "STATUS_PENDING",
    "STATUS_SKIPPED",
    "CacheReader",
    "CacheWriter",
    "Layout",
    "RowTarget",
    "Written",
    "compute_windows",
    "plan_hash",
    "task_events",
    "task_of",
]
