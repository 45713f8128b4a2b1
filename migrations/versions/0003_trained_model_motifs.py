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
    with op.batch_alter_table("trained_model") as batch:
        batch.add_column(sa.Column("motif_ids", sa.LargeBinary, nullable=True))
        batch.add_column(sa.Column("n_iter", sa.Integer, nullable=True))
        batch.add_column(sa.Column("cv", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trained_model") as batch:
        batch.drop_column("cv")
        batch.drop_column("n_iter")
        batch.drop_column("motif_ids")
