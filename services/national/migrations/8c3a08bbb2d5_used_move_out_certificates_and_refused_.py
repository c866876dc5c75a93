"""Used move-out certificates, and the outcome of a history entry.

A tier records each move-out certificate it accepts, unique by number and by
the move-out it certifies, so none is used twice. A history entry is applied
(0); or, at the national node, acknowledged but kept as refused (1: a move-in
whose certificate's issuer did not hold the resident) or pending (2: until
the issuer's notifications arrive).

Revision ID: 8c3a08bbb2d5
Revises: 70aea8b855c4
Create Date: 2026-12-02 00:43:09

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "8c3a08bbb2d5"
down_revision: str | Sequence[str] | None = "70aea8b855c4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "used_certificates",
        sa.Column("certificate_number", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=6), nullable=False),
        sa.Column("move_out_sequence", sa.BigInteger(), nullable=False),
        sa.Column("resident_code", sa.String(length=11), nullable=False),
        sa.Column("origin_code", sa.String(length=6), nullable=False),
        sa.Column("origin_sequence", sa.BigInteger(), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("certificate_number"),
        sa.UniqueConstraint("issuer", "move_out_sequence", name="uq_used_certificates_move_out"),
    )
    with op.batch_alter_table("identity_history", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("outcome", sa.SmallInteger(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.create_index("ix_history_outcome", ["outcome"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("identity_history", schema=None) as batch_op:
        batch_op.drop_index("ix_history_outcome")
        batch_op.drop_column("outcome")
    op.drop_table("used_certificates")
