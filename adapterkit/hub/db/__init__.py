"""The hub's database: SQLAlchemy 2 models, the engine, and alembic migrations."""

from . import derived as _derived  # noqa: F401  (registers the artifacts table with the models' metadata)
