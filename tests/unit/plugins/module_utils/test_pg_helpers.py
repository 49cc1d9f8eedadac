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


def test_the_clean_phase_is_read_and_inherited_drops_are_left_out():
    from ansible_collections.runbook.ops.plugins.module_utils import _pg_archive as archive

    script = ("--\n-- PostgreSQL database dump\n--\n\\restrict abc\nSET statement_timeout = 0;\n"
              "SELECT pg_catalog.set_config('search_path', '', false);\n\n"
              "ALTER TABLE IF EXISTS ONLY public.events_2025 DROP CONSTRAINT IF EXISTS events_2025_pkey;\n"
              "DROP INDEX IF EXISTS \"odd schema\".\"ix \"\"1\"\"\";\n"
              "ALTER TABLE IF EXISTS ONLY public.events DROP CONSTRAINT IF EXISTS events_pkey;\n"
              "SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata WHERE oid = '16400';\n"
              "DROP TABLE IF EXISTS public.events;\nSET default_tablespace = '';\n\n--\n-- Name: events\n"
              "DROP TABLE IF EXISTS public.not_a_drop_of_the_clean_phase;\n").encode()
    drops = archive.drop_statements([script[:50], script[50:51], script[51:]])
    assert len(drops) == 5 and drops[0].startswith("ALTER TABLE IF EXISTS ONLY public.events_2025")
    kept, skipped = archive.without_inherited(drops, {("public.events_2025", "events_2025_pkey")},
                                              {'"odd schema"."ix ""1"""'})
    assert len(skipped) == 2 and len(kept) == 3 and kept[-1] == "DROP TABLE IF EXISTS public.events;"
