"""Giving the memory a closed connection's queue freed back to the system: glibc's ``malloc_trim``."""

from __future__ import annotations

import ctypes
from typing import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_trim = _malloc_trim()

CAN_TRIM = _trim is not None
"""Whether :func:`trim` does anything here."""


def trim() -> None:
    """Return the C heap's free memory to the system (glibc keeps it in its arenas unless asked);
    nothing where the C library has no ``malloc_trim``."""
    if _trim is not None:
        _trim(0)
