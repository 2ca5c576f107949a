"""Encrypted, signed, verifiable backup and restore (see issue 4; not built yet)."""
