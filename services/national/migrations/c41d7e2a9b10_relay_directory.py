"""The relay directory this node signs.

Revision ID: c41d7e2a9b10
Revises: b7f3c2a91d04
Create Date: 2027-01-10 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c41d7e2a9b10"
down_revision: str | Sequence[str] | None = "b7f3c2a91d04"
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


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("relay_directory")
