"""Durable writes: what makes a rename or a new file survive a crash."""

from __future__ import annotations

import os


def _fsync(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    _fsync(path)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Make a file's content durable (before it is renamed into place)."""
    _fsync(path)
