"""Issue 8, Redis and store side: each class of failure with a regression test against real servers.

A3 checks before the first write, A4 key_pattern with flush_first, A5 memory, A6 replicas, A9 a source that
freezes mid-stream, A11 endpoints that accept and never answer, A18 a missing password.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from hostile import SilentServer
from pg_helpers import BACKUP as PG_BACKUP, backup_task
from proc_helpers import wait_for_process
from servers import free_port
from test_redis_backup_restore import BACKUP, RESTORE, connection, seed, task


def store_files(store):
    root = Path(store["dir"])
    return sorted(p.name for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts) if root.exists() else []


def backup(ansible, server, store, **options):
    run = ansible.play(task(BACKUP, "redis_backup", dict(connection(server), store=store, **options)))
    assert run.rc == 0, run
    return run.task(BACKUP)["result"]["backup"]


def test_a3_a_db_map_to_a_missing_db_is_refused_before_the_flush(ansible, servers, tmp_path):
    source = servers("src", password="pw")
    seed(source)
    made = backup(ansible, source, {"dir": str(tmp_path / "backups")})
    target = servers("tgt", password="pw2")
    target.client(db=1).set("live", "data")
    store = {"dir": str(tmp_path / "store")}
    for db_map in ({"0": 20}, {"3": 16}):
        run = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src=made["path"], store=store,
                                                               flush_first=True, db_map=db_map)))
        assert run.rc != 0
        result = run.task(RESTORE)["result"]
        assert "the target has no db" in result["msg"] and "nothing was changed" in result["msg"]
        assert result["changed"] is False
    assert target.client(db=1).get("live") == b"data" and store_files(store) == []


def test_a4_flush_first_with_key_pattern_removes_only_matching_keys(ansible, servers, tmp_path):
    source = servers("src", password="pw")
    seed(source)
    made = backup(ansible, source, {"dir": str(tmp_path / "backups")})
    target = servers("tgt", password="pw2")
    conn = target.client()
    conn.set("str:0:1", "old value")
    conn.set("str:0:stale", "stale, matches the pattern")
    conn.set("session:42", "must survive")
    run = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src=made["path"], flush_first=True,
                                                           key_pattern="str:*", safety_backup=False)))
    assert run.rc == 0, run
    restore = run.task(RESTORE)["result"]["restore"]
    assert restore["flushed"]["0"] == 2 and restore["restored"] == 900
    assert conn.get("session:42") == b"must survive" and conn.get("str:0:stale") is None
    assert conn.get("str:0:1") == "value ✓ 1".encode() and conn.exists("hash:0") == 0


def test_a5_a_target_without_enough_memory_is_refused_with_the_numbers(ansible, servers, tmp_path):
    source = servers("src", password="pw")
    conn = source.client()
    pipe = conn.pipeline()
    for i in range(4000):
        pipe.set("big:%05d" % i, os.urandom(500).hex())
    pipe.execute()
    made = backup(ansible, source, {"dir": str(tmp_path / "backups")})
    store = {"dir": str(tmp_path / "store")}
    for policy, words in (("noeviction", "writes would fail half way (OOM)"), ("allkeys-lru", "would evict keys")):
        target = servers("small-" + policy, password="pw2", extra_config={"maxmemory": "3mb", "maxmemory-policy": policy})
        target.client().set("existing", "value")
        for mode in ("live", "file"):
            spec = dict(connection(target), src=made["path"], store=store, force=True, mode=mode)
            if mode == "file":
                spec.update(stop_command=["false"], start_command=["false"])
            run = ansible.play(task(RESTORE, "redis_restore", spec))
            assert run.rc != 0
            msg = run.task(RESTORE)["result"]["msg"]
            assert "the backup needs about" in msg and "maxmemory 3145728" in msg and words in msg, msg
        assert target.client().dbsize() == 1
    assert store_files(store) == []


def test_a6_a_read_only_replica_is_refused_before_anything_is_written(ansible, servers, tmp_path):
    source = servers("src", password="pw")
    seed(source)
    made = backup(ansible, source, {"dir": str(tmp_path / "backups")})
    primary = servers("primary", password="pw2")
    replica = servers("replica", password="pw2", extra_config={"replicaof": "127.0.0.1 %d" % primary.port,
                                                               "masterauth": "pw2"})
    store = {"dir": str(tmp_path / "store")}
    for mode in ("live", "file"):
        spec = dict(connection(replica), src=made["path"], store=store, force=True, mode=mode)
        if mode == "file":
            spec["service"] = "redis-server"
        run = ansible.play(task(RESTORE, "redis_restore", spec))
        assert run.rc != 0
        msg = run.task(RESTORE)["result"]["msg"]
        assert "is a read-only replica of 127.0.0.1:%d" % primary.port in msg and "restore must go to the master" in msg
    assert store_files(store) == []


def test_a9_a_source_that_freezes_mid_stream_fails_in_time_and_leaves_nothing(ansible, servers, tmp_path):
    source = servers("frozen", password="pw", extra_config={"repl-diskless-sync-delay": "0"})
    conn = source.client()
    pipe = conn.pipeline()
    for i in range(3000):
        pipe.set("k:%d" % i, "v" * 200)
    pipe.execute()
    conn.config_set("rdb-key-save-delay", "2000")  # the snapshot trickles out for ~6 s
    store = {"dir": str(tmp_path / "store")}
    spec = dict(connection(source), store=store, method="replication", idle_timeout=2, connect_timeout=1)
    finish = ansible.start(task(BACKUP, "redis_backup", spec))
    port = str(source.port).encode()  # this test's own redis-cli, not one of a test running beside it
    wait_for_process(lambda argv: argv[0].endswith(b"redis-cli") and b"--rdb" in argv and port in argv)
    time.sleep(1)  # the snapshot is streaming
    os.kill(source.proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        run = finish(timeout=120)
        waited = time.monotonic() - stopped
    finally:
        os.kill(source.proc.pid, signal.SIGCONT)
    assert run.rc != 0
    msg = run.task(BACKUP)["result"]["msg"]
    assert "sent nothing for 2s: the server stopped answering" in msg and "no backup was kept" in msg
    assert waited < 30, "the frozen source held the backup for %.0f s" % waited
    assert not [p for p in Path(store["dir"]).rglob("*") if p.is_file() and ".locks" not in p.parts]


def test_a11_endpoints_that_accept_and_never_answer_fail_within_their_timeouts(ansible, pg, database, tmp_path):
    silent = SilentServer()
    try:
        for module, spec in (("redis_backup", {"store": {"dir": str(tmp_path / "r")}}),
                             ("redis_restore", {"src": str(tmp_path / "none.rdb")})):
            started = time.monotonic()
            run = ansible.play(task("Try", module, dict(spec, login_host="127.0.0.1", login_port=silent.port,
                                                        connect_timeout=1)))
            took = time.monotonic() - started
            assert run.rc != 0
            assert "no answer within 1" in run.task("Try")["result"]["msg"]
            assert took < 25, "%s took %.0f s against a silent Redis" % (module, took)
        store = {"dir": str(tmp_path / "store"), "s3": {"bucket": "b", "endpoint_url": "http://127.0.0.1:%d" % silent.port,
                                                        "access_key": "silent-access-key", "secret_key": "silent-secret-key", "region": "us-east-1",
                                                        "read_timeout": 1, "connect_timeout": 1, "max_attempts": 1}}
        started = time.monotonic()
        run = ansible.play(backup_task(pg, database, store))
        took = time.monotonic() - started
        assert run.rc != 0
        msg = run.task(PG_BACKUP)["result"]["msg"]
        assert "failed: Read timeout on endpoint URL" in msg and "The local copy is kept" in msg, msg
        assert took < 30, "pg_backup took %.0f s against a silent S3 endpoint" % took
        assert list(Path(store["dir"]).rglob("*.dump.zst")), "the local copy is kept for a later upload"
    finally:
        silent.stop()


def test_a18_a_missing_password_is_named_as_such(ansible, servers, tmp_path):
    server = servers("locked", password="pw")
    for module, spec in (("redis_backup", {"store": {"dir": str(tmp_path / "s")}}),
                         ("redis_restore", {"src": str(tmp_path / "x.rdb")})):
        run = ansible.play(task("Try", module, dict(spec, login_host=server.host, login_port=server.port)))
        assert run.rc != 0
        msg = run.task("Try")["result"]["msg"]
        assert "the server needs a password: give login_password" in msg and "HELLO" not in msg


def test_file_mode_keeps_a_non_root_server_startable_and_rolls_back_what_it_placed(ansible, servers, tmp_path):
    """Hostile tester #1: the config came back root-owned (Redis could not read it) and a rollback left the
    restored RDB behind when the server had only an AOF."""
    source = servers("src", password="pw")
    seed(source)
    store = {"dir": str(tmp_path / "store")}
    backup = ansible.play(task(BACKUP, "redis_backup", dict(connection(source), store=store)))
    assert backup.rc == 0, backup
    path = backup.task(BACKUP)["result"]["backup"]["path"]
    data_dir = Path(tempfile.mkdtemp(prefix="rbk-owned-"))  # pytest's tmp dirs are 0700: the redis user cannot enter
    os.chmod(data_dir, 0o755)
    port = free_port()
    conf = data_dir / "redis.conf"
    conf.write_text("port %d\nbind 127.0.0.1\ndir %s\ndaemonize yes\npidfile %s/redis.pid\nlogfile %s/redis.log\n"
                    "appendonly yes\nsave \"\"\nrequirepass own-pw\n" % (port, data_dir, data_dir, data_dir))
    shutil.chown(data_dir, "redis", "redis")
    shutil.chown(conf, "redis", "redis")
    os.chmod(conf, 0o640)
    start = ["runuser", "-u", "redis", "--", shutil.which("redis-server"), str(conf)]
    stop = ["sh", "-c", "kill $(cat %s/redis.pid); while kill -0 $(cat %s/redis.pid) 2>/dev/null; do sleep 0.05; done"
            % (data_dir, data_dir)]
    # a start command that fails once (after the swap), then works: the restore must roll back cleanly
    flaky = tmp_path / "start-once-failing.sh"
    flaky.write_text("#!/bin/sh\nif [ ! -e %s/failed-once ]; then touch %s/failed-once; exit 1; fi\nexec %s\n"
                     % (tmp_path, tmp_path, " ".join(start)))
    os.chmod(flaky, 0o755)
    subprocess.run(start, check=True)
    try:
        client = redis.Redis(port=port, password="own-pw")
        for _attempt in range(100):
            try:
                client.set("old", "data")
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        assert not (data_dir / "dump.rdb").exists() and (data_dir / "appendonlydir").is_dir()
        spec = {"login_host": "127.0.0.1", "login_port": port, "login_password": "own-pw", "src": path, "mode": "file",
                "stop_command": stop, "start_command": [str(flaky)], "store": store}
        run = ansible.play(task(RESTORE, "redis_restore", spec))
        assert run.rc != 0 and "the old files were put back" in run.task(RESTORE)["result"]["msg"]
        assert client.get("old") == b"data" and not (data_dir / "dump.rdb").exists()
        assert (os.stat(conf).st_uid, oct(os.stat(conf).st_mode & 0o777)) == (pwd.getpwnam("redis").pw_uid, "0o640")
        run = ansible.play(task(RESTORE, "redis_restore", dict(spec, start_command=start)))
        assert run.rc == 0, run
        assert client.get("old") is None and client.get("str:0:5") == "value ✓ 5".encode()
        assert (os.stat(conf).st_uid, oct(os.stat(conf).st_mode & 0o777)) == (pwd.getpwnam("redis").pw_uid, "0o640")
        assert os.stat(data_dir / "dump.rdb").st_uid == pwd.getpwnam("redis").pw_uid
        subprocess.run(stop, check=True)
        subprocess.run(start, check=True)  # the server starts again from what the restore left: as its own user
        for _attempt in range(100):
            try:
                if client.get("str:0:5"):
                    break
            except redis.RedisError:
                time.sleep(0.05)
        assert client.get("str:0:5") == "value ✓ 5".encode() and client.info("persistence")["aof_enabled"] == 1
    finally:
        subprocess.run(stop, check=False)
        shutil.rmtree(data_dir, ignore_errors=True)
