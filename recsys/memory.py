"""Handing freed heap memory back to the operating system between the phases of a job.

glibc keeps freed blocks below its mmap threshold (up to 32 MB) in its arenas: after a
phase that churned through many medium arrays the process stays as large as that phase's
peak, and the next phase's peak lands on top. ``malloc_trim(0)`` returns the free pages
of every arena (``madvise``), so each phase starts from what is still live.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to hand back
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_free_memory() -> bool:
    """Return freed heap pages to the OS; True where the C library can (glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
