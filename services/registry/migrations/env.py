"""Alembic's entry point: runs the revisions on the connection `upgrade_schema` opened."""

from alembic import context

context.configure(
    connection=context.config.attributes["connection"],
    # The connection's transaction (upgrade_schema's) holds DDL on every engine we use, SQLite
    # included; without this, Alembic assumes (and logs) that SQLite's does not.
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
