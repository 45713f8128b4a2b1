"""Leases for distributed fitting: fit_claim.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fit_claim",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("motif_id", sa.Integer, sa.ForeignKey("motif.id", ondelete="CASCADE"), nullable=False),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False),
        sa.Column("fit_config_id", sa.Integer, sa.ForeignKey("fit_config.id", ondelete="CASCADE"), nullable=False),
        sa.Column("worker", sa.String, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("motif_id", "dataset_id", "fit_config_id", name="uq_fit_claim"),
    )
    op.create_index("ix_fit_claim_work", "fit_claim", ["dataset_id", "fit_config_id"])


def downgrade() -> None:
    op.drop_table("fit_claim")
