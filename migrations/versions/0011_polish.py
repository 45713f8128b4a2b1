"""Schema for polish runs (issue 13): the direct search from an answer to the best-fitting motif.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _parent(name: str, target: str, nullable: bool = False, index: bool = True) -> sa.Column:
    return sa.Column(name, sa.Integer, sa.ForeignKey(target, ondelete="CASCADE"), nullable=nullable, index=index)


def upgrade() -> None:
    op.create_table(
        "polish_run",
        sa.Column("id", sa.Integer, primary_key=True),
        _parent("starting_model_id", "starting_model.id"),
        _parent("dataset_id", "dataset.id"),
        _parent("fit_config_id", "fit_config.id"),
        _parent("start_motif_id", "motif.id", index=False),
        sa.Column("inputs_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("strategy", sa.String(20), nullable=False),
        sa.Column("budget", sa.Integer, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column(
            "status",
            sa.String(10),
            sa.CheckConstraint("status IN ('running', 'done')", name="ck_polish_run_status"),
            nullable=False,
        ),
        sa.Column("start_rwp", sa.Float, nullable=True),
        _parent("best_motif_id", "motif.id", nullable=True, index=False),
        sa.Column("best_rwp", sa.Float, nullable=True),
        sa.Column("n_evaluated", sa.Integer, nullable=False),
        sa.Column("n_fitted", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("stopped", sa.String(20), nullable=True),
        sa.Column("path", sa.JSON, nullable=True),
        sa.Column("worker", sa.String, nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("polish_run")
