"""Atomic file output: no output file is ever left half-written.

Every stage writes to a temporary name beside the target, fsyncs it, renames it over the target
and fsyncs the directory, so a crash or a full disk leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from brainpipe.errors import BrainpipeError


def tmp_path_for(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def remove_stale_tmp(target: str | os.PathLike) -> list[Path]:
    """Remove temp files of `target` left by killed writers (`tmp_path_for` names them after
    the writer's pid); a live process's temp file is left alone. Returns what was removed."""
    target = Path(target)
    prefix = f".{target.name}.tmp-"
    removed = []
    try:
        names = [n for n in os.listdir(target.parent) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix) :]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            (target.parent / name).unlink()
            removed.append(target.parent / name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems (e.g. certain FUSE mounts) refuse it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_writable_dir(target: Path) -> None:
    """Fail before any work when the output's directory cannot be created or written."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BrainpipeError(f"{parent}: cannot create output directory ({e.strerror})") from e
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BrainpipeError(f"{parent}: output directory is not writable; choose another path")


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path to write; on success fsync it and rename it over `target`.

    On any error the temp file is removed and OSErrors (disk full, read-only) become one-line
    BrainpipeErrors naming the target.
    """
    target = Path(target)
    check_writable_dir(target)
    tmp = tmp_path_for(target)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BrainpipeError(f"{target}: cannot write ({e.strerror or e})") from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
