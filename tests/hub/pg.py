"""PostgreSQL for the hub tests: ``ADAPTERKIT_TEST_PG`` names a server (``.ci/run`` starts a
throwaway cluster); each test server gets a fresh database on it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def pg_url() -> str:
    """The server URL; skips (with the reason) when unset, and fails when
    ``ADAPTERKIT_REQUIRE_PG`` is set, as in CI."""
    url = os.environ.get("ADAPTERKIT_TEST_PG")
    if not url:
        why = ("PostgreSQL tests need ADAPTERKIT_TEST_PG=postgresql://USER@HOST:PORT/DB "
               "(.ci/run installs PostgreSQL and starts a throwaway cluster)")
        if os.environ.get("ADAPTERKIT_REQUIRE_PG"):
            pytest.fail(f"ADAPTERKIT_REQUIRE_PG is set but PostgreSQL is missing: {why}")
        pytest.skip(why)
    return url


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new, empty database on the server of ``url``, dropped afterwards."""
    import psycopg

    name = "hubtest_" + secrets.token_hex(6)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
