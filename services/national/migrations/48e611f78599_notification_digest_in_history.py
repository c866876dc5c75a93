"""Notification digest in history.

Each applied notification keeps the SHA-256 digest of its content, so that a
redelivery under the same (origin, sequence) is compared with what was applied
rather than taken as a duplicate by its number alone. Rows applied before this
revision have no digest; their stored payload answers instead.

Revision ID: 48e611f78599
Revises: 64d7cafe09cc
Create Date: 2026-12-02 00:42:20

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "48e611f78599"
down_revision: str | Sequence[str] | None = "64d7cafe09cc"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("identity_history", schema=None) as batch_op:
        batch_op.add_column(sa.Column("digest", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("identity_history", schema=None) as batch_op:
        batch_op.drop_column("digest")
