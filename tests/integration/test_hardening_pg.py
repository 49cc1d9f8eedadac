"""Issue 8, PostgreSQL side: what a hostile user broke, each class with a regression test against a real server.

Numbers refer to the issue's list: A1 names read as connection strings, A2 names near 63 bytes and a failed
swap, A7 damaged manifests, A8 partitioned tables in place, A14 SIGTERM/SIGKILL half way, A16 check mode,
A17 readable key files, A19 a prepared transaction blocking the swap.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psycopg2

from pg_helpers import (BACKUP, RESTORE, backup_task, databases_like, exact_databases, make_database, quoted,
                        restore_task, sql, sql_args)
from proc_helpers import parent_of, wait_for_process


def create(pg, names, name, seed="CREATE TABLE own (v text); INSERT INTO own VALUES ('mine')"):
    sql(pg, "postgres", "CREATE DATABASE %s" % quoted(name))
    names.append(name)
    if seed:
        sql(pg, name, seed)
    return name


def table_rows(pg, db, table):
    return sql(pg, db, "SELECT count(*) FROM %s" % table, fetch=True)[0][0]


def test_a1_names_that_look_like_connection_strings_dump_and_restore_their_own_database(ansible, pg, tmp_path, names):
    victim = make_database(pg, "victim")
    names.append(victim)
    victim_rows = table_rows(pg, victim, "sales.customers")
    store = {"dir": str(tmp_path / "store")}
    for tricky in ("dbname=%s" % victim, "host=127.0.0.1 dbname=%s" % victim, "it's a \\ test=1 Zoë"):
        create(pg, names, tricky)
        run = ansible.play(backup_task(pg, tricky, store, skip_if_newer_than=None))
        assert run.rc == 0, run
        made = run.task(BACKUP)["result"]["backup"]
        manifest = json.loads(Path(made["manifest"]).read_text())
        assert manifest["database"] == tricky and made["toc_entries"] < 10  # its own one table, not the victim's schema
        # in place into the tricky name: the victim is not overwritten
        sql(pg, tricky, "INSERT INTO own VALUES ('after the backup')")
        run = ansible.play(restore_task(pg, tricky, made["path"], mode="in_place", force=True, safety_backup=False))
        assert run.rc == 0, run
        assert sql(pg, tricky, "SELECT v FROM own", fetch=True) == [("mine",)]
        # swap, and a test restore, of the tricky name
        run = ansible.play(restore_task(pg, tricky, made["path"], force=True, safety_backup=False, keep_previous=False))
        assert run.rc == 0, run
        assert sql(pg, tricky, "SELECT v FROM own", fetch=True) == [("mine",)]
        run = ansible.play(restore_task(pg, tricky, made["path"], validate_only=True, validate_level="restore"))
        assert run.rc == 0, run
        assert table_rows(pg, victim, "sales.customers") == victim_rows
        assert sql(pg, victim, "SELECT to_regclass('public.own')", fetch=True) == [(None,)]


def test_a2_multibyte_names_near_the_63_byte_limit_swap_and_report_the_real_previous(ansible, pg, tmp_path, names):
    name = ""
    for char in "Zürich_東京_" * 8:
        if len((name + char).encode()) > 61:
            break
        name += char
    assert 58 <= len(name.encode()) <= 61
    create(pg, names, name)
    store = {"dir": str(tmp_path / "store")}
    run = ansible.play(backup_task(pg, name, store))
    assert run.rc == 0, run
    path = run.task(BACKUP)["result"]["backup"]["path"]
    for _round in range(2):  # twice within a second: derived names must still be unique
        run = ansible.play(restore_task(pg, name, path, store=store, force=True, safety_backup=False))
        assert run.rc == 0, run
        previous = run.task(RESTORE)["result"]["restore"]["previous"]
        assert len(previous.encode()) <= 63 and exact_databases(pg, [previous]) == [previous]
        assert sql(pg, previous, "SELECT v FROM own", fetch=True) == [("mine",)]
        names.append(previous)
    assert sql(pg, name, "SELECT v FROM own", fetch=True) == [("mine",)]
    assert sql_args(pg, "postgres", "SELECT datallowconn FROM pg_database WHERE datname = %s", (name,)) == [(True,)]


def test_a19_a2_a_prepared_transaction_blocking_the_swap_is_named_and_the_target_given_back(ansible, pg, tmp_path, names):
    name = "Ünïcödé_blocked_" + "ø" * 10
    create(pg, names, name)
    store = {"dir": str(tmp_path / "store")}
    run = ansible.play(backup_task(pg, name, store))
    assert run.rc == 0, run
    path = run.task(BACKUP)["result"]["backup"]["path"]
    conn = psycopg2.connect(**pg.conninfo(name))
    with conn.cursor() as cur:
        cur.execute("INSERT INTO own VALUES ('prepared')")
    conn.commit()
    conn.tpc_begin("runbook-test-gid")
    with conn.cursor() as cur:
        cur.execute("INSERT INTO own VALUES ('in doubt')")
    conn.tpc_prepare()
    conn.close()
    try:
        run = ansible.play(restore_task(pg, name, path, store=store, force=True, safety_backup=False, terminate_timeout=2))
        assert run.rc != 0
        result = run.task(RESTORE)["result"]
        assert "prepared transaction" in result["msg"] and "runbook-test-gid" in result["msg"]
        assert "ROLLBACK PREPARED" in result["msg"] and "sessions kept reconnecting" not in result["msg"]
        assert "untouched" in result["msg"]
        # the target is given back: it accepts connections, has its data, and no scratch database is left
        assert sql_args(pg, "postgres", "SELECT datallowconn FROM pg_database WHERE datname = %s", (name,)) == [(True,)]
        assert sorted(r[0] for r in sql(pg, name, "SELECT v FROM own", fetch=True)) == ["mine", "prepared"]
        assert databases_like(pg, name[:20]) == [name]
    finally:
        for (gid,) in sql(pg, "postgres", "SELECT gid FROM pg_prepared_xacts", fetch=True):
            sql(pg, name, "ROLLBACK PREPARED '%s'" % gid)


PARTITIONED = """
CREATE TABLE events (id bigint, at date, payload text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')
  PARTITION BY RANGE (id);
CREATE TABLE events_2026_low PARTITION OF events_2026 FOR VALUES FROM (0) TO (1000);
CREATE TABLE events_2026_high PARTITION OF events_2026 FOR VALUES FROM (1000) TO (MAXVALUE);
CREATE INDEX events_payload ON events (payload);
CREATE TABLE kinds (id int PRIMARY KEY, name text UNIQUE);
INSERT INTO kinds VALUES (1, 'click'), (2, 'view');
ALTER TABLE events ADD COLUMN kind int REFERENCES kinds;
INSERT INTO events SELECT i, DATE '2025-06-01' + (i % 400), md5(i::text), 1 + i % 2 FROM generate_series(1, 2000) i;
CREATE VIEW recent AS SELECT * FROM events WHERE at > DATE '2026-01-01';
"""


def test_a8_in_place_restore_of_partitioned_tables_with_keys_and_attached_partitions(ansible, pg, tmp_path, names):
    name = create(pg, names, "parts_%d" % os.getpid(), PARTITIONED)
    store = {"dir": str(tmp_path / "store")}
    run = ansible.play(backup_task(pg, name, store))
    assert run.rc == 0, run
    path = run.task(BACKUP)["result"]["backup"]["path"]
    inherits = sql(pg, name, "SELECT count(*) FROM pg_inherits", fetch=True)
    sql(pg, name, "INSERT INTO events VALUES (5000, DATE '2026-03-01', 'late', 2); DELETE FROM events WHERE id < 10")
    run = ansible.play(restore_task(pg, name, path, store=store, mode="in_place", force=True))
    assert run.rc == 0, run
    restore = run.task(RESTORE)["result"]["restore"]
    assert restore["inherited_drops_skipped"] == 4 and restore["safety_backup"]["id"]
    assert table_rows(pg, name, "events") == 2000 and table_rows(pg, name, "recent") > 0
    assert sql(pg, name, "SELECT count(*) FROM pg_inherits", fetch=True) == inherits
    assert sql(pg, name, "SELECT count(*) FROM events WHERE id < 10", fetch=True) == [(9,)]


def test_a7_a_damaged_manifest_never_blocks_other_databases_or_latest(ansible, pg, tmp_path, names):
    first = make_database(pg, "cat")
    other = make_database(pg, "cat")
    names += [first, other]
    store = {"dir": str(tmp_path / "store")}
    runs = [ansible.play(backup_task(pg, db, store)) for db in (first, first, other)]
    assert all(run.rc == 0 for run in runs), runs
    good, newest, theirs = (run.task(BACKUP)["result"]["backup"] for run in runs)
    Path(theirs["manifest"]).write_text('{"id": "truncated')  # another database's manifest, damaged
    Path(newest["manifest"]).write_text("\x00\x01 not json")  # our own newest, damaged
    run = ansible.play(backup_task(pg, first, store, skip_if_newer_than="1h"))
    assert run.rc == 0, run
    assert run.task(BACKUP)["result"]["backup"]["id"] == good["id"]  # the damaged newest is skipped, not trusted
    assert "skipped %s" % newest["manifest"] in run.output and theirs["manifest"] not in run.output
    run = ansible.play(restore_task(pg, first, "latest", store=store, validate_only=True))
    assert run.rc == 0, run
    assert run.task(RESTORE)["result"]["restore"]["id"] == good["id"]
    run = ansible.play(backup_task(pg, other, store, retention={"keep_last": 1}))
    assert run.rc == 0, run
    assert "skipped %s" % theirs["manifest"] in run.output


def test_a14_sigterm_half_way_cleans_up_and_sigkill_leftovers_are_removed_by_the_next_run(ansible, pg, tmp_path, names):
    big = make_database(pg, "term")
    names.append(big)
    sql(pg, big, "CREATE TABLE filler AS SELECT i, md5(i::text) || md5((i * 7)::text) AS t FROM generate_series(1, 1500000) i")
    store = tmp_path / "store"
    run = ansible.play(backup_task(pg, big, {"dir": str(store)}, compression="gzip"))
    assert run.rc == 0, run
    path = run.task(BACKUP)["result"]["backup"]["path"]

    def is_tool(tool, needle):
        return lambda argv: argv[0].endswith(tool.encode()) and any(needle.encode() in arg for arg in argv)

    def leftovers():
        work = [p for p in (store / ".work").glob("*") if p.name != ".locks"] if (store / ".work").exists() else []
        return work, databases_like(pg, big + "_restore_")

    # SIGTERM while pg_restore loads the scratch database
    finish = ansible.start(restore_task(pg, big, path, store={"dir": str(store)}, force=True, safety_backup=False))
    tool = wait_for_process(is_tool("pg_restore", big + "_restore_"))
    time.sleep(0.3)
    os.kill(parent_of(tool), signal.SIGTERM)  # this test's module: another test's may run beside it
    run = finish()
    assert run.rc != 0 and "stopped by a signal" in run.task(RESTORE)["result"]["msg"]
    assert leftovers() == ([], [])
    assert table_rows(pg, big, "filler") == 1500000

    # SIGTERM while pg_dump streams: no partial file
    finish = ansible.start(backup_task(pg, big, {"dir": str(store)}, compression="none"))
    tool = wait_for_process(is_tool("pg_dump", big))
    time.sleep(0.3)
    os.kill(parent_of(tool), signal.SIGTERM)
    run = finish()
    assert run.rc != 0 and "stopped by a signal" in run.task(BACKUP)["result"]["msg"]
    assert not list(store.rglob("*.partial"))

    # SIGKILL: nothing can clean up, so the next run removes what it can prove is its own and dead
    finish = ansible.start(restore_task(pg, big, path, store={"dir": str(store)}, force=True, safety_backup=False))
    tool = wait_for_process(is_tool("pg_restore", big + "_restore_"))
    time.sleep(0.3)
    os.kill(parent_of(tool), signal.SIGKILL)
    finish()
    stale_work, stale_dbs = leftovers()
    assert len(stale_work) == 1 and len(stale_dbs) == 1
    finish = ansible.start(backup_task(pg, big, {"dir": str(store)}, compression="none"))
    tool = wait_for_process(is_tool("pg_dump", big))
    time.sleep(0.3)
    os.kill(parent_of(tool), signal.SIGKILL)
    finish()
    assert len(list(store.rglob("*.partial"))) == 1
    time.sleep(1)  # an orphaned pg_dump may still be writing
    run = ansible.play(restore_task(pg, big, path, store={"dir": str(store)}, force=True, safety_backup=False,
                                    keep_previous=False))
    assert run.rc == 0, run
    assert "dropped scratch database(s) %s" % stale_dbs[0] in run.output and stale_work[0].name in run.output
    run = ansible.play(backup_task(pg, big, {"dir": str(store)}, compression="none"))
    assert run.rc == 0, run
    assert not list(store.rglob("*.partial")) and leftovers() == ([], [])


def test_a16_check_mode_writes_nothing_not_even_the_store_directory(ansible, pg, database, tmp_path):
    store = {"dir": str(tmp_path / "store" / "deeper"), "work_dir": str(tmp_path / "work")}
    run = ansible.play(backup_task(pg, database, store, globals=True, format="directory"), check=True)
    assert run.rc == 0, run
    assert run.task(BACKUP)["result"]["changed"] is True
    made = ansible.play(backup_task(pg, database, {"dir": str(tmp_path / "real")}))
    assert made.rc == 0, made
    path = made.task(BACKUP)["result"]["backup"]["path"]
    run = ansible.play(restore_task(pg, database, path, store=store, force=True), check=True)
    assert run.rc == 0, run
    run = ansible.play(restore_task(pg, database, path, store=store, validate_only=True, validate_level="restore"),
                       check=True)
    assert run.rc == 0, run
    assert not (tmp_path / "store").exists() and not (tmp_path / "work").exists()


def test_a17_a_key_file_readable_by_others_is_used_with_a_warning(ansible, pg, database, tmp_path):
    key = tmp_path / "backup.key"
    key.write_text("a long secret passphrase in a file\n")
    os.chmod(key, 0o644)
    run = ansible.play(backup_task(pg, database, {"dir": str(tmp_path / "store")}, encryption={"key_file": str(key)}))
    assert run.rc == 0, run
    assert "can be read by group or others (mode 0644)" in run.output and "chmod 600" in run.output
    os.chmod(key, 0o600)
    run = ansible.play(backup_task(pg, database, {"dir": str(tmp_path / "store")}, encryption={"key_file": str(key)}))
    assert run.rc == 0 and "can be read by group" not in run.output
