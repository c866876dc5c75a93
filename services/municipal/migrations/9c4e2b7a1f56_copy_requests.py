"""Copies of resident records answered for issue at a municipality (広域交付).

Revision ID: 9c4e2b7a1f56
Revises: c5e2a7d1b904
Create Date: 2026-12-03 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "9c4e2b7a1f56"
down_revision: str | Sequence[str] | None = "c5e2a7d1b904"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "copy_requests",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("request_id", sa.String(length=32), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issuing_local_government_code", sa.String(length=6), nullable=False),
        sa.Column("operator", sa.String(length=200), nullable=False),
        sa.Column("terminal", sa.String(length=200), nullable=False),
        sa.Column("applicant_id", sa.BigInteger(), nullable=False),
        sa.Column("applicant_code", sa.String(length=11), nullable=False),
        sa.Column("card_id", sa.String(length=32), server_default="", nullable=False),
        sa.Column("relationship_shown", sa.Boolean(), nullable=False),
        sa.Column("code_shown", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_table(
        "copy_request_residents",
        sa.Column("copy_id", sa.BigInteger(), nullable=False),
        sa.Column("resident_id", sa.BigInteger(), nullable=False),
        sa.Column("resident_code", sa.String(length=11), nullable=False),
        sa.PrimaryKeyConstraint("copy_id", "resident_id"),
    )
    op.create_index(
        "ix_copy_request_residents_resident",
        "copy_request_residents",
        ["resident_id"],
        unique=False,
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_copy_request_residents_resident", table_name="copy_request_residents")
    op.drop_table("copy_request_residents")
    op.drop_table("copy_requests")
