"""Alembic migrations of the hub's database (run by :func:`adapterkit.hub.db.engine.migrate`)."""
