"""Search keys as text.

The folded search keys can be many times longer than the name they fold
(NFKC turns U+FDFA into 18 characters), so a bounded varchar refused names
that every tier below had accepted. PostgreSQL stores text and varchar alike.
A downgrade fails while any key is longer than 100 characters.

Revision ID: 7e381dfd2273
Revises: 65f2132e6284
Create Date: 2026-12-01 23:09:06

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "7e381dfd2273"
down_revision: str | Sequence[str] | None = "65f2132e6284"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("identities", schema=None) as batch_op:
        for column in ("name_key", "kana_key"):
            batch_op.alter_column(
                column,
                existing_type=sa.String(length=100),
                type_=sa.Text(),
                existing_nullable=False,
            )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("identities", schema=None) as batch_op:
        for column in ("name_key", "kana_key"):
            batch_op.alter_column(
                column,
                existing_type=sa.Text(),
                type_=sa.String(length=100),
                existing_nullable=False,
            )
