"""Alembic environment for motex-db's shipped migrations.

The library passes an open connection in ``config.attributes["connection"]``
(see ``motex_db.db.upgrade``); there is no alembic.ini and no offline mode.
"""

from alembic import context

from motex_db.models import SQLModel

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("motex-db migrations run through motex_db.db.upgrade(), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
