"""Time-resolved series: decompositions (PCA, NMF, correlations), components, weights; series models.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "series_decomposition",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("series", sa.String, nullable=False, index=True),
        sa.Column("inputs_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("r_min", sa.Float, nullable=False),
        sa.Column("r_max", sa.Float, nullable=False),
        sa.Column("n_frames", sa.Integer, nullable=False),
        sa.Column("frame_ids", sa.LargeBinary, nullable=False),
        sa.Column("components_requested", sa.String, nullable=False),
        sa.Column("n_components", sa.Integer, nullable=False),
        sa.Column("explained_variance", sa.LargeBinary, nullable=False),
        sa.Column("correlation", sa.LargeBinary, nullable=False),
        sa.Column("shift", sa.Float, nullable=False),
        sa.Column("nmf_relative_error", sa.Float, nullable=False),
        _created_at(),
    )
    op.create_table(
        "series_component",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "decomposition_id",
            sa.Integer,
            sa.ForeignKey("series_decomposition.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("component", sa.Integer, nullable=False),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.UniqueConstraint("decomposition_id", "component", name="uq_series_component"),
    )
    op.create_table(
        "component_weight",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "series_component_id",
            sa.Integer,
            sa.ForeignKey("series_component.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "frame_dataset_id", sa.Integer, sa.ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column("weight", sa.Float, nullable=False),
        sa.UniqueConstraint("series_component_id", "frame_dataset_id", name="uq_component_weight"),
    )
    op.add_column("trained_model", sa.Column("series", sa.String, nullable=True))
    op.create_index("ix_trained_model_series", "trained_model", ["series"])


def downgrade() -> None:
    op.drop_index("ix_trained_model_series", "trained_model")
    # plain ALTER TABLE (SQLite >= 3.35 and PostgreSQL): a batch copy of the table would break the views on it
    op.execute("ALTER TABLE trained_model DROP COLUMN series")
    op.drop_table("component_weight")
    op.drop_table("series_component")
    op.drop_table("series_decomposition")
