"""Party names (tenants, HQ): checked in one place, because they become file names."""

from __future__ import annotations

import re

PARTY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
PARTY_NAME_RULE = "1-64 letters, digits, '-' or '_', starting with a letter or digit (e.g. 'acme')"


def is_party_name(name: str) -> bool:
    """Whether `name` is a plain party name: no path separators, dots or spaces, so it names a file in place."""
    return PARTY_NAME.fullmatch(name) is not None
