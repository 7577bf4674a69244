"""The hub's database: SQLAlchemy 2 models, the engine, and alembic migrations."""
