"""Move-outs filed by post with a resident card's signature (付記転出届).

Revision ID: c5e2a7d1b904
Revises: d3a9c51e7f20
Create Date: 2026-12-03 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c5e2a7d1b904"
down_revision: str | Sequence[str] | None = "d3a9c51e7f20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "posted_move_outs",
        sa.Column("certificate_number", sa.String(length=64), nullable=False),
        sa.Column("card_id", sa.String(length=32), nullable=False),
        sa.Column("resident_id", sa.BigInteger(), nullable=False),
        sa.Column("destination", sa.String(length=6), nullable=False),
        sa.Column("planned_on", sa.String(length=10), nullable=False),
        sa.Column("new_address", sa.String(length=200), nullable=False),
        sa.Column("filing", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("filed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("certificate_number"),
    )
    op.create_index("ix_posted_move_outs_card", "posted_move_outs", ["card_id"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_posted_move_outs_card", table_name="posted_move_outs")
    op.drop_table("posted_move_outs")
