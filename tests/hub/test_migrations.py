"""The alembic migrations create exactly the tables of the models, on SQLite and PostgreSQL,
and run again (or after a downgrade) without harm."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from adapterkit.hub.catalog.fts import SCHEMA_EXTRAS
from adapterkit.hub.db.engine import MIGRATIONS, Database, migrate, sqlite_url
from adapterkit.hub.db.models import Base

from .pg import fresh_database, pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with ExitStack() as stack:
        pg = request.param == "postgresql"
        url = stack.enter_context(fresh_database(pg_url())) if pg else sqlite_url(tmp_path)
        database = Database(url)
        stack.callback(database.dispose)
        yield database


def _modelled(_obj: object, name: str | None, _kind: str, _reflected: bool, _compare_to: object) -> bool:
    return name not in SCHEMA_EXTRAS  # the full-text index lives beside the models' tables


def differences(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": _modelled})
    return list(compare_metadata(context, Base.metadata))


def test_migrations_match_the_models(db: Database) -> None:
    assert migrate(db) == "0004"
    with db.read_engine.connect() as conn:
        assert differences(conn) == []
        assert set(inspect(conn).get_table_names()) >= set(Base.metadata.tables)
    assert migrate(db) == "0004"  # a second run (another process starting) changes nothing


def test_downgrade_and_upgrade_again(db: Database) -> None:
    migrate(db)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.write_engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    with db.read_engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    migrate(db)
    with db.read_engine.connect() as conn:
        assert differences(conn) == []
