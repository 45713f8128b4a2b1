"""Convergence of the contributions: from models trained on half and three quarters of the fits.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("atom_contribution", sa.Column("contribution_half", sa.Float, nullable=True))
    op.add_column("atom_contribution", sa.Column("contribution_three_quarters", sa.Float, nullable=True))
    op.add_column("trained_model", sa.Column("convergence", sa.JSON, nullable=True))


def downgrade() -> None:
    # plain ALTER TABLE (SQLite >= 3.35 and PostgreSQL): a batch copy of the table would break the views on it
    op.execute("ALTER TABLE trained_model DROP COLUMN convergence")
    op.execute("ALTER TABLE atom_contribution DROP COLUMN contribution_three_quarters")
    op.execute("ALTER TABLE atom_contribution DROP COLUMN contribution_half")
