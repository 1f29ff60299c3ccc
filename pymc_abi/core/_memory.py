"""Hand freed memory back to the operating system after a large computation.

A pass of a flow over thousands of draws allocates and frees hundreds of megabytes in
blocks of one to ten megabytes. glibc's allocator keeps such freed blocks in its heap
(they are too small to be mapped one by one), so the resident memory of a process that
samples many draws grows with every pass although nothing is live. ``malloc_trim`` returns
the free pages; elsewhere (macOS, Windows, musl) the allocators return memory themselves
and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_memory"]


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Return free heap memory to the operating system (glibc only; else nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
