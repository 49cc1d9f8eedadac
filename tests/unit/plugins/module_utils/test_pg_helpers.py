"""PostgreSQL naming by bytes, conninfo quoting and option validation (pure logic, no server)."""

from __future__ import annotations

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _pg_ddl as ddl
from ansible_collections.runbook.ops.plugins.module_utils import _postgres as pg
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError


def test_derived_names_are_cut_by_bytes_and_never_half_a_character():
    db = "é" * 31  # 62 bytes
    name = ddl.derived_name(db, "pre_restore", "20261124_101010")
    assert len(name.encode("utf-8")) <= 63 and name.endswith("_pre_restore_20261124_101010")
    name.encode("utf-8").decode("utf-8")  # whole characters only


def test_derived_names_of_one_long_database_differ_and_avoid_taken_names():
    db = "Zürich_東京_" * 5
    stamp = "20261124_101010"
    scratch = ddl.derived_name(db, "restore", stamp)
    previous = ddl.derived_name(db, "pre_restore", stamp)
    assert scratch != previous
    again = ddl.derived_name(db, "restore", stamp, taken={scratch})
    assert again != scratch and again.endswith("_2") and len(again.encode("utf-8")) <= 63


def test_conninfo_quotes_names_that_look_like_connection_strings():
    assert pg.conninfo("dbname=other host=evil").startswith("dbname='dbname=other host=evil'")
    assert pg.conninfo("it's\\x").startswith("dbname='it\\'s\\\\x'")
    assert pg.conninfo("postgresql://h/other").startswith("dbname='postgresql://h/other'")


@pytest.mark.parametrize("name, words", [("", "empty"), ("a" * 64, "64 bytes"), ("é" * 32, "64 bytes"), ("a\x00b", "NUL")])
def test_database_names_beyond_postgresql_limits_are_refused(name, words):
    with pytest.raises(OpsError, match=words):
        pg.validate_db_name(name)


def test_clean_script_tables_are_read_with_their_quoting():
    from ansible_collections.runbook.ops.plugins.module_utils import _pg_archive as archive

    script = b'DROP TABLE IF EXISTS public.events;\nDROP TABLE IF EXISTS "odd schema"."t ""x""";\nDROP INDEX IF EXISTS a;\n'
    assert archive.clean_tables(script) == ["public.events", '"odd schema"."t ""x"""']
