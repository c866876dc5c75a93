"""Move-in notices: the relay outbox and the move-out made final.

Revision ID: f7a01b5d2e43
Revises: e63f904c1d32
Create Date: 2026-12-03 11:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "f7a01b5d2e43"
down_revision: str | Sequence[str] | None = "e63f904c1d32"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("move_out_certificates") as batch:
        batch.add_column(sa.Column("confirmed_on", sa.String(length=10), nullable=True))
        batch.add_column(sa.Column("confirmed_by", sa.String(length=6), nullable=True))
        batch.add_column(sa.Column("moved_in_on", sa.String(length=10), nullable=True))
    op.create_table(
        "relay_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("request_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("destination", sa.String(length=6), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refusal_reason", sa.String(length=64), server_default="", nullable=False),
        sa.Column("refusal_message", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index(
        "ix_relay_outbox_state", "relay_outbox", ["state", "next_attempt_at"], unique=False
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_relay_outbox_state", table_name="relay_outbox")
    op.drop_table("relay_outbox")
    with op.batch_alter_table("move_out_certificates") as batch:
        batch.drop_column("moved_in_on")
        batch.drop_column("confirmed_by")
        batch.drop_column("confirmed_on")
