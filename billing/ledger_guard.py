"""The usage ledger is append-only in the database too (migration billing 0004): triggers refuse every UPDATE and
DELETE of ``billing_usageevent``, whoever sends it (the ORM refuses first: billing/models.py).

PostgreSQL: a row trigger raises; TRUNCATE fires no row trigger, so ``flush`` (tests' teardown) still empties the
table. SQLite: ``flush`` deletes row by row, so the DELETE trigger asks ``vajra_ledger_purging()``, a function this
module registers on every Django connection, which is true only inside ``ledger_purge()`` (our ``flush`` command
wraps Django's in it). A connection without the function (the sqlite3 shell) cannot delete at all."""

import threading
from contextlib import contextmanager

_purging = 0
_lock = threading.Lock()


@contextmanager
def ledger_purge():
    """Lets SQLite's DELETE trigger pass while the whole database is being flushed."""
    global _purging
    with _lock:
        _purging += 1
    try:
        yield
    finally:
        with _lock:
            _purging -= 1


def _is_purging():
    return 1 if _purging else 0


def register_sqlite_function(sender, connection, **kwargs):
    if connection.vendor == "sqlite":
        connection.connection.create_function("vajra_ledger_purging", 0, _is_purging)
