"""Alembic environment: runs on the connection that :func:`adapterkit.hub.db.engine.migrate`
passes in ``config.attributes``, on SQLite and PostgreSQL alike."""

from alembic import context

from adapterkit.hub.db.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
