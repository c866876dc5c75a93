"""Alembic environment shared by every node kind; run through jukinet.migrate."""

from alembic import context

from jukinet.migrate import target_metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through jukinet.migrate, which passes a connection")

versions = config.get_main_option("version_locations")
assert versions is not None
from pathlib import Path  # noqa: E402

context.configure(
    connection=connection,
    target_metadata=target_metadata(Path(versions)),
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
