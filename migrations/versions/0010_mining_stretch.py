"""Schema for lattice-aware structure mining (issue 15): the stretch of each mined candidate.

``mining_candidate.stretch``: the relative isotropic lattice stretch at which
the candidate's PDF correlates best with the data (NULL for rankings made
before the lattice-aware scan); the ``mined_candidate`` view shows it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_VIEW = """
    CREATE VIEW mined_candidate AS
    SELECT c.id AS candidate_id, d.name AS dataset, l.name AS library, m.method,
           m.id AS mining_result_id, m.out_of_catalogue, c.rank, k.class_index,
           s.id AS structure_id, s.name AS structure, s.formula, s.spacegroup,
           c.score, c.rwp, c.params, m.created_at{stretch}
    FROM mining_candidate c
    JOIN mining_result m ON m.id = c.mining_result_id
    JOIN dataset d ON d.id = m.dataset_id
    JOIN library l ON l.id = m.library_id
    JOIN library_class k ON k.id = c.class_id
    JOIN library_structure s ON s.id = c.structure_id
"""


def upgrade() -> None:
    # the view reads the table: dropped while the column is added (SQLite rebuilds nothing for an
    # added column, but PostgreSQL views fix their column list when made)
    op.execute("DROP VIEW IF EXISTS mined_candidate")
    with op.batch_alter_table("mining_candidate") as batch:
        batch.add_column(sa.Column("stretch", sa.Float, nullable=True))
    op.execute(_VIEW.format(stretch=", c.stretch"))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS mined_candidate")
    with op.batch_alter_table("mining_candidate") as batch:
        batch.drop_column("stretch")
    op.execute(_VIEW.format(stretch=""))
