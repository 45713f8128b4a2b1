"""Atom environments (k-NN distance vectors and classes), the k-NN atom-type check, motif signatures.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _parent(name: str, target: str) -> sa.Column:
    return sa.Column(name, sa.Integer, sa.ForeignKey(target, ondelete="CASCADE"), nullable=False, index=True)


def upgrade() -> None:
    op.create_table(
        "atom_environment",
        sa.Column("id", sa.Integer, primary_key=True),
        _parent("starting_model_id", "starting_model.id"),
        sa.Column("atom_number", sa.Integer, nullable=False),
        sa.Column("permutable_index", sa.Integer, nullable=True),
        sa.Column("element", sa.String, nullable=False),
        sa.Column("k", sa.Integer, nullable=False),
        sa.Column("tolerance", sa.Float, nullable=False),
        sa.Column("distances", sa.LargeBinary, nullable=False),
        sa.Column("neighbours", sa.JSON, nullable=False),
        sa.Column("environment_class", sa.Integer, nullable=False),
        sa.UniqueConstraint("starting_model_id", "atom_number", name="uq_atom_environment"),
    )
    op.create_table(
        "atom_type_check",
        sa.Column("id", sa.Integer, primary_key=True),
        _parent("starting_model_id", "starting_model.id"),
        sa.Column("library_id", sa.Integer, sa.ForeignKey("library.id", ondelete="CASCADE"), nullable=True),
        sa.Column("source", sa.String, nullable=False),
        sa.Column("k", sa.Integer, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("inputs_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("classes", sa.JSON, nullable=False),
        sa.Column("predicted", sa.JSON, nullable=False),
        sa.Column("probability", sa.LargeBinary, nullable=False),
        sa.Column("label_probability", sa.LargeBinary, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("mlflow_run_id", sa.String, nullable=True),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("motif", sa.Column("signature", sa.String(32), nullable=True))
    op.create_index("ix_motif_model_signature", "motif", ["starting_model_id", "signature"])
    # no foreign key: SQLite adds one only by copying the table, which would break the views on it; the
    # motif named belongs to the same starting model, whose removal takes both
    op.add_column("fit_result", sa.Column("fitted_motif_id", sa.Integer, nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE fit_result DROP COLUMN fitted_motif_id")
    op.drop_index("ix_motif_model_signature", "motif")
    # plain ALTER TABLE (SQLite >= 3.35 and PostgreSQL): a batch copy of the table would break the views on it
    op.execute("ALTER TABLE motif DROP COLUMN signature")
    op.drop_table("atom_type_check")
    op.drop_table("atom_environment")
