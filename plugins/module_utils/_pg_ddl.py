# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: PostgreSQL DDL as functions on a connection - names, create, drop, swap, properties.
Not a public API.

Derived names (scratch, previous) are cut by bytes, as PostgreSQL cuts identifiers at 63 bytes, and made unique
against the databases that exist. A scratch database carries a comment naming its owner process, so a later
run can prove a leftover is dead before it drops it. Every cleanup after a failure runs on a fresh connection:
the one that failed may sit in an aborted transaction.
"""

from __future__ import annotations

import json
import time

from ansible_collections.runbook.ops.plugins.module_utils import _postgres as pg
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import atomic
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line, warn

MAX_NAME_BYTES = 63
SCRATCH_MARK = "runbook.ops scratch: "
CLEANUP_TIMEOUT = 60  # seconds a clean-up statement may wait (a DROP ... WITH (FORCE) waits for every backend)
USER_TABLES = ("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
               "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2")


def quote_ident(name):
    return '"%s"' % name.replace('"', '""')


def quote_literal(text):
    return "'%s'" % text.replace("'", "''")


def cut_bytes(text, limit):
    """The longest prefix of ``text`` that is at most ``limit`` bytes of UTF-8 (never half a character)."""
    return text.encode("utf-8")[:max(0, limit)].decode("utf-8", errors="ignore")


def derived_name(db, infix, stamp, taken=()):
    """``<db>_<infix>_<stamp>`` within 63 bytes, cutting ``db`` by bytes; a counter keeps it out of ``taken``."""
    counter = 1
    while True:
        suffix = "_%s_%s" % (infix, stamp) + ("" if counter == 1 else "_%d" % counter)
        name = cut_bytes(db, MAX_NAME_BYTES - len(suffix.encode("utf-8"))) + suffix
        if name != db and name not in taken:
            return name
        counter += 1


def execute(conn, sql, what, args=None):
    psycopg2 = pg.psycopg2_library()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
    except psycopg2.Error as exc:
        raise OpsError("%s: %s" % (what, first_line(exc)), exception=exc)


def database_names(conn):
    return {row[0] for row in execute(conn, "SELECT datname FROM pg_database", "cannot list databases")}


def database_facts(conn, params, name):
    """exists, encoding, collation, owner, size and user tables of a database (tables read by connecting to it)."""
    rows = execute(conn, "SELECT pg_encoding_to_char(encoding), datcollate, datctype, pg_get_userbyid(datdba), "
                         "pg_database_size(oid), shobj_description(oid, 'pg_database'), datistemplate, datallowconn "
                         "FROM pg_database WHERE datname = %s", "cannot read database %s" % name, (name,))
    if not rows:
        return {"exists": False, "tables": 0, "size": 0, "owner": None, "comment": None, "template": False}
    row = rows[0]
    facts = {"exists": True, "encoding": row[0], "collate": row[1], "ctype": row[2], "owner": row[3], "size": row[4],
             "comment": row[5], "template": row[6] or name in ("template0", "template1"), "allow_connections": row[7]}
    if facts["template"]:
        facts["tables"] = None  # never connected to: it is refused as a target anyway
        return facts
    if not row[7]:
        raise OpsError("database %r does not accept connections (ALLOW_CONNECTIONS false): if a restore was killed "
                       "during its swap, run ALTER DATABASE ... ALLOW_CONNECTIONS true, then try again" % name)
    db = pg.connect(params, name)
    try:
        facts["tables"] = len(execute(db, USER_TABLES, "cannot list the tables of %s" % name))
    finally:
        db.close()
    return facts


def mark_scratch(conn, name, target, **more):
    marker = dict(atomic.owner_marker(), target=target, **more)
    execute(conn, "COMMENT ON DATABASE %s IS %s" % (quote_ident(name), quote_literal(SCRATCH_MARK + json.dumps(marker))),
            "cannot mark scratch database %s" % name)


def create_database(conn, name, like=None, owner=None, scratch_for=None):
    """CREATE DATABASE from template0 with the encoding and collation of ``like``; a scratch one is marked."""
    like = like or {}
    sql = "CREATE DATABASE %s TEMPLATE template0" % quote_ident(name)
    owner = owner or like.get("owner")
    if owner:
        sql += " OWNER %s" % quote_ident(owner)
    if like.get("encoding"):
        sql += " ENCODING %s LC_COLLATE %s LC_CTYPE %s" % tuple(
            quote_literal(like[k]) for k in ("encoding", "collate", "ctype"))
    execute(conn, sql, "cannot create database %s" % name)
    if scratch_for is not None:
        mark_scratch(conn, name, scratch_for)


def drop_database(conn, name):
    execute(conn, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % quote_ident(name), "cannot drop database %s" % name)


def drop_quietly(params, maintenance_db, name):
    """Drop ``name`` on a fresh connection; a failure becomes a warning that names what is left behind."""
    try:
        conn = pg.connect(params, maintenance_db)
        try:
            execute(conn, "SET statement_timeout = '%ds'" % CLEANUP_TIMEOUT, "cannot bound the clean-up")
            drop_database(conn, name)
        finally:
            conn.close()
    except OpsError as exc:
        warn("could not drop the scratch database %s (%s): a later restore of the same database drops it, or drop it "
             "by hand" % (name, exc.message))
        return False
    return True


def drop_stale_scratch(conn, target):
    """Drop scratch databases of ``target`` left by runs that were killed (their owner is provably dead)."""
    rows = execute(conn, "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
                         "WHERE shobj_description(oid, 'pg_database') LIKE %s", "cannot list scratch databases",
                   (SCRATCH_MARK + "%",))
    dropped = []
    for name, comment in rows:
        try:
            marker = json.loads(comment[len(SCRATCH_MARK):])
        except ValueError:
            continue
        if marker.get("target") == target and atomic.owner_is_dead(marker):
            drop_database(conn, name)
            dropped.append(name)
            if marker.get("closed_target") and execute(conn, "SELECT 1 FROM pg_database WHERE datname = %s AND NOT "
                                                             "datallowconn", "cannot read %s" % target, (target,)):
                execute(conn, "ALTER DATABASE %s ALLOW_CONNECTIONS true" % quote_ident(target),
                        "cannot allow connections to %s again" % target)
                warn("database %s refused connections since a restore was killed during its swap: connections are "
                     "allowed again" % target)
    if dropped:
        warn("dropped scratch database(s) %s left by an earlier restore of %s that was killed" % (", ".join(dropped), target))
    return dropped


def blockers(conn, name):
    """What keeps a database in use besides client sessions: prepared transactions and logical replication slots."""
    found = []
    for gid, prepared, owner in execute(conn, "SELECT gid, prepared, owner FROM pg_prepared_xacts WHERE database = %s",
                                        "cannot read prepared transactions", (name,)):
        found.append("prepared transaction %r (prepared %s by %s): COMMIT PREPARED or ROLLBACK PREPARED it"
                     % (gid, prepared.strftime("%Y-%m-%d %H:%M:%S %Z"), owner))
    for (slot,) in execute(conn, "SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                           "cannot read replication slots", (name,)):
        found.append("replication slot %r: drop it with pg_drop_replication_slot, or stop its consumer" % slot)
    return found


def copy_database_properties(conn, source, target):
    """Database-level settings and grants, which pg_dump without --create does not carry; returns the counts."""
    settings = execute(conn, "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_database d "
                             "ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
                       "cannot read settings of %s" % source, (source,))
    for (setting,) in settings:
        name, _sep, value = setting.partition("=")
        execute(conn, "ALTER DATABASE %s SET %s TO %%s" % (quote_ident(target), quote_ident(name)),
                "cannot copy setting %s" % name, (value,))
    grants = execute(conn, "SELECT coalesce(r.rolname, 'PUBLIC'), a.privilege_type FROM pg_database d, "
                           "aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
                           "WHERE d.datname = %s AND d.datacl IS NOT NULL", "cannot read grants of %s" % source, (source,))
    has_acl = execute(conn, "SELECT datacl IS NOT NULL FROM pg_database WHERE datname = %s",
                      "cannot read grants of %s" % source, (source,))[0][0]
    if has_acl:
        execute(conn, "REVOKE ALL ON DATABASE %s FROM PUBLIC" % quote_ident(target), "cannot copy grants")
    for grantee, privilege in grants:
        who = "PUBLIC" if grantee == "PUBLIC" else quote_ident(grantee)
        execute(conn, "GRANT %s ON DATABASE %s TO %s" % (privilege, quote_ident(target), who),
                "cannot copy grant %s to %s" % (privilege, grantee))
    return {"settings": len(settings), "grants": len(grants)}


def swap(params, maintenance_db, target, scratch, previous, terminate_timeout, comment=None):
    """Rename target -> previous and scratch -> target in one transaction, after closing the target's sessions.

    Returns the number of sessions terminated. On any failure the target accepts connections again and keeps
    its name (the transaction rolled back), and OpsError says what blocked the swap.
    """
    psycopg2 = pg.psycopg2_library()
    conn = pg.connect(params, maintenance_db)
    closed = False
    try:
        found = blockers(conn, target)
        if found:
            raise OpsError("database %r cannot be renamed while it is held by %s" % (target, "; ".join(found)))
        mark_scratch(conn, scratch, target, closed_target=True)  # a later run can give the target back if we die now
        execute(conn, "ALTER DATABASE %s ALLOW_CONNECTIONS false" % quote_ident(target),
                "cannot stop new connections to %s" % target)
        closed = True
        deadline = time.monotonic() + terminate_timeout
        terminated = 0
        while True:
            terminated += execute(conn, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                                        "AND pid <> pg_backend_pid()", "cannot terminate sessions", (target,))[0][0]
            try:
                conn.autocommit = False
                with conn.cursor() as cur:
                    cur.execute("ALTER DATABASE %s RENAME TO %s" % (quote_ident(target), quote_ident(previous)))
                    cur.execute("ALTER DATABASE %s RENAME TO %s" % (quote_ident(scratch), quote_ident(target)))
                    cur.execute("COMMENT ON DATABASE %s IS %s" % (quote_ident(target),
                                                                  quote_literal(comment) if comment else "NULL"))
                conn.commit()
                break
            except psycopg2.errors.ObjectInUse as exc:
                conn.rollback()
                conn.autocommit = True
                found = blockers(conn, target)
                if found:
                    raise OpsError("database %r cannot be renamed while it is held by %s" % (target, "; ".join(found)),
                                   exception=exc)
                if time.monotonic() > deadline:
                    raise OpsError("%s for %ss (%s)" % (_sessions_left(conn, target), terminate_timeout, first_line(exc)),
                                   exception=exc)
                time.sleep(0.2)
            except psycopg2.Error as exc:
                conn.rollback()
                raise OpsError("the swap of %s and %s failed: %s" % (target, scratch, first_line(exc)), exception=exc)
            finally:
                if not conn.closed:
                    conn.autocommit = True
    except BaseException:
        conn.close()
        if closed:
            _allow_connections_again(params, maintenance_db, target)
        raise
    try:
        execute(conn, "ALTER DATABASE %s ALLOW_CONNECTIONS true" % quote_ident(previous),
                "cannot allow connections to %s" % previous)
    finally:
        conn.close()
    return terminated


def _sessions_left(conn, target):
    """Why the target is still in use: sessions that survive pg_terminate_backend, or ones that keep coming."""
    rows = execute(conn, "SELECT pid, usename, application_name, state, backend_start FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY backend_start",
                   "cannot read the sessions of %s" % target, (target,))
    stuck = ["pid %d (user %s, application %r, %s)" % (pid, user, app, state) for pid, user, app, state, _s in rows]
    if stuck:
        return ("sessions of %s do not end after pg_terminate_backend: %s; they may be stopped or stuck on the server: "
                "end them there, then try again" % (target, ", ".join(stuck[:5])))
    return "client sessions kept reconnecting to %s: stop the applications that reconnect, or raise terminate_timeout" % target


def _allow_connections_again(params, maintenance_db, name):
    """On a fresh connection: the one that failed may be unusable."""
    try:
        conn = pg.connect(params, maintenance_db)
        try:
            execute(conn, "ALTER DATABASE %s ALLOW_CONNECTIONS true" % quote_ident(name),
                    "cannot allow connections to %s again" % name)
        finally:
            conn.close()
    except OpsError as exc:
        warn("database %s may still refuse new connections (%s): run ALTER DATABASE ... ALLOW_CONNECTIONS true"
             % (name, exc.message))


def inherited_objects(conn):
    """What partitions inherit, named as pg_dump quotes them: {(table, constraint)} and {index}."""
    constraints = execute(conn, "SELECT format('%I.%I', n.nspname, c.relname), format('%I', con.conname) "
                                "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n "
                                "ON n.oid = c.relnamespace WHERE NOT con.conislocal", "cannot read inherited constraints")
    indexes = execute(conn, "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n "
                            "ON n.oid = c.relnamespace WHERE c.relkind = 'i' AND c.relispartition",
                      "cannot read partition indexes")
    return {tuple(row) for row in constraints}, {row[0] for row in indexes}
