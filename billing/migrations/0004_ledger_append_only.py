"""The usage ledger refuses UPDATE and DELETE in the database (billing/ledger_guard.py says why and how flush
still works). SQLite drops a table's triggers when a migration rebuilds it: a later migration that alters
billing_usageevent on SQLite must create them again (tests/test_ledger_append_only.py checks they exist)."""

from django.db import migrations

MESSAGE = "the usage ledger is append-only: record a correction as a new adjustment row"

POSTGRESQL = [f"""
CREATE OR REPLACE FUNCTION billing_usageevent_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% refused: {MESSAGE}', TG_OP USING ERRCODE = 'restrict_violation';
END $$;
""", """
CREATE TRIGGER billing_usageevent_append_only BEFORE UPDATE OR DELETE ON billing_usageevent
FOR EACH ROW EXECUTE FUNCTION billing_usageevent_append_only();
"""]
POSTGRESQL_REVERSE = ["DROP TRIGGER IF EXISTS billing_usageevent_append_only ON billing_usageevent;",
                      "DROP FUNCTION IF EXISTS billing_usageevent_append_only();"]

SQLITE = [f"""
CREATE TRIGGER billing_usageevent_no_update BEFORE UPDATE ON billing_usageevent
BEGIN SELECT RAISE(ABORT, 'UPDATE refused: {MESSAGE}'); END;
""", f"""
CREATE TRIGGER billing_usageevent_no_delete BEFORE DELETE ON billing_usageevent WHEN NOT vajra_ledger_purging()
BEGIN SELECT RAISE(ABORT, 'DELETE refused: {MESSAGE}'); END;
"""]
SQLITE_REVERSE = ["DROP TRIGGER IF EXISTS billing_usageevent_no_update;",
                  "DROP TRIGGER IF EXISTS billing_usageevent_no_delete;"]


def _run(statements):
    def run(apps, schema_editor):
        for sql in statements.get(schema_editor.connection.vendor, ()):
            schema_editor.execute(sql, None)  # None: the % in the SQL is no placeholder

    return run


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0003_plan_quotas"),
    ]

    operations = [
        migrations.RunPython(_run({"postgresql": POSTGRESQL, "sqlite": SQLITE}),
                             _run({"postgresql": POSTGRESQL_REVERSE, "sqlite": SQLITE_REVERSE})),
    ]
