"""pg_maintenance against a real PostgreSQL with real bloat: deleted rows and a churned index, reported before and
after; heavy refused without a maintenance window; check mode runs nothing; long queries reported and terminated."""

from __future__ import annotations

import json
import threading
import time

import psycopg2
import pytest

from conftest import REPO
from pg_helpers import sql

TASK = "Maintain the database"


def maintain(pg, db, **options):
    spec = dict(login_host=pg.host, login_port=pg.port, login_user=pg.user, login_password=pg.password, db=db)
    spec.update(options)
    return "- name: %s\n  runbook.ops.pg_maintenance: %s\n" % (TASK, json.dumps(spec))


@pytest.fixture
def bloated(pg):
    """orders: 300k rows, 80 % deleted and vacuumed (pages stay); its index on note churned by updates."""
    name = "maint_bloat_%d" % int(time.time() * 1000 % 1e8)
    sql(pg, "postgres", "CREATE DATABASE %s" % name)
    sql(pg, name, "CREATE TABLE orders (id int PRIMARY KEY, note text, amount numeric); "
                  "INSERT INTO orders SELECT g, md5(g::text) || md5((g * 3)::text), g % 1000 FROM generate_series(1, 300000) g; "
                  "CREATE INDEX orders_note ON orders (note); CREATE TABLE small (id int); INSERT INTO small VALUES (1)")
    sql(pg, name, "DELETE FROM orders WHERE id % 5 <> 0")
    sql(pg, name, "UPDATE orders SET note = md5(note)")  # every entry of orders_note moves: its old leaves stay
    sql(pg, name, "VACUUM ANALYZE orders")
    yield name
    sql(pg, "postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def by_name(rows, key):
    return {r[key]: r for r in rows}


def test_standard_rebuilds_bloated_indexes_and_heavy_needs_a_window(ansible, pg, bloated):
    reported = ansible.play(maintain(pg, bloated, level="report"))
    assert reported.rc == 0, reported
    result = reported.task(TASK)["result"]
    assert not result["changed"] and result["statements"] == []
    assert by_name(result["indexes"], "index")["orders_note"]["bloat_percent_before"] >= 50
    checked = ansible.play(maintain(pg, bloated, level="standard"), check=True)
    assert checked.rc == 0, checked
    result = checked.task(TASK)["result"]
    assert result["changed"] and all(not s["ran"] for s in result["statements"])
    planned = [s["sql"] for s in result["statements"]]
    assert 'REINDEX INDEX CONCURRENTLY "public"."orders_note"' in planned
    assert not any("small" in s and "REINDEX" in s for s in planned)  # bloat or not, under min_size
    index_before = sql(pg, bloated, "SELECT pg_relation_size('orders_note')", fetch=True)[0][0]

    refused = ansible.play(maintain(pg, bloated, level="heavy"))
    msg = refused.task(TASK)["result"]["msg"]
    assert refused.rc != 0 and "maintenance_window: true" in msg and "nothing was run" in msg
    assert sql(pg, bloated, "SELECT pg_relation_size('orders_note')", fetch=True)[0][0] == index_before

    ran = ansible.play(maintain(pg, bloated, level="standard"), diff=True)
    assert ran.rc == 0, ran
    result = ran.task(TASK)["result"]
    indexes = by_name(result["indexes"], "index")
    note = indexes["orders_note"]
    assert note["bloat_percent_before"] >= 50 and note["bloat_percent_after"] < 30, note
    assert note["size_after"] < note["size_before"] / 2 and note["valid"]
    tables = by_name(result["tables"], "table")
    assert tables["orders"]["bloat_percent_before"] >= 50  # reported, but standard does not rewrite tables
    assert tables["orders"]["size_after"] == tables["orders"]["size_before"]
    assert result["totals"]["freed_bytes"] > 0 and all(s["ran"] for s in result["statements"])
    assert sql(pg, bloated, "SELECT count(*) FROM orders", fetch=True)[0][0] == 60000

    heavy = ansible.play(maintain(pg, bloated, level="heavy", maintenance_window=True))
    assert heavy.rc == 0, heavy
    orders = by_name(heavy.task(TASK)["result"]["tables"], "table")["orders"]
    assert orders["bloat_percent_before"] >= 50 and orders["bloat_percent_after"] < 20, orders
    assert orders["size_after"] < orders["size_before"] / 2
    assert any(s["sql"] == 'VACUUM (FULL, ANALYZE) "public"."orders"' for s in heavy.task(TASK)["result"]["statements"])
    assert sql(pg, bloated, "SELECT count(*), sum(amount) FROM orders", fetch=True)[0][0] == 60000


def test_light_vacuums_and_reports_dead_tuples_and_long_queries_and_terminates_on_request(ansible, pg, bloated):
    sql(pg, bloated, "DELETE FROM orders WHERE id <= 1000; CREATE EXTENSION pg_stat_statements")
    for _round in range(3):
        sql(pg, bloated, "SELECT count(*) FROM orders o1 JOIN orders o2 USING (amount) WHERE o1.id < 3000")
    run = ansible.play(maintain(pg, bloated, level="light", slow_queries=10))
    assert run.rc == 0, run
    result = run.task(TASK)["result"]
    orders = by_name(result["tables"], "table")["orders"]
    assert orders["dead_tuples_before"] >= 200 and orders["dead_tuples_after"] == 0
    assert [s["sql"] for s in result["statements"]] == ['VACUUM (ANALYZE, INDEX_CLEANUP ON) "public"."orders"',
                                                        'VACUUM (ANALYZE, INDEX_CLEANUP ON) "public"."small"']
    assert result["terminated"] == [] and result["long_running"] == []
    slow = result["slow_queries"]
    assert slow[0]["total_ms"] >= slow[1]["total_ms"] >= slow[-1]["total_ms"]  # the top ones first
    assert [q["calls"] for q in slow if "JOIN orders o2" in q["query"]] == [3]

    holder = psycopg2.connect(**pg.conninfo(bloated))
    holder.autocommit = True
    sleeper = threading.Thread(target=_sleep, args=(holder,), daemon=True)
    sleeper.start()
    time.sleep(2.5)
    try:
        checked = ansible.play(maintain(pg, bloated, level="light", long_query_seconds=2, terminate_after=2), check=True)
        assert sleeper.is_alive()  # check mode terminates nothing
        run = ansible.play(maintain(pg, bloated, level="light", long_query_seconds=2, terminate_after=2))
    finally:
        sleeper.join(30)
        holder.close()
    assert checked.rc == 0 and run.rc == 0, (checked, run)
    would = [q for q in checked.task(TASK)["result"]["terminated"] if "pg_sleep(60)" in q["query"]]
    assert would and would[0]["terminated"] is False
    result = run.task(TASK)["result"]
    assert any("pg_sleep(60)" in q["query"] and q["seconds"] >= 2 for q in result["long_running"])
    terminated = [q for q in result["terminated"] if "pg_sleep(60)" in q["query"]]
    assert terminated and terminated[0]["terminated"] is True
    assert not sleeper.is_alive()


def _sleep(conn):
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(60)")
    except psycopg2.Error:
        pass  # terminated, as asked


def test_bad_input_is_refused_before_anything_runs(ansible, pg, bloated):
    for options, message in ((dict(bloat_threshold=0), "bloat_threshold is 0"),
                             (dict(terminate_after=0.5), "terminate_after is 0.5"),
                             (dict(tables=["public.nope"]), "tables public.nope are not in database"),
                             (dict(db="no such db"), "cannot connect to PostgreSQL database 'no such db'")):
        spec = dict({"db": bloated}, **options)
        run = ansible.play(maintain(pg, spec.pop("db"), **spec))
        assert run.rc != 0 and message in run.task(TASK)["result"]["msg"], run.task(TASK)["result"]["msg"]
    stats = sql(pg, bloated, "SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'small'", fetch=True)
    assert stats == [(None,)]


def test_the_db_maintenance_playbook_maintains_each_database_and_prints_one_line_per_host(ansible, pg, bloated, tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"db": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": __import__("sys").executable,
        "db_maintenance_postgres": {"login_host": pg.host, "login_port": pg.port, "login_user": pg.user,
                                    "login_password": pg.password},
        "db_maintenance_databases": [bloated, {"db": "postgres", "level": "light"}]}}}}))
    run = ansible.play(None, playbook_path=REPO / "playbooks" / "db_maintenance.yml", inventory=inventory,
                       extra_vars={"db_maintenance_level": "standard"})
    assert run.rc == 0, run
    line = run.task("Show one line per host")["result"]["msg"]
    assert len(line) == 1 and line[0].startswith("localhost: %s standard (" % bloated) and "postgres light" in line[0]
    refused = ansible.play(None, playbook_path=REPO / "playbooks" / "db_maintenance.yml", inventory=inventory,
                           extra_vars={"db_maintenance_level": "heavy"})
    assert refused.rc != 0 and "maintenance_window: true" in refused.output
