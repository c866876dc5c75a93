"""What each record's state follows.

Per origin, the highest sequence the stored state of a record is known to
come after (jukinet.delivery.rules), as compact JSON. Records stored before
know nothing ("") and are ordered by effective date until their next change.

Revision ID: 4c13cd33f73d
Revises: 84b867adfade
Create Date: 2026-12-02 01:03:02.397315

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "4c13cd33f73d"
down_revision: str | Sequence[str] | None = "84b867adfade"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.add_column(sa.Column("follows", sa.Text(), server_default="", nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_column("follows")
