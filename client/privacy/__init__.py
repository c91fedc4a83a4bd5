"""Tenant-side privacy: PII recognizers, redaction with stable placeholders, moderation."""

from fedloop.client.privacy.redaction import Redaction, Redactor

__all__ = ["Redaction", "Redactor"]
