"""Tenant-side privacy: PII recognizers, redaction with stable placeholders, moderation."""
