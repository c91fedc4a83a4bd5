"""The tenant's store: SQLite by default, split into repositories by what they store (client/store_api.py)."""

from fedloop.client.store.schema import ENCRYPTED_COLUMNS
from fedloop.client.store.sqlite_store import FeedbackStore

__all__ = ["ENCRYPTED_COLUMNS", "FeedbackStore"]
