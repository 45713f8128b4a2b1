"""The record: starting models, datasets, motifs, fits, trained models, contributions.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True)


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def _parent(name: str, target: str) -> sa.Column:
    return sa.Column(name, sa.Integer, sa.ForeignKey(target, ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "starting_model",
        _id(),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("source_file", sa.String, nullable=False),
        sa.Column("content_hash", sa.String, nullable=False, index=True),
        sa.Column("identity_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("n_atoms", sa.Integer, nullable=False),
        sa.Column("elements", sa.JSON, nullable=False),
        sa.Column("positions", sa.LargeBinary, nullable=False),
        sa.Column("permutable_elements", sa.JSON, nullable=False),
        sa.Column("n_permutable", sa.Integer, nullable=False),
        sa.Column("bond_cutoff", sa.Float, nullable=False),
        sa.Column("radius", sa.Float, nullable=True),
        _created_at(),
    )
    op.create_table(
        "dataset",
        _id(),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("source_file", sa.String, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("n_points", sa.Integer, nullable=False),
        sa.Column("r_min", sa.Float, nullable=False),
        sa.Column("r_max", sa.Float, nullable=False),
        sa.Column("r", sa.LargeBinary, nullable=False),
        sa.Column("g", sa.LargeBinary, nullable=False),
        sa.Column("dg", sa.LargeBinary, nullable=True),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("series", sa.String, nullable=True, index=True),
        sa.Column("time", sa.Float, nullable=True),
        _created_at(),
    )
    op.create_table(
        "motif",
        _id(),
        _parent("starting_model_id", "starting_model.id"),
        sa.Column("mask", sa.Text, nullable=False),
        sa.Column("n_kept", sa.Integer, nullable=False),
        sa.Column("n_atoms", sa.Integer, nullable=False),
        sa.Column("sampler", sa.String, nullable=False),
        _created_at(),
        sa.UniqueConstraint("starting_model_id", "mask", name="uq_motif_mask"),
    )
    op.create_index("ix_motif_starting_model_id", "motif", ["starting_model_id"])
    op.create_index("ix_motif_model_size", "motif", ["starting_model_id", "n_kept"])
    op.create_table(
        "fit_config",
        _id(),
        sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("recipe", sa.String, nullable=False),
        sa.Column("calculator", sa.String, nullable=False),
        sa.Column("rmin", sa.Float, nullable=False),
        sa.Column("rmax", sa.Float, nullable=False),
        sa.Column("qmin", sa.Float, nullable=False),
        sa.Column("qmax", sa.Float, nullable=False),
        sa.Column("qdamp", sa.Float, nullable=False),
        sa.Column("qbroad", sa.Float, nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("engine_version", sa.String, nullable=False),
        _created_at(),
    )
    op.create_table(
        "fit_result",
        _id(),
        _parent("motif_id", "motif.id"),
        _parent("dataset_id", "dataset.id"),
        _parent("fit_config_id", "fit_config.id"),
        sa.Column(
            "status",
            sa.String(10),
            sa.CheckConstraint("status IN ('ok', 'failed')", name="ck_fit_result_status"),
            nullable=False,
        ),
        sa.Column("rwp", sa.Float, nullable=True),
        sa.Column("params", sa.JSON, nullable=True),
        sa.Column("error", sa.String, nullable=True),
        sa.Column("seconds", sa.Float, nullable=False),
        _created_at(),
        sa.UniqueConstraint("motif_id", "dataset_id", "fit_config_id", name="uq_fit_result"),
    )
    for column in ("motif_id", "dataset_id", "fit_config_id"):
        op.create_index(f"ix_fit_result_{column}", "fit_result", [column])
    op.create_index("ix_fit_result_rwp", "fit_result", ["dataset_id", "fit_config_id", "rwp"])
    op.create_table(
        "trained_model",
        _id(),
        _parent("starting_model_id", "starting_model.id"),
        _parent("dataset_id", "dataset.id"),
        _parent("fit_config_id", "fit_config.id"),
        sa.Column("inputs_hash", sa.String, nullable=False, index=True),
        sa.Column("n_motifs", sa.Integer, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("hyperparameters", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("overall_confidence", sa.Float, nullable=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("mlflow_run_id", sa.String, nullable=True),
        _created_at(),
    )
    for column in ("starting_model_id", "dataset_id", "fit_config_id"):
        op.create_index(f"ix_trained_model_{column}", "trained_model", [column])
    op.create_table(
        "atom_contribution",
        _id(),
        _parent("trained_model_id", "trained_model.id"),
        sa.Column("atom_index", sa.Integer, nullable=False),
        sa.Column("element", sa.String, nullable=False),
        sa.Column("contribution", sa.Float, nullable=False),
        sa.Column("uncertainty", sa.Float, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.UniqueConstraint("trained_model_id", "atom_index", name="uq_atom_contribution"),
    )
    op.create_index(
        "ix_atom_contribution_trained_model_id", "atom_contribution", ["trained_model_id"]
    )
    # The questions people ask most, as views (documented in the README).
    op.execute(
        """
        CREATE VIEW motif_fit AS
        SELECT f.id AS fit_result_id, s.name AS structure, d.name AS dataset,
               f.fit_config_id, m.id AS motif_id, m.mask, m.n_kept, m.n_atoms,
               f.status, f.rwp, f.params, f.error
        FROM fit_result f
        JOIN motif m ON m.id = f.motif_id
        JOIN starting_model s ON s.id = m.starting_model_id
        JOIN dataset d ON d.id = f.dataset_id
        """
    )
    op.execute(
        """
        CREATE VIEW contribution AS
        SELECT s.name AS structure, d.name AS dataset, d.series, d.time,
               t.id AS trained_model_id, t.fit_config_id, t.created_at AS trained_at,
               a.atom_index, a.element, a.contribution, a.uncertainty, a.confidence
        FROM atom_contribution a
        JOIN trained_model t ON t.id = a.trained_model_id
        JOIN starting_model s ON s.id = t.starting_model_id
        JOIN dataset d ON d.id = t.dataset_id
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS contribution")
    op.execute("DROP VIEW IF EXISTS motif_fit")
    for table in (
        "atom_contribution",
        "trained_model",
        "fit_result",
        "fit_config",
        "motif",
        "dataset",
        "starting_model",
    ):
        op.drop_table(table)
