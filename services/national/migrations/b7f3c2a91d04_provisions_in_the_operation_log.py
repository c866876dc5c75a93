"""Provisions in the operation log: each provision row names its log entry.

Revision ID: b7f3c2a91d04
Revises: 5785dff7696c
Create Date: 2026-12-02 14:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "b7f3c2a91d04"
down_revision: str | Sequence[str] | None = "5785dff7696c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # Null for a provision recorded before provisions were logged.
    with op.batch_alter_table("provisions") as batch:
        batch.add_column(sa.Column("log_index", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("provisions") as batch:
        batch.drop_column("log_index")
