"""The usage ledger is append-only in the database, not only in the ORM: raw UPDATE and DELETE fail (triggers from
migration billing 0004), while flush (TransactionTestCase's teardown) still empties the database."""

import sqlite3

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from billing.models import UsageEvent
from tests.billing_helpers import usage

TABLE = UsageEvent._meta.db_table


def raw(sql, params=()):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.django_db
@pytest.mark.parametrize("sql", [
    f"UPDATE {TABLE} SET cost = 0 WHERE id = %s",
    f"UPDATE {TABLE} SET description = 'edited'",
    f"DELETE FROM {TABLE} WHERE id = %s",
    f"DELETE FROM {TABLE}",
])
def test_raw_update_and_delete_of_ledger_rows_fail(acme, sql):
    row = usage(acme, "1.2345")
    with pytest.raises(DatabaseError, match="append-only"):
        raw(sql, [row.pk] if "%s" in sql else [])
    again = UsageEvent.objects.get(pk=row.pk)
    assert (again.cost, again.description) == (row.cost, row.description)


@pytest.mark.django_db
def test_inserting_still_works_and_the_triggers_exist(acme):
    usage(acme, "1")
    usage(acme, "2")
    assert UsageEvent.objects.count() == 2
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal", [TABLE])
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s", [TABLE])
        assert cursor.fetchall(), "the append-only triggers are gone (a table rebuild on SQLite drops them)"


@pytest.mark.django_db(transaction=True)
def test_flush_still_empties_the_database(acme):
    usage(acme, "1")
    call_command("flush", verbosity=0, interactive=False)
    assert UsageEvent.objects.count() == 0


def test_sqlite_triggers_refuse_without_the_flush_and_pass_within_it(tmp_path):
    """The SQLite triggers as migration 0004 writes them, on a bare sqlite3 database (the suite runs on
    PostgreSQL): UPDATE and DELETE fail, DELETE passes inside ledger_purge(), and a connection without the
    function (the sqlite3 shell) cannot delete."""
    from importlib import import_module

    from billing.ledger_guard import _is_purging, ledger_purge

    migration = import_module("billing.migrations.0004_ledger_append_only")
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    db.create_function("vajra_ledger_purging", 0, _is_purging)
    db.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, cost TEXT)")
    for sql in migration.SQLITE:
        db.execute(sql)
    db.execute(f"INSERT INTO {TABLE} (cost) VALUES ('1'), ('2')")
    for sql in (f"UPDATE {TABLE} SET cost = '0'", f"DELETE FROM {TABLE} WHERE id = 1"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(sql)
    with ledger_purge():
        db.execute(f"DELETE FROM {TABLE} WHERE id = 1")
    assert db.execute(f"SELECT id FROM {TABLE}").fetchall() == [(2,)]
    db.close()
    shell = sqlite3.connect(tmp_path / "ledger.sqlite3")
    with pytest.raises(sqlite3.OperationalError, match="vajra_ledger_purging"):
        shell.execute(f"DELETE FROM {TABLE}")
    shell.close()
