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


def test_plain_sql_with_a_shell_escape_is_refused_but_copy_data_with_backslashes_is_not():
    from ansible_collections.runbook.ops.plugins.module_utils import _pg_archive as archive
    from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

    good = (b"--\n-- PostgreSQL database dump\n--\n\\restrict abc123\nSET x = 1;\n"
            b"COPY public.t (a) FROM stdin;\n\\\\! not a command, an escaped backslash\n\\restrict in data\n\\.\n"
            b"\\unrestrict abc123\n--\n-- PostgreSQL database dump complete\n--\n")
    archive.check_plain([good[:30], good[30:]])
    evil = good.replace(b"SET x = 1;\n", b"SET x = 1;\n  \\! id > /tmp/pwned\n")
    with pytest.raises(OpsError, match=r"meta-command '\\\\! id > /tmp/pwned' on line 6"):
        archive.check_plain([evil])
    restricted = b"".join(archive.restricted([good], "k3y"))
    assert restricted.startswith(b"\\restrict k3y\n") and b"\\restrict abc123" not in restricted
    assert b"\\unrestrict abc123" not in restricted and b"\\restrict in data\n" in restricted


@pytest.mark.parametrize("version, supported", [("psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", True),
                                                ("psql (PostgreSQL) 15.13", False), ("psql (PostgreSQL) 17.6", True),
                                                ("psql (PostgreSQL) 18.1", True), ("psql (PostgreSQL) 12.22", False)])
def test_psql_restrict_support_by_version(version, supported):
    from ansible_collections.runbook.ops.plugins.module_utils import _pg_archive as archive

    assert archive.psql_restricts(version) is supported
