"""Memory-bound tests: a server process under an address-space cap (`prlimit`), its peak growth measured (VmHWM)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HEADROOM = 1536 * 2**20  # address space a capped process may add to what it had reserved when the cap was set
CAPPED_ENV = {**os.environ, "MALLOC_ARENA_MAX": "4"}  # glibc reserves 64 MiB of address space per arena: keep few


def memory_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` figure in KiB (VmRSS, VmHWM, VmPeak, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def cap_address_space(pid: int) -> int:
    """Cap a running process's address space at its reservation so far plus HEADROOM (prlimit); returns the cap.

    A regression then fails the process's allocation (a MemoryError the test sees) instead of the machine.
    """
    cap = memory_kib(pid, "VmPeak") * 1024 + HEADROOM
    subprocess.run(["prlimit", "--pid", str(pid), f"--as={cap}:{cap}"], check=True)
    return cap


class PeakGrowth:
    """How far a process's resident peak rose above its resident size when measuring started."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart the peak (VmHWM) from the current RSS
        self._before = memory_kib(pid, "VmRSS")

    def mib(self) -> float:
        """Peak growth so far, in MiB."""
        return (memory_kib(self._pid, "VmHWM") - self._before) / 1024
