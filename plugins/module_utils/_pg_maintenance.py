# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: PostgreSQL maintenance by level, with bloat reported before and after. Not a public API.

Levels as the runbooks keep them: ``light`` is VACUUM (ANALYZE) of every table; ``standard`` adds REINDEX
CONCURRENTLY of the indexes whose estimated bloat is over the threshold; ``heavy`` adds VACUUM FULL (CLUSTER where
the table has a clustered index) of the tables over the threshold, which locks each one for its whole rewrite and
so runs only with ``maintenance_window: true``.

Bloat is estimated from the catalog and the planner's statistics (no extension, no scan): the pages a relation has
against the pages its live rows need. It is an estimate, as the runbooks' queries are; the report says so.
"""

from __future__ import annotations

import time

from ansible_collections.runbook.ops.plugins.module_utils import _container
from ansible_collections.runbook.ops.plugins.module_utils import _pg_ddl as ddl
from ansible_collections.runbook.ops.plugins.module_utils import _postgres as pg
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError
from ansible_collections.runbook.ops.plugins.module_utils._module import merge_specs

LEVELS = ("report", "light", "standard", "heavy")  # report: the figures only, nothing runs

# Pages the live rows need: per row its header (23 bytes, aligned to 24), its line pointer (4) and its columns'
# average width from pg_stats; per page the header (24 bytes); the table's fillfactor.
TABLES = """
SELECT c.oid, n.nspname, c.relname, c.relpages::bigint, greatest(c.reltuples, 0)::bigint,
       pg_table_size(c.oid), coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0),
       s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
       ceil(greatest(c.reltuples, 0) * (24 + 4 + coalesce(w.width, 0))
            / ((current_setting('block_size')::int - 24)
               * coalesce((SELECT substring(o FROM 'fillfactor=(\\d+)')::int FROM unnest(c.reloptions) o
                           WHERE o LIKE 'fillfactor=%'), 100) / 100.0))::bigint,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisclustered)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
LEFT JOIN LATERAL (SELECT sum((1 - st.null_frac) * st.avg_width) AS width FROM pg_stats st
                   WHERE st.schemaname = n.nspname AND st.tablename = c.relname) w ON true
WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
ORDER BY 2, 3
"""

# B-tree leaf pages the live entries need: per entry its header (8), its key columns' average width (aligned to 8)
# and its line pointer (4); per page the header and the b-tree special space (24 + 16); the index's fillfactor (90).
INDEXES = """
SELECT i.indexrelid, n.nspname, ci.relname, ct.relname, ci.relpages::bigint, greatest(ci.reltuples, 0)::bigint,
       pg_relation_size(i.indexrelid), am.amname, i.indisvalid, i.indisprimary OR i.indisunique,
       CASE WHEN am.amname = 'btree' AND 0 <> ALL (i.indkey::int2[]) THEN
         ceil(greatest(ci.reltuples, 0) * (8 + ceil(coalesce(w.width, 0) / 8.0) * 8 + 4)
              / ((current_setting('block_size')::int - 40)
                 * coalesce((SELECT substring(o FROM 'fillfactor=(\\d+)')::int FROM unnest(ci.reloptions) o
                             WHERE o LIKE 'fillfactor=%'), 90) / 100.0))::bigint + 1
       END
FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid
JOIN pg_class ct ON ct.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ct.relnamespace
JOIN pg_am am ON am.oid = ci.relam
LEFT JOIN LATERAL (SELECT sum((1 - st.null_frac) * st.avg_width) AS width
                   FROM unnest(i.indkey::int2[]) k JOIN pg_attribute a ON a.attrelid = ct.oid AND a.attnum = k
                   JOIN pg_stats st ON st.schemaname = n.nspname AND st.tablename = ct.relname
                                   AND st.attname = a.attname) w ON true
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND ct.relkind IN ('r', 'm')
ORDER BY 2, 4, 3
"""

LONG_QUERIES = """
SELECT pid, usename, datname, state, extract(epoch FROM now() - query_start)::float8, left(query, 500),
       wait_event_type, application_name
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' AND state <> 'idle'
  AND query_start < now() - make_interval(secs => %s)
