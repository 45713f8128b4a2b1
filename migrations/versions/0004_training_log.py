"""What a training went through: trained_model.training_log (search trials and loss curve).

Reports draw the search trials and the loss curve from the record itself, so
they need no MLflow server.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("trained_model", sa.Column("training_log", sa.JSON, nullable=True))


def downgrade() -> None:
    # plain ALTER TABLE (SQLite >= 3.35 and PostgreSQL): a batch copy of the table would break the views on it
    op.execute("ALTER TABLE trained_model DROP COLUMN training_log")
