"""Alembic migrations (packaged with the node)."""
