"""Issue 8's siblings: what a second hostile pass found after the first fixes, one regression test per class.

Numbers refer to that pass's report (in the closing note): #2 shell escapes in SQL backups, #3 manifests that point
elsewhere, #4/#5 a swap held by a session that does not die (and a SIGKILL during it), #6 two backups in one second,
#7 a target that freezes during a live restore, #8 two dbs into one, #9 template databases, #10 endless HTTP bodies,
#11 a stuck snapshot child, #12 manifests from the future, #13 FIFOs as sources, #14 SIGINT, #15 passwords in URLs
that do not parse, #16 names with dots.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psycopg2

from pg_helpers import BACKUP, RESTORE, backup_task, databases_like, make_database, quoted, restore_task, sql, sql_args
from proc_helpers import module_process, parent_of, wait_for_process
from test_health_probe import PROBE, probe_task
from test_redis_backup_restore import BACKUP as REDIS_BACKUP, RESTORE as REDIS_RESTORE, connection, task


def backup(ansible, pg, db, store, **options):
    run = ansible.play(backup_task(pg, db, store, **options))
    assert run.rc == 0, run
    return run.task(BACKUP)["result"]["backup"]


def test_2_psql_meta_commands_in_a_sql_backup_never_run_on_the_host(ansible, pg, tmp_path, names):
    source = make_database(pg, "sql")
    names.append(source)
    plain = backup(ansible, pg, source, {"dir": str(tmp_path / "store")}, format="plain", compression="none")
    text = Path(plain["path"]).read_text()
    pwned = tmp_path / "PWNED"
    header_end = text.index("SET statement_timeout")
    for name, evil in (("line", text[:header_end] + "\\! id > %s\n" % pwned + text[header_end:]),
                       ("mid-line", text.replace("SET statement_timeout = 0;",
                                                 "SET statement_timeout = 0; \\! id > %s" % pwned, 1))):
        path = tmp_path / ("evil-%s.sql" % name)
        path.write_text(evil)
        target = "%s_%s" % (source, name.replace("-", ""))
        names.append(target)
        validate = ansible.play(restore_task(pg, target, str(path), validate_only=True))
        run = ansible.play(restore_task(pg, target, str(path), safety_backup=False))
        assert run.rc != 0, run
        if name == "line":
            assert validate.rc != 0 and "meta-command" in validate.task(RESTORE)["result"]["msg"]
            assert "meta-command '\\\\! id" in run.task(RESTORE)["result"]["msg"]
        else:  # not at the start of a line: psql itself refuses it in restricted mode
            assert "restricted" in run.task(RESTORE)["result"]["msg"]
        assert not pwned.exists()
        assert sql_args(pg, "postgres", "SELECT 1 FROM pg_database WHERE datname = %s", (target,)) == []


def test_3_manifests_never_point_retention_or_restores_outside_their_own_directory(ansible, pg, database, tmp_path):
    import shutil

    store_a = tmp_path / "a"
    first = backup(ansible, pg, database, {"dir": str(store_a)})
    second = backup(ansible, pg, database, {"dir": str(store_a)})
    # a copied store: its retention deletes only its own files
    store_b = tmp_path / "b"
    shutil.copytree(store_a, store_b)
    backup(ansible, pg, database, {"dir": str(store_b)}, retention={"keep_last": 1})
    assert Path(first["path"]).exists() and Path(second["path"]).exists()
    # an edited manifest naming files elsewhere is skipped, and nothing outside is deleted
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    manifest = json.loads(Path(first["manifest"]).read_text())
    Path(first["manifest"]).write_text(json.dumps(dict(manifest, file="../../../../../victim.txt",
                                                       extra_files=["../victim.txt"])))
    run = ansible.play(backup_task(pg, database, {"dir": str(store_a)}, retention={"keep_last": 1}))
    assert run.rc == 0, run
    assert victim.read_text() == "precious" and "names files outside its own directory" in run.output
    # a moved store: latest finds the data beside its manifest, not where it once was
    store_c = tmp_path / "c"
    store_b.rename(store_c)
    run = ansible.play(restore_task(pg, database, "latest", store={"dir": str(store_c)}, validate_only=True))
    assert run.rc == 0, run
    assert run.task(RESTORE)["result"]["restore"]["path"].startswith(str(store_c))


def stopped_session(pg, db):
    """A session on ``db`` whose backend is SIGSTOPped: pg_terminate_backend cannot end it."""
    conn = psycopg2.connect(**pg.conninfo(db))
    pid = conn.info.backend_pid
    os.kill(pid, signal.SIGSTOP)
    return conn, pid


def test_4_5_a_session_that_will_not_die_is_named_and_a_sigkill_during_the_swap_is_repaired(ansible, pg, tmp_path, names):
    db = make_database(pg, "held")
    names.append(db)
    store = {"dir": str(tmp_path / "store")}
    made = backup(ansible, pg, db, store)
    conn, pid = stopped_session(pg, db)
    try:
        finish = ansible.start(restore_task(pg, db, made["path"], store=store, force=True, safety_backup=False,
                                            terminate_timeout=2))
        # long after the swap gave up: the terminate signal lands and it dies, so the clean-up's DROP can finish
        threading.Timer(15, os.kill, (pid, signal.SIGCONT)).start()
        run = finish()
        assert run.rc != 0
        msg = run.task(RESTORE)["result"]["msg"]
        assert "do not end after pg_terminate_backend: pid %d" % pid in msg and "untouched" in msg
        assert sql_args(pg, "postgres", "SELECT datallowconn FROM pg_database WHERE datname = %s", (db,)) == [(True,)]
    finally:
        conn.close()
    # SIGKILL while the target is closed for the swap: the next run gives it back
    conn, pid = stopped_session(pg, db)
    try:
        finish = ansible.start(restore_task(pg, db, made["path"], store=store, force=True, safety_backup=False,
                                            terminate_timeout=60))
        deadline = time.monotonic() + 60
        while sql_args(pg, "postgres", "SELECT datallowconn FROM pg_database WHERE datname = %s", (db,)) == [(True,)]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(module_process("pg_restore", ansible), signal.SIGKILL)
        finish()
    finally:
        os.kill(pid, signal.SIGCONT)
        conn.close()
    assert sql_args(pg, "postgres", "SELECT datallowconn FROM pg_database WHERE datname = %s", (db,)) == [(False,)]
    run = ansible.play(restore_task(pg, db, made["path"], store=store, force=True, safety_backup=False,
                                    keep_previous=False))
    assert run.rc == 0, run
    assert "connections are allowed again" in run.output
    assert sql(pg, db, "SELECT count(*) FROM sales.customers", fetch=True) == [(500,)]


def test_6_two_backups_in_one_second_keep_two_artifacts(ansible, pg, database, tmp_path):
    store = {"dir": str(tmp_path / "store")}
    tasks = "".join(backup_task(pg, database, store, format=fmt).replace(BACKUP, "%s %d" % (BACKUP, i))
                    for i, fmt in enumerate(["custom", "plain", "custom"]))
    run = ansible.play(tasks)
    assert run.rc == 0, run
    ids = [run.task("%s %d" % (BACKUP, i))["result"]["backup"]["id"] for i in range(3)]
    assert len(set(ids)) == 3
    manifests = sorted(p.name for p in (tmp_path / "store").rglob("*.manifest.json"))
    assert len(manifests) == 3
    run = ansible.play(restore_task(pg, database, "latest", store=store, validate_only=True))
    assert run.rc == 0 and run.task(RESTORE)["result"]["restore"]["id"] == ids[2]


def test_7_8_a_target_that_freezes_mid_copy_and_two_dbs_into_one(ansible, servers, tmp_path):
    source = servers("src", password="pw")
    conn = source.client()
    for db in (0, 1):
        pipe = source.client(db=db).pipeline()
        for i in range(100000 if db == 0 else 10):
            pipe.set("k:%d" % i, "v" * 100)
        pipe.execute()
    made = ansible.play(task(REDIS_BACKUP, "redis_backup", dict(connection(source), store={"dir": str(tmp_path / "s")})))
    assert made.rc == 0, made
    path = made.task(REDIS_BACKUP)["result"]["backup"]["path"]
    target = servers("tgt", password="pw2")
    for db_map, words in (({"0": 5, "1": 5}, "would both be restored into db 5"), ({"00": 7, "0": 6}, "twice")):
        run = ansible.play(task(REDIS_RESTORE, "redis_restore", dict(connection(target), src=path, db_map=db_map)))
        assert run.rc != 0 and words in run.task(REDIS_RESTORE)["result"]["msg"]
    assert target.client().dbsize() == 0
    target.client().set("before", "x")
    finish = ansible.start(task(REDIS_RESTORE, "redis_restore", dict(connection(target), src=path, connect_timeout=2,
                                                                     existing_keys="replace", batch_size=500,
                                                                     store={"dir": str(tmp_path / "s")})))
    watcher = target.client()
    deadline = time.monotonic() + 60
    while watcher.dbsize() < 2000:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.kill(target.proc.pid, signal.SIGSTOP)
    try:
        run = finish()
    finally:
        os.kill(target.proc.pid, signal.SIGCONT)
    assert run.rc != 0
    result = run.task(REDIS_RESTORE)["result"]
    assert result["changed"] is True and "no answer within 2" in result["msg"] and "unexpected" not in result["msg"]
    assert result["restore"]["safety_backup"]["id"] in result["msg"]
    del conn


def test_9_template_databases_and_the_maintenance_database_are_never_replaced(ansible, pg, database, tmp_path):
    made = backup(ansible, pg, database, {"dir": str(tmp_path / "store")})
    for db, words in (("template1", "is a template database"), ("template0", "is a template database"),
                      ("postgres", "is the maintenance database")):
        run = ansible.play(restore_task(pg, db, made["path"], force=True, safety_backup=False))
        assert run.rc != 0 and words in run.task(RESTORE)["result"]["msg"], run
    assert sql(pg, "postgres", "SELECT datistemplate FROM pg_database WHERE datname = 'template1'", fetch=True) == [(True,)]


def test_10_15_an_endless_body_and_a_password_in_a_url_that_does_not_parse(ansible):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def endless():
        while not stop.is_set():
            try:
                server.settimeout(0.5)
                client, _addr = server.accept()
            except OSError:
                continue
            client.recv(4096)
            try:
                client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                while not stop.is_set():
                    client.sendall(b"x" * 65536)
            except OSError:
                pass
            client.close()

    threading.Thread(target=endless, daemon=True).start()
    try:
        run = ansible.play(probe_task([{"name": "endless", "type": "http", "timeout": 20,
                                        "url": "http://127.0.0.1:%d/" % server.getsockname()[1]}]))
    finally:
        stop.set()
        server.close()
    result = run.task(PROBE)["result"]
    assert result["results"][0]["status"] == "unhealthy" and "larger than 4 MiB" in result["results"][0]["error"]
    assert result["results"][0]["latency_ms"] < 15000
    run = ansible.play(probe_task([{"type": "http", "url": "http://admin:Leaky-Pass-777@[::1/health"}]), verbosity=3)
    assert run.rc != 0 and "Leaky-Pass-777" not in run.output + json.dumps(run.results)


def test_11_a_stuck_snapshot_child_is_bounded_by_bgsave_timeout(ansible, servers, tmp_path):
    source = servers("stuck", password="pw", extra_config={"repl-diskless-sync-delay": "0"})
    pipe = source.client().pipeline()
    for i in range(2000):
        pipe.set("k:%d" % i, "v" * 100)
    pipe.execute()
    source.client().config_set("rdb-key-save-delay", "100000")  # the snapshot child trickles: then it is stopped
    store = {"dir": str(tmp_path / "store")}
    spec = dict(connection(source), store=store, method="replication", idle_timeout=1, bgsave_timeout=4)
    finish = ansible.start(task(REDIS_BACKUP, "redis_backup", spec))
    child = wait_for_process(lambda argv: b"redis-rdb-to-slaves" in argv[0])
    os.kill(child, signal.SIGSTOP)
    try:
        started = time.monotonic()
        run = finish(timeout=120)
        took = time.monotonic() - started
    finally:
        os.kill(child, signal.SIGCONT)
    assert run.rc != 0 and "the snapshot is not coming" in run.task(REDIS_BACKUP)["result"]["msg"]
    assert took < 30 and not list(Path(store["dir"]).rglob("*.partial"))


def test_12_13_16_future_manifests_fifos_and_names_with_dots(ansible, pg, tmp_path, names):
    db = "my.db.%d" % os.getpid()
    sql(pg, "postgres", "CREATE DATABASE %s" % quoted(db))
    names.append(db)
    sql(pg, db, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
    store = {"dir": str(tmp_path / "store")}
    made = backup(ansible, pg, db, store)
    run = ansible.play(restore_task(pg, db, made["path"], validate_only=True))
    assert run.rc == 0 and run.task(RESTORE)["result"]["restore"]["checksum"] == "manifest"
    assert run.task(RESTORE)["result"]["restore"]["id"] == made["id"]
    manifest = json.loads(Path(made["manifest"]).read_text())
    Path(made["manifest"]).write_text(json.dumps(dict(manifest, finished="2031-01-01T00:00:00.000000Z")))
    run = ansible.play(backup_task(pg, db, store, skip_if_newer_than="6h"))
    assert run.rc == 0 and run.task(BACKUP)["result"]["changed"] is True and "in the future" in run.output
    fifo = tmp_path / "backup.fifo"
    os.mkfifo(fifo)
    run = ansible.play(restore_task(pg, db, str(fifo), validate_only=True))
    assert run.rc != 0 and "is not a regular file" in run.task(RESTORE)["result"]["msg"]


def test_14_sigint_is_cleaned_up_like_sigterm(ansible, pg, tmp_path, names):
    big = make_database(pg, "int")
    names.append(big)
    sql(pg, big, "CREATE TABLE filler AS SELECT i, md5(i::text) AS t FROM generate_series(1, 1000000) i")
    store = {"dir": str(tmp_path / "store")}
    made = backup(ansible, pg, big, store, compression="gzip")
    finish = ansible.start(restore_task(pg, big, made["path"], store=store, force=True))
    scratch = (big + "_restore_").encode()
    tool = wait_for_process(lambda argv: argv[0].endswith(b"pg_restore") and any(scratch in a for a in argv))
    time.sleep(0.3)
    os.kill(parent_of(tool), signal.SIGINT)  # this test's module: another test's may run beside it
    run = finish()
    result = run.task(RESTORE)["result"]
    assert run.rc != 0 and "stopped by a signal" in result["msg"] and "Traceback" not in result["msg"]
    assert result["changed"] is True and result["restore"]["safety_backup"]["id"]
    assert databases_like(pg, big + "_restore_") == []
