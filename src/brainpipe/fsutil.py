"""Filesystem pieces the stages share: atomic output and the walk of a raw tree.

Atomic output: every stage writes to a temporary name beside the target, fsyncs it, renames it
over the target and fsyncs the directory, so a crash or a full disk leaves either the old file
or the new one; temp files of killed writers are removed on the next run (`remove_stale_tmp`).

The walk (`walk_tree`): every real directory once, symlink loops and undecodable names reported.
`is_url` tells a raw root in object storage from a local one, so a local run never imports the
object-storage code.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from brainpipe.errors import BrainpipeError

# `scheme://...`; the scheme is group 1
URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_url(path: str | os.PathLike) -> bool:
    """True for `scheme://...` roots (except `file://`), which take the object-storage path."""
    m = URL_SCHEME.match(os.fspath(path)) if isinstance(path, str) else None
    return bool(m) and m.group(1).lower() != "file"


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


def walk_tree(
    root: Path,
    suffixes: tuple[str, ...],
    errors: list[tuple[str, str]],
    is_recording_dir: Callable[[str], bool] | None = None,
) -> tuple[list[str], set[str]]:
    """Relative paths of candidate recordings, and the set of all relative file paths.

    Each real directory is walked once, keyed by (device, inode): a symlink loop (`loop -> .`)
    or a second link to a walked directory is reported in `errors` and not followed (a loop
    once indexed every file ~40 times over, and two never finished). Directories reached by
    their own path are walked before those reached through a symlink, so the names stored are
    the real ones whatever order the filesystem lists them in. A name that is not UTF-8 is
    skipped with a reason: it cannot be stored in the index or the cache as text. A directory
    whose name `is_recording_dir` accepts (CTF `.ds`, EGI `.mff`) is one recording, not walked."""
    found: list[str] = []
    every: set[str] = set()
    prefix = len(str(root)) + 1
    seen: dict[tuple[int, int], str] = {}
    st = root.stat()
    seen[(st.st_dev, st.st_ino)] = ""
    stack, linked = [str(root)], []
    while stack or linked:
        if not stack:  # real directories done: now those reached through symlinks, in order
            linked.sort(reverse=True)
            stack.append(linked.pop())
            if not _first_visit(stack[-1], root, prefix, seen, errors):
                stack.pop()
                continue
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as e:
            errors.append((os.path.relpath(d, root), f"unreadable directory: {e.strerror}"))
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            name = entry.name
            if name.startswith("."):
                if not is_dir:
                    every.add(entry.path[prefix:].replace(os.sep, "/"))
                continue
            if not name.isascii() and not _utf8(name):
                rel = entry.path[prefix:].replace(os.sep, "/")
                errors.append((_printable(rel), _NON_UTF8))
                continue
            if is_dir:
                if is_recording_dir and name.lower().endswith(suffixes) and is_recording_dir(name):
                    found.append(entry.path[prefix:].replace(os.sep, "/"))
                elif entry.is_symlink():
                    linked.append(entry.path)
                elif _first_visit(entry.path, root, prefix, seen, errors):
                    stack.append(entry.path)
                continue
            rel = entry.path[prefix:].replace(os.sep, "/")
            every.add(rel)
            if name.lower().endswith(suffixes):
                found.append(rel)
    found.sort()
    return found, every


_NON_UTF8 = "non-UTF-8 file name: rename it to UTF-8 to index it (shown with \\x escapes)"


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by os as lone surrogates
        return False
    return True


def _printable(rel: str) -> str:
    """A path with undecodable bytes as `\\xNN` text, safe to store and print."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def _first_visit(
    path: str, root: Path, prefix: int, seen: dict, errors: list[tuple[str, str]]
) -> bool:
    """Whether `path` is a directory not walked yet; records why not in `errors`."""
    rel = path[prefix:].replace(os.sep, "/")
    try:
        st = os.stat(path)
    except OSError as e:
        errors.append((rel, f"unreadable directory: {e.strerror}"))
        return False
    key = (st.st_dev, st.st_ino)
    first = seen.get(key)
    if first is None:
        seen[key] = rel
        return True
    if first == "" or rel.startswith(first + "/"):
        where = "the raw root" if first == "" else repr(first)
        errors.append((rel, f"symlink loop: points back to {where}, not followed"))
    else:
        errors.append((rel, f"directory already indexed: same as {first!r}, not followed"))
    return False
