"""A task killed (SIGKILL) while psql loads an in_place restore: nothing of the cut input is committed.

psql --single-transaction commits at the end of its input, and a killed task's pipe ends the input early; the
module now sends BEGIN and COMMIT itself, so a cut input leaves the transaction open and the server rolls it back.
"""

from __future__ import annotations

import os
import signal
import time

from pg_helpers import backup_task, drop_database, make_database, quoted, restore_task, sql
from proc_helpers import parent_of, wait_for_process


def test_sigkill_during_an_in_place_plain_restore_commits_nothing(ansible, pg, tmp_path):
    source = make_database(pg, "cut")
    target = source + "_copy"
    sql(pg, source, "CREATE TABLE filler AS SELECT i, md5(i::text) || md5((i * 7)::text) AS t FROM generate_series(1, 1500000) i")
    store = {"dir": str(tmp_path / "store")}
    made = ansible.play(backup_task(pg, source, store, format="plain", compression="none"))
    assert made.rc == 0, made
    try:
        finish = ansible.start(restore_task(pg, target, "latest", backup_db=source, store=store, mode="in_place"))
        loader = wait_for_process(lambda argv: argv[0].endswith(b"psql") and any(target.encode() in a for a in argv))
        deadline = time.monotonic() + 60
        while not sql(pg, "postgres", "SELECT 1 FROM pg_stat_activity WHERE datname = '%s' AND query LIKE 'COPY%%'"
                      % target, fetch=True):
            assert time.monotonic() < deadline, "the load never reached its COPY"
            time.sleep(0.05)
        os.kill(parent_of(loader), signal.SIGKILL)  # the module: its pipe to psql closes mid-COPY
        finish()
        deadline = time.monotonic() + 30
        while sql(pg, "postgres", "SELECT 1 FROM pg_stat_activity WHERE datname = '%s'" % target, fetch=True):
            assert time.monotonic() < deadline, "psql never ended"
            time.sleep(0.1)
        tables = sql(pg, target, "SELECT count(*) FROM pg_class WHERE relname = 'filler' AND relkind = 'r'", fetch=True)
        assert tables == [(0,)]  # rolled back: not a table with part of the rows
    finally:
        sql(pg, "postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % quoted(target))
        drop_database(pg, source)
