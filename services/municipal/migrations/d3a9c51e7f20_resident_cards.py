"""Resident cards: the cards this node issued or continued, and proof challenges.

Revision ID: d3a9c51e7f20
Revises: f7a01b5d2e43
Create Date: 2026-12-03 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "d3a9c51e7f20"
down_revision: str | Sequence[str] | None = "f7a01b5d2e43"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "resident_cards",
        sa.Column("card_id", sa.String(length=32), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("resident_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("issued_on", sa.String(length=10), nullable=False),
        sa.Column("continued_from", sa.String(length=120), server_default="", nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revocation_reason", sa.String(length=32), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("card_id"),
        sa.UniqueConstraint("serial"),
    )
    op.create_index("ix_resident_cards_resident", "resident_cards", ["resident_id"], unique=False)
    op.create_index(
        "ux_resident_cards_one_valid",
        "resident_cards",
        ["resident_id"],
        unique=True,
        sqlite_where=sa.text("status = 'valid'"),
        postgresql_where=sa.text("status = 'valid'"),
    )
    op.create_table(
        "card_challenges",
        sa.Column("nonce_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("terminal", sa.String(length=120), nullable=False),
        sa.Column("subject", sa.String(length=120), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce_hash"),
    )
    op.create_index("ix_card_challenges_expires", "card_challenges", ["expires_at"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_card_challenges_expires", table_name="card_challenges")
    op.drop_table("card_challenges")
    op.drop_index("ux_resident_cards_one_valid", table_name="resident_cards")
    op.drop_index("ix_resident_cards_resident", table_name="resident_cards")
    op.drop_table("resident_cards")
