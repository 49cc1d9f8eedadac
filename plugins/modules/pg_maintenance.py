#!/usr/bin/python
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_maintenance
short_description: Run PostgreSQL maintenance by level and report bloat, dead tuples, slow and long-running queries
version_added: 0.2.0
description:
  - V(report) runs nothing and returns the figures below (for a maintenance window's checklist, or a weekly report).
  - Levels as the runbooks keep them. V(light) runs C(VACUUM (ANALYZE, INDEX_CLEANUP ON)) of every table (index
    cleanup forced, so the dead items PostgreSQL 14+ may leave when it skips the indexes are removed too). V(standard) adds
    C(REINDEX INDEX CONCURRENTLY) of the indexes whose estimated bloat is at or over O(bloat_threshold) (and of
    invalid indexes), which keeps the table readable and writable. V(heavy) adds C(VACUUM (FULL, ANALYZE)), or
    C(CLUSTER) where the table has a clustered index, of the tables over the threshold.
  - V(heavy) locks each table it rewrites against reads and writes for the whole rewrite, so it runs only with
    O(maintenance_window=true), and is refused otherwise before anything runs.
  - Reports table and index bloat (before and after), dead tuples, sizes and the bytes freed; the queries running
    longer than O(long_query_seconds); the top O(slow_queries) queries from C(pg_stat_statements) when that
    extension is installed in the database. Optionally terminates client queries running longer than
    O(terminate_after), listing each one.
  - Bloat is estimated from the catalog and the planner's statistics (the pages a relation has against the pages its
    live rows need), with no extension and no scan of the data. Run C(ANALYZE) (any level does) for good estimates.
  - Every statement waits at most O(lock_timeout) for its locks, so maintenance never queues the application's
    queries behind it for long.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.attributes
  - runbook.ops.postgres
  - runbook.ops.container
attributes:
  check_mode:
    support: full
    details: Reads the statistics and reports the statements it would run and the queries it would terminate.
  diff_mode:
    support: full
    details: The statements that run (or would run).
  idempotent:
    support: none
    details: Maintenance runs whenever it is asked for; V(light) always vacuums.
options:
  db:
    description: The database to maintain.
    type: str
    required: true
    aliases: [login_db]
  level:
    description: V(report), V(light), V(standard) or V(heavy), as described above.
    type: str
    default: light
    choices: [report, light, standard, heavy]
  maintenance_window:
    description: Say that the application is stopped or in maintenance mode; needed by O(level=heavy).
    type: bool
    default: false
  bloat_threshold:
    description: Estimated bloat, in percent of a relation's pages, at or over which it is rebuilt (standard, heavy).
    type: float
    default: 30.0
  min_size:
    description: Relations smaller than this many bytes are never rebuilt, whatever their bloat.
    type: int
    default: 8388608
  tables:
    description: Only these tables (C(schema.table) or a table name) and their indexes; all tables when empty.
    type: list
    elements: str
    default: []
  lock_timeout:
    description: Seconds each statement may wait for a lock before it fails (the statements before it stay done).
    type: int
    default: 30
  long_query_seconds:
    description: Queries running at least this long are reported in RV(long_running).
    type: float
    default: 300.0
  terminate_after:
    description:
      - Terminate (C(pg_terminate_backend)) client queries that are active and have run at least this many seconds.
        Each one is listed in RV(terminated). Not set, nothing is terminated.
    type: float
  slow_queries:
    description: How many of the top queries by total time to report from C(pg_stat_statements); 0 turns it off.
    type: int
    default: 10
seealso:
  - module: runbook.ops.pg_backup
"""

EXAMPLES = r"""
- name: Weekly standard maintenance of the app database
  runbook.ops.pg_maintenance:
    db: app
    level: standard
    terminate_after: 3600
  register: maintenance

- name: Heavy maintenance during the announced window
  runbook.ops.pg_maintenance:
    db: app
    level: heavy
    maintenance_window: true
    bloat_threshold: 40

- name: What would standard maintenance do?
  runbook.ops.pg_maintenance:
    db: app
    level: standard
  check_mode: true
"""

RETURN = r"""
level:
  description: The level that ran.
  returned: always
  type: str
statements:
  description: Each statement with why it ran, whether it ran, and its seconds (in check mode, what would run).
  returned: always
  type: list
  elements: dict
tables:
  description:
    - Per table, size_before/size_after, dead_tuples_before/dead_tuples_after, live_tuples, dead_percent_before,
      bloat_percent_before/bloat_percent_after, last_vacuum, last_analyze.
  returned: always
  type: list
  elements: dict
indexes:
  description: Per index, its table, method, size_before/size_after, valid, bloat_percent_before/bloat_percent_after.
  returned: always
  type: list
  elements: dict
totals:
  description: Tables, indexes, size_before, size_after, freed_bytes, dead_tuples_before, dead_tuples_after.
  returned: always
  type: dict
long_running:
  description: Client queries running longer than O(long_query_seconds) (pid, user, state, seconds, query).
  returned: always
  type: list
  elements: dict
terminated:
  description: The queries O(terminate_after) terminated (in check mode, would terminate), each with C(terminated).
  returned: always
  type: list
  elements: dict
slow_queries:
  description: Top queries by total time (calls, total_ms, mean_ms, rows, query); null without pg_stat_statements.
  returned: always
  type: raw
duration:
  description: Seconds the task took.
  returned: always
  type: float
"""

from ansible_collections.runbook.ops.plugins.module_utils._module import run_module
from ansible_collections.runbook.ops.plugins.module_utils._pg_maintenance import Maintenance, argspec_ex


def main():
    run_module(argspec_ex(), lambda module: Maintenance(module, module.params).run())


if __name__ == "__main__":
    main()
