"""Bearer API keys, shared by the tenant's draft endpoint and its FeedbackService."""

from __future__ import annotations

import hmac
from pathlib import Path

from fedloop.shared.files import require_private_setting


def read_api_keys(path: Path) -> list[bytes]:
    """The accepted bearer keys, one per line (blank lines and # comments skipped)."""
    lines = path.read_text().splitlines()
    return [line.strip().encode() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def bearer_accepted(authorization: str, api_keys: list[bytes]) -> bool:
    """Whether an `Authorization` value is `Bearer <key>` with one of `api_keys` (constant-time compare)."""
    scheme, _, key = authorization.partition(" ")
    return scheme.lower() == "bearer" and any(hmac.compare_digest(key.strip().encode(), k) for k in api_keys)


def load_api_keys(path: str, setting: str) -> list[bytes] | None:
    """The keys in the file `setting` names, or None when it names none; OSError naming the setting otherwise
    (an unreadable file, one that others may read: it must be 0600 like every secret, or one without a key)."""
    if not path:
        return None
    require_private_setting(Path(path), setting)
    try:
        keys = read_api_keys(Path(path))
    except OSError as err:
        raise OSError(f"{setting}: cannot read {path} ({err.strerror})") from None
    if not keys:
        raise OSError(f"{setting}: {path} holds no key: put one bearer key per line")
    return keys
