"""PostgreSQL helpers shared by the backup and restore integration tests."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import psycopg2

from servers import PG_BIN

BACKUP = "Back up the database"

SEED = """
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA sales;
CREATE SCHEMA audit;
CREATE TABLE sales.customers (id serial PRIMARY KEY, name text NOT NULL, city text, secret bytea);
CREATE INDEX customers_city ON sales.customers (city);
CREATE TABLE audit.events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), payload jsonb);
INSERT INTO sales.customers (name, city, secret)
  SELECT 'Zoë Ñúñez ' || i, (ARRAY['Zürich','東京','Kraków'])[1 + i % 3], digest(i::text, 'sha256') FROM generate_series(1, 500) i;
INSERT INTO audit.events (payload) SELECT jsonb_build_object('n', i, 'ok', i % 2 = 0) FROM generate_series(1, 300) i;
CREATE VIEW sales.by_city AS SELECT city, count(*) FROM sales.customers GROUP BY city;
CREATE FUNCTION sales.greet(text) RETURNS text LANGUAGE sql AS $$ SELECT 'hello ' || $1 $$;
SELECT lo_from_bytea(0, 'large object payload ✓');
"""


def sql(pg, db, statement, fetch=False):
    conn = psycopg2.connect(**pg.conninfo(db))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if fetch else None
    finally:
        conn.close()


def make_database(pg, prefix="app"):
    """A new database seeded with SEED; returns its name."""
    name = "%s_%s" % (prefix, uuid.uuid4().hex[:8])
    sql(pg, "postgres", "CREATE DATABASE %s" % name)
    sql(pg, name, SEED)
    return name


def drop_database(pg, name):
    sql(pg, "postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def databases(pg, prefix):
    return sorted(r[0] for r in sql(pg, "postgres", "SELECT datname FROM pg_database WHERE datname LIKE '%s%%'" % prefix,
                                    fetch=True))


def table_counts(pg, db):
    rows = sql(pg, db, "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1", fetch=True)
    return {name: sql(pg, db, "SELECT count(*) FROM %s" % name, fetch=True)[0][0] for (name,) in rows}


def backup_task(pg, db, store, **options):
    spec = dict(login_host=pg.host, login_port=pg.port, login_user=pg.user, login_password=pg.password, db=db, store=store)
    spec.update(options)
    return "- name: %s\n  runbook.ops.pg_backup: %s\n" % (BACKUP, json.dumps(spec))


def pg_dump_text(pg, db):
    env = dict(os.environ, **pg.env)
    text = subprocess.run([str(PG_BIN / "pg_dump"), "--no-password", "-d", db], env=env, capture_output=True, text=True,
                          check=True).stdout
    # pg_dump 15.14+ brackets its output with random \restrict keys
    return "\n".join(line for line in text.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


RESTORE = "Restore the database"


def restore_task(pg, db, src, **options):
    spec = dict(login_host=pg.host, login_port=pg.port, login_user=pg.user, login_password=pg.password, db=db, src=src)
    spec.update(options)
    return "- name: %s\n  runbook.ops.pg_restore: %s\n" % (RESTORE, json.dumps(spec))


def pg_tool(pg, name, *args, stdout=None):
    env = dict(os.environ, **pg.env)
    return subprocess.run([str(PG_BIN / name), "--no-password", *args], env=env, check=True, stdout=stdout,
                          stderr=subprocess.PIPE)


def quoted(name):
    return '"%s"' % name.replace('"', '""')


def exact_databases(pg, names):
    """Which of ``names`` exist (names compared exactly, whatever characters they hold)."""
    rows = sql_args(pg, "postgres", "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (list(names),))
    return sorted(r[0] for r in rows)


def sql_args(pg, db, statement, args):
    conn = psycopg2.connect(**pg.conninfo(db))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def databases_like(pg, prefix):
    """Databases whose name starts with ``prefix`` (compared by bytes, no LIKE escaping needed)."""
    return sorted(r[0] for r in sql_args(pg, "postgres", "SELECT datname FROM pg_database WHERE left(datname, %s) = %s",
                                         (len(prefix), prefix)))
