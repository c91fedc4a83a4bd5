"""The tenant's store: what it holds and the interface (api.py), SQLite by default, row encryption and MACs."""

from fedloop.client.store.schema import ENCRYPTED_COLUMNS
from fedloop.client.store.sqlite_store import FeedbackStore

__all__ = ["ENCRYPTED_COLUMNS", "FeedbackStore"]
