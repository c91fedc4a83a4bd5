"""Loopback ports for the servers tests start: one helper, no port handed out twice in a run.

Binding port 0 and closing the socket hands a port back to the kernel, which may give it to the next caller; with
two pytest-xdist workers two tests could start servers on the same port. Each worker draws from a range of its own
(below Linux's ephemeral ports, so no outgoing connection takes one), remembers what it handed out, and checks the
port is free by binding it.
"""

from __future__ import annotations

import os
import random
import socket

_BASE, _SPAN, _RANGES = 20000, 2000, 6  # worker n draws from [20000 + 2000 (n mod 6), +2000): under 32768
_handed_out: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port no other test of this run was given."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    start = _BASE + _SPAN * (worker % _RANGES)
    for port in random.Random().sample(range(start, start + _SPAN), _SPAN):
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in {start}..{start + _SPAN}")
