"""What the tamper tests write into a column with SQL: a different value of the same kind."""

from __future__ import annotations


def changed_value(column: str) -> str:
    """An SQL expression for `column` changed: text extended, a number plus one, bytes prefixed, NULL set."""
    return (
        f"CASE WHEN typeof({column}) = 'text' THEN {column} || 'x' "
        f"WHEN typeof({column}) IN ('integer', 'real') THEN {column} + 1 "
        f"WHEN typeof({column}) = 'blob' THEN CAST(X'00' || {column} AS BLOB) ELSE 'x' END"
    )
