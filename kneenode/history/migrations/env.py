"""Alembic environment: migrate the connection the node hands over (never a URL from a file)."""

from __future__ import annotations

from alembic import context

from kneenode.history.migrate import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
