"""Memory-bound tests: a server process under an address-space cap (`prlimit`), its peak growth measured (VmHWM)."""

from __future__ import annotations

import os
import socket
import ssl
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


def post_head(port: int, path: str, extra_headers: str, length: int | None) -> bytes:
    """The head of a raw HTTP/1.1 POST with a declared length, or chunked when `length` is None."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
        f"{extra_headers}{framing}\r\n\r\n"
    ).encode()


def _answer_so_far(sock: socket.socket) -> bytes | None:
    """What the server has answered, without waiting: None when nothing yet (TLS records that carry no data,
    such as session tickets, count as nothing)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except (ssl.SSLWantReadError, BlockingIOError):
        return None
    finally:
        sock.settimeout(60)


def push_body(port: int, head: bytes, size: int, chunked: bool, tls: ssl.SSLContext | None = None) -> tuple[int, int]:
    """Send `head`, then up to `size` body bytes in 1 MiB pieces until the server answers.

    Returns (the answer's status, the body bytes sent before it came): what an attacker pushing a huge body sees.
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock = tls.wrap_socket(raw, server_hostname="localhost") if tls is not None else raw
    piece = b"a" * 2**20
    sent, answer = 0, None
    try:
        sock.sendall(head)
        while sent < size and (answer := _answer_so_far(sock)) is None:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
    except OSError:
        pass  # the server answered and closed while the body was still coming
    try:
        answer = answer or sock.recv(65536)
    finally:
        sock.close()
    return int(answer.split(b" ", 2)[1]), sent
