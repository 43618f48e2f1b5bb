"""The migrations, both ways: a new database goes to the newest schema, all the way back, and up again."""
from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from app import create_app
from app.config import normalise_database_url
from app.extensions import db
from app.models import Host


@pytest.fixture
def scratch_database(servers):
    """An empty database beside the suite's own; its URL."""
    server_url = make_url(servers["database"]).set(drivername="postgresql")
    admin = server_url.render_as_string(hide_password=False)
    name = f"gpushare_migrations_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def schema(url: str) -> dict:
    """Tables with their columns and named check constraints, as PostgreSQL reports them."""
    engine = create_engine(normalise_database_url(url))
    try:
        found = inspect(engine)
        return {table: ({c["name"] for c in found.get_columns(table)},
                        {c["name"] for c in found.get_check_constraints(table)})
                for table in found.get_table_names()}
    finally:
        engine.dispose()


def test_every_migration_goes_down_and_up_again(app, scratch_database, tmp_path):
    other = create_app({**{k: app.config[k] for k in ("SECRET_KEY", "REDIS_URL", "TOKENIZERS_DIR")},
                        "TESTING": True, "GPUSHARE_ENV": "test", "GPUSHARE_DATA_DIR": str(tmp_path),
                        "SQLALCHEMY_DATABASE_URI": normalise_database_url(scratch_database)})
    with other.app_context():
        upgrade()
        newest = schema(scratch_database)
        downgrade(revision="base")
        assert set(schema(scratch_database)) <= {"alembic_version"}
        upgrade()
        db.engine.dispose()
    assert schema(scratch_database) == newest


def test_constraint_names_follow_the_models(app):
    """What the database calls its check constraints is what the models call them (one naming convention)."""
    expected = {table.name: {c.name for c in table.constraints if c.__class__.__name__ == "CheckConstraint"}
                for table in db.metadata.sorted_tables}
    with app.app_context():
        found = inspect(db.engine)
        actual = {table: {c["name"] for c in found.get_check_constraints(table)} for table in expected}
    assert actual == expected


def test_each_enum_check_allows_exactly_its_models_tuple(app):
    """An enum is written once, as a tuple on its model (``Host.STATUSES``...); the migrated database's CHECK allows
    exactly those values."""
    def values(condition: str) -> set[str]:
        return set(re.findall(r"'([a-z_]+)'", condition))

    expected = {(table.name, c.name): values(str(c.sqltext)) for table in db.metadata.sorted_tables
                for c in table.constraints if c.__class__.__name__ == "CheckConstraint" and " IN (" in str(c.sqltext)}
    with app.app_context():
        found = inspect(db.engine)
        actual = {(table, c["name"]): values(c["sqltext"]) for table in {t for t, _ in expected}
                  for c in found.get_check_constraints(table) if (table, c["name"]) in expected}
    assert len(expected) >= 6 and actual == expected
    assert set(Host.STATUSES) in [allowed for (table, _), allowed in expected.items() if table == "hosts"]
