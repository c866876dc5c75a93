"""Operator accounts, login challenges, sessions, and the roles granted to operators.

Revision ID: b7e1c5d2f901
Revises: a2ca66990b7d
Create Date: 2026-12-02 13:50:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "b7e1c5d2f901"
down_revision: str | Sequence[str] | None = "a2ca66990b7d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "operators",
        sa.Column("org", sa.String(length=8), nullable=False),
        sa.Column("operator_id", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("previous_hash", sa.Text(), server_default="", nullable=False),
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("must_change", sa.Boolean(), nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("org", "operator_id", name="pk_operators"),
    )
    op.create_table(
        "operator_challenges",
        sa.Column("nonce_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("terminal", sa.String(length=120), nullable=False),
        sa.Column("operator", sa.String(length=120), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce_hash"),
    )
    op.create_index(
        "ix_operator_challenges_expires", "operator_challenges", ["expires_at"], unique=False
    )
    op.create_table(
        "operator_sessions",
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("org", sa.String(length=8), nullable=False),
        sa.Column("operator_id", sa.String(length=64), nullable=False),
        sa.Column("terminal", sa.String(length=120), nullable=False),
        sa.Column("card_serial", sa.String(length=48), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(
        "ix_operator_sessions_operator",
        "operator_sessions",
        ["org", "operator_id"],
        unique=False,
    )
    op.create_table(
        "operator_roles",
        sa.Column("org", sa.String(length=8), nullable=False),
        sa.Column("operator_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.SmallInteger(), nullable=False),
        sa.Column("granted_by", sa.String(length=120), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("org", "operator_id", "role", name="pk_operator_roles"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("operator_roles")
    op.drop_index("ix_operator_sessions_operator", table_name="operator_sessions")
    op.drop_table("operator_sessions")
    op.drop_index("ix_operator_challenges_expires", table_name="operator_challenges")
    op.drop_table("operator_challenges")
    op.drop_table("operators")
