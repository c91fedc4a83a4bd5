"""Draft serving: the tenant's released versions drafting for its users, over an OpenAI-compatible endpoint."""
