"""Schema for learning durability and speed (issue 12).

- ``trained_model.inputs_hash`` becomes unique: two identical ``train``
  commands store one model (the second waits for the first and reuses it).
  Duplicates stored before are kept, renamed ``HASH:duplicate:ID``.
- ``trained_model.extracted_motif_id``: the motif ``explain`` extracted from
  the model, a column instead of text in ``motif.sampler`` (backfilled from
  it; a mask that had been sampled before was never linked, and stays NULL).
- ``learning_claim``: a lease on one unit of learning work (a training, a
  series frame, an explanation), so that concurrent and distributed
  ``train``/``explain`` processes split it and wait for each other.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_EXTRACTED = "extracted from trained model "


def upgrade() -> None:
    bind = op.get_bind()
    bind.exec_driver_sql(
        "UPDATE trained_model SET inputs_hash = inputs_hash || ':duplicate:' || CAST(id AS VARCHAR(20)) "
        "WHERE id NOT IN (SELECT MIN(id) FROM trained_model GROUP BY inputs_hash)"
    )
    op.drop_index("ix_trained_model_inputs_hash", table_name="trained_model")
    op.create_index("ix_trained_model_inputs_hash", "trained_model", ["inputs_hash"], unique=True)
    # plain ALTER TABLE: a batch copy of the table would break the views on it. No foreign
    # key: alembic cannot add one to SQLite in place, and the motif and the model go together
    # (both cascade from their starting model).
    op.add_column("trained_model", sa.Column("extracted_motif_id", sa.Integer, nullable=True))
    rows = bind.execute(
        sa.text("SELECT id, sampler FROM motif WHERE sampler LIKE :pattern"), {"pattern": _EXTRACTED + "%"}
    ).fetchall()
    for motif_id, sampler in rows:
        model_id = sampler[len(_EXTRACTED):].strip()
        if model_id.isdigit():
            bind.execute(
                sa.text("UPDATE trained_model SET extracted_motif_id = :motif WHERE id = :model"),
                {"motif": motif_id, "model": int(model_id)},
            )
    op.create_table(
        "learning_claim",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("worker", sa.String, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("learning_claim")
    op.drop_column("trained_model", "extracted_motif_id")
    op.drop_index("ix_trained_model_inputs_hash", table_name="trained_model")
    op.create_index("ix_trained_model_inputs_hash", "trained_model", ["inputs_hash"])
