"""Start a command that ends when the fedloop process that started it dies (Linux: PR_SET_PDEATHSIG).

`python -m fedloop.shared.end_with_parent PARENT_PID COMMAND...` asks the kernel
for SIGTERM on its parent's death and then replaces itself with COMMAND (the
setting survives exec). Doing this in a fresh single-threaded process replaces a
`preexec_fn` in fedloop's own multi-threaded one, which Python documents as
unsafe once threads have started.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def launcher(command: list[str]) -> list[str]:
    """`command`, prefixed so that it ends with the current process."""
    return [sys.executable, "-m", "fedloop.shared.end_with_parent", str(os.getpid()), *command]


def main(arguments: list[str]) -> None:
    """Set the parent-death signal, give up if the parent already died, then exec the command."""
    parent, command = int(arguments[0]), arguments[1:]
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            sys.exit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
