"""Alembic: one head, numbered revisions, upgrade/downgrade/upgrade on MariaDB and SQLite, models in sync."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from tests.conftest import MARIADB_ADMIN_URL, MARIADB_HOST
from worker.migrate import MIGRATIONS_DIR, downgrade, heads, upgrade
from worker.models import Base

TABLES = {"messages", "recipients", "attachments", "tracking_events", "suppressions", "integration_modules"}


def test_single_head_and_numbered_files() -> None:
    assert len(heads()) == 1
    names = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("*.py"))
    assert names and all(re.fullmatch(r"\d{4}_[a-z0-9_]+\.py", n) for n in names)


@pytest.fixture
def scratch_mariadb() -> Iterator[str]:
    name = "mwtest_migrations"
    admin = create_engine(MARIADB_ADMIN_URL)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    yield f"mysql+pymysql://root@{MARIADB_HOST}:3306/{name}?charset=utf8mb4"
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(params=["mariadb", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    if request.param == "mariadb":
        return str(request.getfixturevalue("scratch_mariadb"))
    return f"sqlite:///{tmp_path}/m.db"


def test_upgrade_downgrade_upgrade(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    assert TABLES <= set(inspect(engine).get_table_names())
    downgrade(url, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    upgrade(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    if engine.dialect.name in {"mysql", "mariadb"}:
        with engine.connect() as conn:
            ddl = conn.execute(text("SHOW CREATE TABLE messages")).one()[1]
        assert "utf8mb4" in ddl and "datetime(6)" in ddl and "longtext" in ddl
    engine.dispose()


def test_db_upgrade_cli(tmp_path: object) -> None:
    from click.testing import CliRunner

    from worker.cli import main

    url = f"sqlite:///{tmp_path}/cli.db"
    result = CliRunner().invoke(main, ["db", "upgrade"], env={"DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert TABLES <= set(inspect(create_engine(url)).get_table_names())
