"""Schema for ML-MotEx interop and series times (issue 14).

``fit_result.n_averaged``: how many scores of one motif an import averaged into
the result (ML-MotEx's sampler does not deduplicate, so its files repeat
masks); 1 for every fit of our own. Series times need no schema: the series'
frames are checked in ``data add``'s transaction.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("fit_result", sa.Column("n_averaged", sa.Integer, nullable=False, server_default="1"))


def downgrade() -> None:
    # plain ALTER TABLE (SQLite >= 3.35 and PostgreSQL): a batch copy of the table would break the views on it
    op.execute("ALTER TABLE fit_result DROP COLUMN n_averaged")
