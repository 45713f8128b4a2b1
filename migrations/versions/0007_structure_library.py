"""Structure mining: libraries of candidate crystal structures, classifiers, mining results.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True)


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def _parent(name: str, target: str) -> sa.Column:
    return sa.Column(name, sa.Integer, sa.ForeignKey(target, ondelete="CASCADE"), nullable=False, index=True)


def upgrade() -> None:
    op.create_table(
        "library",
        _id(),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("settings", sa.JSON, nullable=False),
        _created_at(),
    )
    op.create_table(
        "library_class",
        _id(),
        _parent("library_id", "library.id"),
        sa.Column("class_index", sa.Integer, nullable=False),
        sa.Column("n_members", sa.Integer, nullable=False),
        _created_at(),
        sa.UniqueConstraint("library_id", "class_index", name="uq_library_class_index"),
    )
    op.create_table(
        "library_structure",
        _id(),
        _parent("library_id", "library.id"),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("source_path", sa.String, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("formula", sa.String, nullable=False),
        sa.Column("spacegroup", sa.String, nullable=True),
        sa.Column("cell", sa.JSON, nullable=False),
        sa.Column("n_atoms", sa.Integer, nullable=False),
        sa.Column("crystal", sa.JSON, nullable=False),
        sa.Column("g", sa.LargeBinary, nullable=False),
        _parent("class_id", "library_class.id"),
        sa.Column("representative", sa.Boolean, nullable=False),
        _created_at(),
        sa.UniqueConstraint("library_id", "content_hash", name="uq_library_structure_content"),
    )
    op.create_table(
        "library_classifier",
        _id(),
        _parent("library_id", "library.id"),
        sa.Column("inputs_hash", sa.String, nullable=False, index=True),
        sa.Column("n_classes", sa.Integer, nullable=False),
        sa.Column("n_per_class", sa.Integer, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("class_ids", sa.LargeBinary, nullable=False),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("mlflow_run_id", sa.String, nullable=True),
        _created_at(),
    )
    op.create_table(
        "mining_result",
        _id(),
        _parent("dataset_id", "dataset.id"),
        _parent("library_id", "library.id"),
        sa.Column(
            "method", sa.String(20), sa.CheckConstraint("method IN ('pcc', 'classifier')", name="ck_mining_method"),
            nullable=False,
        ),
        sa.Column("classifier_id", sa.Integer, sa.ForeignKey("library_classifier.id", ondelete="CASCADE"), nullable=True),
        sa.Column("inputs_hash", sa.String, nullable=False, index=True),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("out_of_catalogue", sa.Boolean, nullable=False),
        sa.Column("confidence", sa.JSON, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        _created_at(),
    )
    op.create_table(
        "mining_candidate",
        _id(),
        _parent("mining_result_id", "mining_result.id"),
        sa.Column("rank", sa.Integer, nullable=False),
        _parent("class_id", "library_class.id"),
        _parent("structure_id", "library_structure.id"),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("params", sa.JSON, nullable=True),
        sa.Column("rwp", sa.Float, nullable=True),
        sa.UniqueConstraint("mining_result_id", "rank", name="uq_mining_candidate_rank"),
    )
    # what people ask: the ranked candidates of every mining run, with names instead of ids
    op.execute(
        """
        CREATE VIEW mined_candidate AS
        SELECT c.id AS candidate_id, d.name AS dataset, l.name AS library, m.method,
               m.id AS mining_result_id, m.out_of_catalogue, c.rank, k.class_index,
               s.id AS structure_id, s.name AS structure, s.formula, s.spacegroup,
               c.score, c.rwp, c.params, m.created_at
        FROM mining_candidate c
        JOIN mining_result m ON m.id = c.mining_result_id
        JOIN dataset d ON d.id = m.dataset_id
        JOIN library l ON l.id = m.library_id
        JOIN library_class k ON k.id = c.class_id
        JOIN library_structure s ON s.id = c.structure_id
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS mined_candidate")
    for table in ("mining_candidate", "mining_result", "library_classifier", "library_structure", "library_class", "library"):
        op.drop_table(table)
