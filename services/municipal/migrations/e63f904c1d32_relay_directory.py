"""The relay directory this node holds and the answers it gave to relayed requests.

Revision ID: e63f904c1d32
Revises: b7e1c5d2f901
Create Date: 2026-12-03 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "e63f904c1d32"
down_revision: str | Sequence[str] | None = "b7e1c5d2f901"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "relay_directory",
        sa.Column("serial", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("serial"),
    )
    op.create_table(
        "relay_answers",
        sa.Column("request_id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=6), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("body_sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("answer", sa.LargeBinary(), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("relay_answers")
    op.drop_table("relay_directory")
