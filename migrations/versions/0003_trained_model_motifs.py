"""The motifs a trained model learnt from: trained_model.motif_ids.

Explaining a model needs exactly its training motifs, in the order they were
split; the list is stored with the model (npy bytes of motif ids).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("trained_model", sa.Column("motif_ids", sa.LargeBinary, nullable=True))
    op.add_column("trained_model", sa.Column("n_iter", sa.Integer, nullable=True))
    op.add_column("trained_model", sa.Column("cv", sa.Integer, nullable=True))


def downgrade() -> None:
    # plain ALTER TABLE (SQLite >= 3.35 and PostgreSQL): a batch copy of the table would break the views on it
    op.execute("ALTER TABLE trained_model DROP COLUMN cv")
    op.execute("ALTER TABLE trained_model DROP COLUMN n_iter")
    op.execute("ALTER TABLE trained_model DROP COLUMN motif_ids")