ORDER BY query_start
"""


def argspec_ex():
    return merge_specs(pg.connection_argspec_ex(), _container.container_argspec_ex(), {"argspec": dict(
        db=dict(type="str", required=True, aliases=["login_db"]),
        level=dict(type="str", default="light", choices=list(LEVELS)),
        maintenance_window=dict(type="bool", default=False),
        bloat_threshold=dict(type="float", default=30.0),
        min_size=dict(type="int", default=8 * 1024 * 1024),
        tables=dict(type="list", elements="str", default=[]),
        lock_timeout=dict(type="int", default=30),
        long_query_seconds=dict(type="float", default=300.0),
        terminate_after=dict(type="float"),
        slow_queries=dict(type="int", default=10),
    )})


def validate(params):
    """Every check that needs no server, before anything runs."""
    pg.validate_connection(params)
    pg.validate_db_name(params["db"])
    if params["level"] == "heavy" and not params["maintenance_window"]:
        raise OpsError("level heavy runs VACUUM FULL / CLUSTER, which lock each bloated table against reads and writes "
                       "for its whole rewrite: run it in a maintenance window (application stopped or in maintenance "
                       "mode) and say so with maintenance_window: true; nothing was run")
    if not 0 < params["bloat_threshold"] <= 100:
        raise OpsError("bloat_threshold is %s: give a percentage above 0 and at most 100" % params["bloat_threshold"])
    for option in ("min_size", "lock_timeout", "slow_queries"):
        if params[option] < 0:
            raise OpsError("%s is %d: it must be 0 or more" % (option, params[option]))
    if params["long_query_seconds"] <= 0:
        raise OpsError("long_query_seconds must be more than 0")
    if params["terminate_after"] is not None and params["terminate_after"] < 1:
        raise OpsError("terminate_after is %s: give at least 1 second (a query younger than that is not 'long')"
                       % params["terminate_after"])
    for name in params["tables"]:
        if not name.strip():
            raise OpsError("tables holds an empty name: give schema.table or table")


def _percent(pages, expected):
    if not pages or expected is None:
        return None if expected is None else 0.0
    return round(max(0.0, 100.0 * (pages - expected) / pages), 1)


def read_tables(conn, wanted):
    rows = ddl.execute(conn, TABLES, "cannot read the tables' statistics")
    tables = []
    for (oid, schema, name, pages, tuples, size, live, dead, vacuum, autovacuum, analyze, autoanalyze,
         expected, clustered) in rows:
        if wanted and "%s.%s" % (schema, name) not in wanted and name not in wanted:
            continue
        tables.append({"oid": oid, "schema": schema, "table": name, "size": size, "pages": pages, "rows_estimate": tuples,
                       "live_tuples": live, "dead_tuples": dead,
                       "dead_percent": round(100.0 * dead / (live + dead), 1) if live + dead else 0.0,
                       "bloat_percent": _percent(pages, expected), "expected_pages": expected, "clustered": clustered,
                       "last_vacuum": _time(vacuum or autovacuum), "last_analyze": _time(analyze or autoanalyze)})
    return tables


def read_indexes(conn, tables):
    known = {(t["schema"], t["table"]) for t in tables}
    rows = ddl.execute(conn, INDEXES, "cannot read the indexes' statistics")
    indexes = []
    for oid, schema, name, table, pages, tuples, size, method, valid, unique, expected in rows:
        if (schema, table) not in known:
            continue
        indexes.append({"oid": oid, "schema": schema, "index": name, "table": table, "size": size, "pages": pages,
                        "method": method, "valid": valid, "unique": unique,
                        "bloat_percent": _percent(pages, expected) if valid else None, "expected_pages": expected})
    return indexes


def _time(value):
    return value.isoformat() if value is not None else None


def _qualified(schema, name):
    return "%s.%s" % (ddl.quote_ident(schema), ddl.quote_ident(name))


class Maintenance:
    def __init__(self, module, params):
        self.module = module
        self.params = params
        self.statements = []
        self.server_version = 0

    def run(self):
        validate(self.params)
        clock = time.monotonic()
        pg.reach(self.params)
        conn = pg.connect(self.params, self.params["db"])
        self.server_version = conn.server_version
        try:
            result = self.maintain(conn)
        finally:
            conn.close()
        result["duration"] = round(time.monotonic() - clock, 3)
        return result

    def maintain(self, conn):
        params = self.params
        wanted = set(params["tables"])
        before_tables = read_tables(conn, wanted)
        if wanted:
            found = {"%s.%s" % (t["schema"], t["table"]) for t in before_tables} | {t["table"] for t in before_tables}
            missing = sorted(wanted - found)
            if missing:
                raise OpsError("tables %s are not in database %r (give schema.table or a table name); nothing was run"
                               % (", ".join(missing), params["db"]))
        before_indexes = read_indexes(conn, before_tables)
        long_running = self.long_queries(conn, params["long_query_seconds"])
        terminated = self.terminate(conn) if params["terminate_after"] is not None else []
        plan = self.plan(before_tables, before_indexes)
        if not self.module.check_mode:
            self.execute(conn, plan)
        after_tables, after_indexes = before_tables, before_indexes
        if self.statements and not self.module.check_mode:
            after_tables = read_tables(conn, wanted)
            after_indexes = read_indexes(conn, after_tables)
        report = self.report(before_tables, after_tables, before_indexes, after_indexes)
        changed = bool(plan) or bool(terminated)
        diff = {"before": "", "after": "".join("%s;\n" % step["sql"] for step in plan)}
        return dict(changed=changed, level=params["level"], statements=self.statements if not self.module.check_mode
                    else [{"sql": step["sql"], "why": step["why"], "ran": False} for step in plan],
                    tables=report["tables"], indexes=report["indexes"], totals=report["totals"],
                    long_running=long_running, terminated=terminated, slow_queries=self.slow_queries(conn),
                    bloat_estimate="from the planner's statistics (pg_class, pg_stats): an estimate, not a scan",
                    diff=diff)

    # --- what to run --------------------------------------------------------------------------------

    def plan(self, tables, indexes):
        params = self.params
        level = LEVELS.index(params["level"])
        steps = []
        rewrite = set()
        if level >= 3:
            for t in tables:
                if self.over(t):
                    rewrite.add((t["schema"], t["table"]))
                    verb = "CLUSTER" if t["clustered"] else "VACUUM (FULL, ANALYZE)"
                    steps.append({"sql": "%s %s" % (verb, _qualified(t["schema"], t["table"])), "kind": "rewrite",
                                  "why": "table bloat %s %% over %s %%, %d bytes" % (
                                      t["bloat_percent"], params["bloat_threshold"], t["size"])})
        # INDEX_CLEANUP ON: a VACUUM that skips the indexes (14+ does when few pages have dead items) leaves the dead
        # items in place; maintenance removes them
        vacuum = "VACUUM (ANALYZE, INDEX_CLEANUP ON)" if self.server_version >= 120000 else "VACUUM (ANALYZE)"
        for t in tables if level >= 1 else []:
            if (t["schema"], t["table"]) not in rewrite:  # a rewrite leaves nothing for VACUUM to do
                steps.append({"sql": "%s %s" % (vacuum, _qualified(t["schema"], t["table"])), "kind": "vacuum",
                              "why": "level %s: %d dead tuples" % (params["level"], t["dead_tuples"])})
        if level >= 2:
            for i in indexes:
                if (i["schema"], i["table"]) in rewrite:
                    continue  # rebuilt by the table's rewrite
                if not i["valid"]:
                    steps.append({"sql": "REINDEX INDEX CONCURRENTLY %s" % _qualified(i["schema"], i["index"]),
                                  "kind": "reindex", "why": "the index is invalid (a failed CREATE INDEX CONCURRENTLY?)"})
                elif self.over(i):
                    steps.append({"sql": "REINDEX INDEX CONCURRENTLY %s" % _qualified(i["schema"], i["index"]),
                                  "kind": "reindex", "why": "index bloat %s %% over %s %%, %d bytes" % (
                                      i["bloat_percent"], params["bloat_threshold"], i["size"])})
        return steps

    def over(self, relation):
        bloat = relation["bloat_percent"]
        return bloat is not None and bloat >= self.params["bloat_threshold"] and relation["size"] >= self.params["min_size"]

    def execute(self, conn, plan):
        ddl.execute(conn, "SET lock_timeout = %s", "cannot set lock_timeout", ("%ds" % self.params["lock_timeout"],))
        for step in plan:
            clock = time.monotonic()
            try:
                ddl.execute(conn, step["sql"], "%s failed" % step["sql"])
            except OpsError as exc:
                hint = ""
                if "lock timeout" in exc.message:
                    hint = ("; another session held a lock on it for lock_timeout (%ds): run again when it is quieter, or "
                            "raise lock_timeout" % self.params["lock_timeout"])
                self.statements.append({"sql": step["sql"], "why": step["why"], "ran": False, "error": exc.message})
                raise exc.extend("the statements before it ran (see statements)%s" % hint, changed=bool(self.statements),
                                 statements=self.statements)
            self.statements.append({"sql": step["sql"], "why": step["why"], "ran": True,
                                    "seconds": round(time.monotonic() - clock, 3)})

    # --- reports ----------------------------------------------------------------------------------------

    @staticmethod
    def report(before_tables, after_tables, before_indexes, after_indexes):
        after_t = {(t["schema"], t["table"]): t for t in after_tables}
        after_i = {(i["schema"], i["index"]): i for i in after_indexes}
        tables = []
        for t in before_tables:
            now = after_t.get((t["schema"], t["table"]), t)
            tables.append({"schema": t["schema"], "table": t["table"], "size_before": t["size"], "size_after": now["size"],
                           "dead_tuples_before": t["dead_tuples"], "dead_tuples_after": now["dead_tuples"],
                           "live_tuples": now["live_tuples"], "dead_percent_before": t["dead_percent"],
                           "bloat_percent_before": t["bloat_percent"], "bloat_percent_after": now["bloat_percent"],
                           "last_vacuum": now["last_vacuum"], "last_analyze": now["last_analyze"]})
        indexes = []
        for i in before_indexes:
            now = after_i.get((i["schema"], i["index"]), i)
            indexes.append({"schema": i["schema"], "index": i["index"], "table": i["table"], "method": i["method"],
                            "size_before": i["size"], "size_after": now["size"], "valid": now["valid"],
                            "bloat_percent_before": i["bloat_percent"], "bloat_percent_after": now["bloat_percent"]})
        before = sum(t["size"] for t in before_tables) + sum(i["size"] for i in before_indexes)
        after = sum(t["size_after"] for t in tables) + sum(i["size_after"] for i in indexes)
        return {"tables": tables, "indexes": indexes,
                "totals": {"tables": len(tables), "indexes": len(indexes), "size_before": before, "size_after": after,
                           "freed_bytes": max(0, before - after),
                           "dead_tuples_before": sum(t["dead_tuples_before"] for t in tables),
                           "dead_tuples_after": sum(t["dead_tuples_after"] for t in tables)}}

    @staticmethod
    def long_queries(conn, seconds):
        rows = ddl.execute(conn, LONG_QUERIES, "cannot read pg_stat_activity", (seconds,))
        return [{"pid": pid, "user": user, "database": db, "state": state, "seconds": round(age or 0, 1), "query": query,
                 "waiting_on": wait, "application": app} for pid, user, db, state, age, query, wait, app in rows]

    def terminate(self, conn):
        """pg_terminate_backend of client queries running longer than terminate_after (in check mode: the list)."""
        found = [q for q in self.long_queries(conn, self.params["terminate_after"]) if q["state"] == "active"]
        if self.module.check_mode:
            return [dict(q, terminated=False) for q in found]
        done = []
        for query in found:
            ok = ddl.execute(conn, "SELECT pg_terminate_backend(%s)", "cannot terminate %d" % query["pid"],
                             (query["pid"],))[0][0]
            done.append(dict(query, terminated=bool(ok)))
        return done

    def slow_queries(self, conn):
        """The top queries by total time from pg_stat_statements, when it is installed in this database."""
        if not self.params["slow_queries"]:
            return None
        installed = ddl.execute(conn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'",
                                "cannot list extensions")
        if not installed:
            return None
        columns = ddl.execute(conn, "SELECT attname FROM pg_attribute WHERE attrelid = 'pg_stat_statements'::regclass",
                              "cannot read pg_stat_statements")
        modern = ("total_exec_time",) in columns  # PostgreSQL 13 renamed the columns
        total, mean = ("total_exec_time", "mean_exec_time") if modern else ("total_time", "mean_time")
        try:
            rows = ddl.execute(conn, "SELECT calls, round(%s::numeric, 1)::float8, round(%s::numeric, 2)::float8, rows, "
                                     "left(query, 500) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database "
                                     "WHERE datname = current_database()) ORDER BY %s DESC LIMIT %%s" % (total, mean, total),
                               "cannot read pg_stat_statements", (self.params["slow_queries"],))
        except OpsError as exc:  # installed but not preloaded (shared_preload_libraries)
            return {"error": exc.message}
        return [{"calls": calls, "total_ms": total_ms, "mean_ms": mean_ms, "rows": count, "query": query}
                for calls, total_ms, mean_ms, count, query in rows]
