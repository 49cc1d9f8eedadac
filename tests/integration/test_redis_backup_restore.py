"""runbook.ops.redis_backup and redis_restore by real ansible-playbook against real Redis servers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from argv_scan import ArgvScanner
from servers import free_port

BACKUP = "Back up Redis"
RESTORE = "Restore Redis"


def seed(server):
    """Every type, TTLs and several dbs."""
    for db in (0, 1, 3):
        conn = server.client(db=db)
        pipe = conn.pipeline()
        for i in range(300):
            pipe.set("str:%d:%d" % (db, i), "value ✓ %d" % i)
        pipe.hset("hash:%d" % db, mapping={"a": "1", "b": "Zoë", "c": "x" * 500})
        pipe.rpush("list:%d" % db, *["item%d" % i for i in range(50)])
        pipe.sadd("set:%d" % db, *["m%d" % i for i in range(40)])
        pipe.zadd("zset:%d" % db, {"p%d" % i: i * 1.5 for i in range(30)})
        pipe.xadd("stream:%d" % db, {"event": "created", "id": "1"})
        pipe.xadd("stream:%d" % db, {"event": "paid", "id": "1"})
        pipe.set("ttl:%d" % db, "expires", ex=3600)
        pipe.set("pttl:%d" % db, "soon-ish", px=900000)
        pipe.execute()


def snapshot(server):
    """{db: {key: (type, value, absolute expiry in ms or -1)}} read back type by type.

    The expiry is absolute (PEXPIRETIME) so that two snapshots read seconds apart still compare equal.
    """
    result = {}
    for db in range(16):
        conn = server.client(db=db, decode_responses=True)
        keys = sorted(conn.scan_iter(count=1000))
        if not keys:
            continue
        view = {}
        for key in keys:
            kind = conn.type(key)
            value = {"string": conn.get, "hash": conn.hgetall, "list": lambda k: conn.lrange(k, 0, -1),
                     "set": lambda k: sorted(conn.smembers(k)), "zset": lambda k: conn.zrange(k, 0, -1, withscores=True),
                     "stream": conn.xrange}[kind](key)
            view[key] = (kind, value, conn.execute_command("PEXPIRETIME", key))
        result[db] = view
    return result


def same_data(left, right):
    assert left.keys() == right.keys()
    for db in left:
        assert left[db].keys() == right[db].keys(), db
        for key, (kind, value, expiry) in left[db].items():
            other = right[db][key]
            assert (kind, value) == other[:2], key
            # a live restore sets a relative TTL read moments before: allow for that copy lag, nothing more
            assert (expiry < 0 and other[2] < 0) or abs(expiry - other[2]) <= 1500, (key, expiry, other[2])


def connection(server, user=None):
    spec = {"login_host": server.host, "login_port": server.port}
    if user:
        spec.update(login_user=user, login_password=server.acl_users[user])
    elif server.password:
        spec["login_password"] = server.password
    return spec


def task(name, module, spec):
    return "- name: %s\n  runbook.ops.%s: %s\n" % (name, module, json.dumps(spec))


def test_round_trip_of_every_type_ttl_and_db_through_password_and_acl_servers(ansible, servers, tmp_path):
    source = servers("source", password="src-redis-pw", acl_users={"backup": "acl-backup-pw"})
    seed(source)
    target = servers("target", password="tgt-redis-pw", acl_users={"restorer": "acl-restore-pw"})
    store = {"dir": str(tmp_path / "store")}
    run = ansible.play(task(BACKUP, "redis_backup", dict(connection(source, "backup"), name="cache", store=store,
                                                         method="replication", encryption={"passphrase": "rdb-pass"})))
    assert run.rc == 0, run
    backup = run.task(BACKUP)["result"]["backup"]
    assert backup["method"] == "replication" and backup["verified"] is True and backup["rdb_version"] >= 9
    assert backup["keys"] == {"0": 307, "1": 307, "3": 307}
    assert backup["path"].endswith(".rdb.zst.enc") and backup["throughput_mb_s"] is not None
    manifest = json.loads(Path(backup["manifest"]).read_text())
    assert manifest["redis_version"].startswith("7") and manifest["used_memory"] > 0 and manifest["kind"] == "redis"

    run = ansible.play(task(RESTORE, "redis_restore", dict(connection(target, "restorer"), name="cache", src="latest",
                                                           store=store, encryption={"passphrase": "rdb-pass"})),
                       diff=True)
    assert run.rc == 0, run
    restore = run.task(RESTORE)["result"]["restore"]
    assert restore["restored"] == 921 and restore["failed"] == 0 and restore["skipped"] == 0
    assert restore["per_db"]["1"]["transport"] == "stream" and restore["safety_backup"] is None
    assert restore["sample"]["mismatched"] == 0 and restore["sample"]["checked"] > 0
    assert restore["layers"] == ["aes-256-gcm", "zstd"] and restore["checksum"] == "manifest"
    same_data(snapshot(source), snapshot(target))

    # db mapping and a key pattern into a server without a password, through DUMP/RESTORE
    plain = servers("plain")
    run = ansible.play(task(RESTORE, "redis_restore", dict(connection(plain), src=backup["path"], key_pattern="str:1:*",
                                                           db_map={"1": 5}, transport="dump",
                                                           encryption={"passphrase": "rdb-pass"})))
    assert run.rc == 0, run
    restore = run.task(RESTORE)["result"]["restore"]
    assert restore["per_db"]["1"] == {"target_db": 5, "restored": 300, "skipped": 0, "failed": 0, "transport": "dump"}
    assert plain.client(db=5).get("str:1:7") == "value ✓ 7".encode() and plain.client().dbsize() == 0


def test_bgsave_method_and_skip_if_newer_than(ansible, servers, tmp_path):
    source = servers("bg", password="bg-pw")
    seed(source)
    spec = dict(connection(source), store={"dir": str(tmp_path / "store")}, skip_if_newer_than="1h", compression="gzip")
    first = ansible.play(task(BACKUP, "redis_backup", spec))
    assert first.rc == 0, first
    assert first.task(BACKUP)["result"]["backup"]["method"] == "bgsave"
    again = ansible.play(task(BACKUP, "redis_backup", spec))
    assert again.rc == 0 and again.task(BACKUP)["result"]["changed"] is False
    # a hardened server: BGSAVE renamed away, auto falls back to replication
    hardened = servers("hardened", password="h-pw", extra_config={"rename-command": "BGSAVE \"\""})
    seed(hardened)
    run = ansible.play(task(BACKUP, "redis_backup", dict(connection(hardened), name="hardened",
                                                         store={"dir": str(tmp_path / "store")})))
    assert run.rc == 0, run
    assert run.task(BACKUP)["result"]["backup"]["method"] == "replication"


def test_live_restore_never_refuses_a_reading_client_and_honours_the_existing_keys_policy(ansible, servers, tmp_path):
    source = servers("src", password="pw1")
    seed(source)
    store = {"dir": str(tmp_path / "store")}
    made = ansible.play(task(BACKUP, "redis_backup", dict(connection(source), store=store)))
    assert made.rc == 0, made
    path = made.task(BACKUP)["result"]["backup"]["path"]
    target = servers("tgt", password="pw2")
    target.client().set("str:0:1", "target's own")
    target.client().set("only-in-target", "stays")

    refused = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src=path, store=store)))
    assert refused.rc != 0 and "set flush_first: true" in refused.task(RESTORE)["result"]["msg"]
    forced = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src=path, store=store, force=True)))
    assert forced.rc != 0
    assert "already exist in the target (db0:str:0:1)" in forced.task(RESTORE)["result"]["msg"]
    assert target.client().dbsize() == 2  # nothing written

    skip = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src=path, store=store,
                                                            existing_keys="skip")))
    assert skip.rc == 0, skip
    restore = skip.task(RESTORE)["result"]["restore"]
    assert restore["skipped"] == 1 and restore["restored"] == 920
    assert restore["safety_backup"]["id"].startswith("redis_")
    assert target.client().get("str:0:1") == b"target's own"

    errors, reads = [], [0]
    done = threading.Event()

    def reader():
        conn = target.client()
        while not done.is_set():
            try:
                conn.get("only-in-target")
                reads[0] += 1
            except redis.RedisError as exc:
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        replace = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src=path, store=store, replace=True,
                                                                   safety_backup=False)))
    finally:
        done.set()
        thread.join()
    assert replace.rc == 0, replace
    assert errors == [] and reads[0] > 100
    assert target.client().get("str:0:1") == b"value \xe2\x9c\x93 1"
    assert target.client().get("only-in-target") == b"stays"

    flushed = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src=path, flush_first=True,
                                                               safety_backup=False)))
    assert flushed.rc == 0, flushed
    same_data(snapshot(source), snapshot(target))


def damage(path, how):
    data = bytearray(Path(path).read_bytes())
    if how == "changed byte":
        data[len(data) // 2] ^= 0x01
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["changed byte", "wrong key", "not an rdb", "truncated rdb", "redis down",
                                  "pattern matches nothing"])
def test_bad_input_gets_a_clear_message_and_the_target_is_unchanged(ansible, servers, tmp_path, case):
    source = servers("src", password="pw")
    seed(source)
    store = {"dir": str(tmp_path / "store")}
    encryption = {"passphrase": "right"}
    made = ansible.play(task(BACKUP, "redis_backup", dict(connection(source), store=store, encryption=encryption)))
    assert made.rc == 0, made
    path = made.task(BACKUP)["result"]["backup"]["path"]
    target = servers("tgt", password="pw2")
    target.client().set("keep", "me")
    spec = dict(connection(target), src=path, store=store, encryption=encryption, flush_first=True)
    expected = {"changed byte": "checksum mismatch", "wrong key": "wrong encryption key", "not an rdb": "not a Redis RDB",
                "truncated rdb": "truncated", "redis down": "cannot reach Redis",
                "pattern matches nothing": "matches no key"}[case]
    if case == "changed byte":
        damage(path, case)
    elif case == "wrong key":
        spec["encryption"] = {"passphrase": "not-the-right-one"}
    elif case == "not an rdb":
        spec["src"] = str(tmp_path / "notes.txt")
        Path(spec["src"]).write_text("hello, this is not Redis data\n" * 50)
    elif case == "truncated rdb":
        raw = tmp_path / "raw.rdb"
        subprocess.run(["redis-cli", "-p", str(source.port), "--rdb", str(raw)], env=dict(os.environ, REDISCLI_AUTH="pw"),
                       check=True, capture_output=True)
        raw.write_bytes(raw.read_bytes()[:-300])
        spec.update(src=str(raw), encryption=None)
        del spec["encryption"]
    elif case == "redis down":
        spec["login_port"] = free_port()
    elif case == "pattern matches nothing":
        spec["key_pattern"] = "nothing:*"
    for extra in ({"validate_only": True}, {}):
        if case == "redis down" and extra:
            continue  # validate_only does not need the target
        run = ansible.play(task(RESTORE, "redis_restore", dict(spec, **extra)))
        if case == "pattern matches nothing" and extra:
            assert run.rc == 0, run
            continue
        assert run.rc != 0, (extra, run)
        assert expected in run.task(RESTORE)["result"]["msg"], run.task(RESTORE)["result"]["msg"]
    assert target.client().dbsize() == 1 and target.client().get("keep") == b"me"


def test_file_mode_with_aof_on_serves_the_restored_data_after_restart_and_aof_is_back(ansible, servers, tmp_path):
    source = servers("src", password="pw")
    seed(source)
    store = {"dir": str(tmp_path / "store")}
    made = ansible.play(task(BACKUP, "redis_backup", dict(connection(source), store=store)))
    assert made.rc == 0, made
    backup = made.task(BACKUP)["result"]["backup"]

    data_dir = tmp_path / "aof-server"
    data_dir.mkdir()
    port = free_port()
    conf = data_dir / "redis.conf"
    conf.write_text("port %d\nbind 127.0.0.1\ndir %s\ndaemonize yes\npidfile %s/redis.pid\nlogfile %s/redis.log\n"
                    "appendonly yes\nrequirepass aof-pw\n" % (port, data_dir, data_dir, data_dir))
    os.chmod(conf, 0o600)
    start = [shutil.which("redis-server"), str(conf)]
    stop = ["sh", "-c", "kill $(cat %s/redis.pid); while kill -0 $(cat %s/redis.pid) 2>/dev/null; do sleep 0.05; done"
            % (data_dir, data_dir)]
    subprocess.run(start, check=True)
    try:
        target = redis.Redis(port=port, password="aof-pw")
        for _attempt in range(100):
            try:
                target.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        target.set("old", "data")
        spec = {"login_host": "127.0.0.1", "login_port": port, "login_password": "aof-pw", "src": backup["path"],
                "mode": "file", "stop_command": stop, "start_command": start, "store": store}
        run = ansible.play(task(RESTORE, "redis_restore", spec))
        assert run.rc == 0, run
        restore = run.task(RESTORE)["result"]["restore"]
        assert restore["aof"] is True and restore["target_keys_after"] == backup["keys"]
        assert restore["safety_backup"]["id"] and len(restore["previous_files"]) == 2
        assert target.info("persistence")["aof_enabled"] == 1
        assert "appendonly yes" in conf.read_text() and stat_mode(conf) == 0o600
        subprocess.run(stop, check=True)
        subprocess.run(start, check=True)
        for _attempt in range(100):
            try:
                if not target.info("persistence")["loading"]:
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        assert target.get("old") is None
        assert target.get("str:0:5") == "value ✓ 5".encode()
        assert sum(v["keys"] for k, v in target.info("keyspace").items()) == 921
    finally:
        subprocess.run(stop, check=False)


def stat_mode(path):
    return os.stat(path).st_mode & 0o777


def test_no_secret_in_argv_result_or_verbose_output_and_files_are_private(ansible, servers, tmp_path):
    source = servers("src", password="argv-redis-password")
    seed(source)
    target = servers("tgt", password="argv-target-password")
    secrets = ["argv-redis-password", "argv-target-password", "argv-enc-passphrase"]
    store = {"dir": str(tmp_path / "store")}
    with ArgvScanner(secrets, [b"redis"]) as scan:
        made = ansible.play(task(BACKUP, "redis_backup", dict(connection(source), store=store, method="replication",
                                                              encryption={"passphrase": secrets[2]})), verbosity=3)
        restored = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src="latest", store=store,
                                                                    encryption={"passphrase": secrets[2]})), verbosity=3)
    assert scan.leaks == []
    assert made.rc == 0 and restored.rc == 0, (made, restored)
    assert any(b"--rdb" in c for c in scan.seen)
    for run in (made, restored):
        for secret in secrets:
            assert secret not in run.stdout and secret not in run.stderr and secret not in json.dumps(run.results)
    for produced in (tmp_path / "store").rglob("*"):
        if produced.is_file():
            assert stat_mode(produced) == 0o600, produced


def test_a_live_restore_that_fails_half_way_reports_what_was_written_and_keeps_a_safety_backup(ansible, servers, tmp_path):
    source = servers("src", password="pw")
    big = source.client()
    pipe = big.pipeline()
    for i in range(3000):
        pipe.set("big:%05d" % i, os.urandom(1000).hex())
    pipe.execute()
    store = {"dir": str(tmp_path / "store")}
    made = ansible.play(task(BACKUP, "redis_backup", dict(connection(source), store=store)))
    assert made.rc == 0, made
    target = servers("small", password="pw2", extra_config={"maxmemory-policy": "noeviction"})
    target.client().set("existing", "value")
    squeezed = []

    def squeeze_memory_half_way():
        """Another client takes the memory away once the restore is under way: it runs out half way."""
        conn = target.client()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not squeezed:
            if conn.dbsize() > 300:
                conn.config_set("maxmemory", "3mb")
                squeezed.append(conn.dbsize())
            time.sleep(0.001)

    squeezer = threading.Thread(target=squeeze_memory_half_way)
    squeezer.start()
    run = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src="latest", store=store, force=True,
                                                           batch_size=200, scratch_servers=1)))
    squeezer.join()
    assert squeezed, "the restore never got under way"
    assert run.rc != 0
    result = run.task(RESTORE)["result"]
    assert "OOM" in result["msg"] and "the restore stopped after" in result["msg"]
    assert result["changed"] is True  # issue 8 A3: a failure after any write says so
    report = result["restore"]
    written = report["per_db"]["0"]["restored"]
    assert 0 < written < 3000
    held = target.client().dbsize()
    assert report["target_keys_after"] == {"0": held} and written + 1 <= held <= written + 1 + 200
    safety = report["safety_backup"]
    assert safety["id"] and safety["id"] in result["msg"]
