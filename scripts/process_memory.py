"""A benchmark process's own resident memory, from /proc (Linux): where a measured piece of work starts, and its
peak.

glibc keeps freed memory in its heaps, so a process that has just loaded a model or built its inputs reads several
GB above what it holds live, and how much depends on the order of earlier allocations. `start_peak_count` first
hands that memory back (`malloc_trim`), so that two arms measured in separate processes start from what each really
holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path


def resident_bytes(field: str) -> int:
    """This process's current (VmRSS) or peak (VmHWM) resident memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def start_peak_count() -> int:
    """Return freed heap memory to the system, restart the peak count (VmHWM) there, and return that resident
    size."""
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return resident_bytes("VmRSS")
