"""Give freed heap memory back to the operating system after busy periods (glibc `malloc_trim`).

Why: under load, decoding threads and forward passes of every batch size free memory that glibc
keeps in its per-thread arenas, so a process's footprint only grows. Measured here (one process,
mixed load on every route): private memory 318 MB at start, 596 MB after the load, 406 MB with a
trim once each burst of load is over, at the same req/s (docs/serving.md). Elsewhere (musl, macOS)
there is no malloc_trim and this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from typing import Callable

log = logging.getLogger("rnnlab")


def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim(pad), or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


async def trim_after_activity(interval_s: float, activity: Callable[[], int],
                              trim: Callable[[int], int] | None = None) -> None:
    """Trim the heap once after each busy period: when `activity()` (a counter of work done, e.g.
    items through the batchers) has not moved for `interval_s` seconds but has since the last
    trim. Never during sustained load: a trim holds glibc's arena locks, and trimming every second
    under 32 clients put 180 ms stalls into /predict/digit's p99. Runs until cancelled; the trim
    runs in a worker thread so the event loop never waits on it."""
    trim = trim or find_malloc_trim()
    if trim is None or interval_s <= 0:
        return
    seen = trimmed = activity()
    while True:
        await asyncio.sleep(interval_s)
        now = activity()
        if now == seen and now != trimmed:  # quiet for a whole interval after some work
            trimmed = now
            await asyncio.to_thread(trim, 0)
        seen = now
