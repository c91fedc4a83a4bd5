"""Atomic file writes (a reader sees the old file or the new one, never half of either) and private-file checks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` via a synced temporary file and a rename, with permissions `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FilePermissionError(Exception):
    """A private key file can be read by users other than its owner; the message names the `chmod` that fixes it."""


def require_private(path: Path) -> None:
    """Refuse a private key file that group or others may read or write (anything beyond mode 0600)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise FilePermissionError(
            f"private key file {path} has mode {mode:04o}, readable beyond its owner: run `chmod 600 {path}`"
        )


def require_private_setting(path: Path, setting: str) -> None:
    """`require_private` for a secret file a setting names: OSError naming `setting` when the file is missing,
    unreadable or readable beyond its owner."""
    try:
        require_private(path)
    except FilePermissionError as err:
        raise OSError(f"{setting}: {err}") from None
    except OSError as err:
        raise OSError(f"{setting}: cannot read {path} ({err.strerror})") from None
