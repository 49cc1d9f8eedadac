"""redis_restore mode live streaming the RDB straight into the target (no scratch server), by real ansible-playbook."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from test_redis_backup_restore import BACKUP, RESTORE, connection, same_data, seed, snapshot, task


EXPIRES_MS = 8000  # longer than the backup takes, on a loaded machine too


def seed_odd_kinds(server):
    """What a plain seed lacks: a stream with a group and a pending entry, an intset, hashes and sets past their
    compact encodings, LZF-compressed and integer key names, multibyte names, a key about to expire, db 9."""
    conn = server.client()
    conn.xadd("orders", {"id": "1", "state": "paid"})
    conn.xadd("orders", {"id": "2", "state": "new"})
    conn.xgroup_create("orders", "billing", id="0")
    conn.xreadgroup("billing", "worker-1", {"orders": ">"}, count=1)
    conn.sadd("ints", *range(100))
    conn.hset("big-hash", mapping={"field-%d" % i: "v" * (i % 90) for i in range(600)})
    conn.sadd("big-set", *["member-%d" % i for i in range(600)])
    conn.zadd("big-zset", {"m%d" % i: i / 7 for i in range(300)})
    conn.rpush("big-list", *["x" * 70 for _item in range(2000)])
    conn.set("session:" + "abcabcabc" * 12, "a key name LZF compresses")
    conn.set("12345", "an integer-encoded key name")
    conn.set("-7", "a negative one")
    conn.set("clé/ключ=\"quoted\" 名前", "multibyte")
    conn.set("expires-soon", "gone by the restore", px=EXPIRES_MS)
    server.client(db=9).set("db9", "x" * 100000)


def raw_rdb(server, path):
    env = dict(os.environ, REDISCLI_AUTH=server.password or "")
    subprocess.run(["redis-cli", "-p", str(server.port), "--rdb", str(path)], env=env, check=True, capture_output=True)
    return path


def test_every_kind_streams_into_the_target_with_ttls_and_the_fallbacks_say_why(ansible, servers, tmp_path):
    source = servers("src", password="pw1")
    seed(source)
    seeded = time.monotonic()
    seed_odd_kinds(source)
    store = {"dir": str(tmp_path / "store")}
    made = ansible.play(task(BACKUP, "redis_backup", dict(connection(source), store=store)))
    assert made.rc == 0, made
    path = made.task(BACKUP)["result"]["backup"]["path"]
    assert made.task(BACKUP)["result"]["backup"]["keys"]["0"] == 307 + 11  # expires-soon is in the backup
    time.sleep(max(0.0, seeded + EXPIRES_MS / 1000 + 0.2 - time.monotonic()))  # and past its expiry now
    target = servers("tgt", password="pw2")

    run = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src=path, store=store, transport="stream")))
    assert run.rc == 0, run
    restore = run.task(RESTORE)["result"]["restore"]
    assert restore["transport"] == "stream" and restore.get("stream_fallback") is None
    assert restore["failed"] == 0 and restore["errors"] == []
    assert restore["per_db"]["0"]["expired"] == 1 and restore["per_db"]["9"]["restored"] == 1
    assert restore["sample"]["checked"] > 300 and restore["sample"]["mismatched"] == 0
    assert restore["restored"] + 1 == sum(restore["backup_keys"].values()) and restore["backup_keys"]["9"] == 1
    source.client().delete("expires-soon")
    same_data(snapshot(source), snapshot(target))
    assert target.client().xpending("orders", "billing")["pending"] == 1
    assert target.client().object("encoding", "big-hash") == b"hashtable"

    # what streaming cannot do goes through the scratch servers, and says so
    plain = servers("plain")
    run = ansible.play(task(RESTORE, "redis_restore", dict(connection(plain), src=path, store=store, key_pattern="str:0:*")))
    assert run.rc == 0, run
    restore = run.task(RESTORE)["result"]["restore"]
    assert "key_pattern" in restore["stream_fallback"] and restore["restored"] == 300
    refused = ansible.play(task(RESTORE, "redis_restore", dict(connection(plain), src=path, store=store, flush_first=True,
                                                               key_pattern="str:1:*", transport="stream")))
    assert refused.rc != 0
    assert "transport stream cannot restore this backup: key_pattern" in refused.task(RESTORE)["result"]["msg"]
    assert plain.client().dbsize() == 300


def test_an_rdb_damaged_inside_or_cut_short_is_refused_before_the_target_is_touched(ansible, servers, tmp_path):
    source = servers("src", password="pw")
    seed(source)
    raw = raw_rdb(source, tmp_path / "raw.rdb")
    data = raw.read_bytes()
    target = servers("tgt", password="pw2")
    target.client().set("keep", "me")
    cases = {
        # a flipped bit inside a value: only the RDB's own CRC64 sees it (no sidecar checksum here)
        "damaged.rdb": (data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x01]) + data[len(data) // 2 + 1:],
                        ("RDB checksum does not match", "truncated or damaged")),
        # the end marker kept, the middle gone: the structure check sees it
        "cut.rdb": (data[:len(data) // 3] + data[-9:], ("truncated or damaged", "RDB checksum does not match")),
    }
    for name, (content, expected) in cases.items():
        Path(tmp_path / name).write_bytes(content)
        run = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src=str(tmp_path / name),
                                                               flush_first=True)))
        assert run.rc != 0, name
        result = run.task(RESTORE)["result"]
        assert any(words in result["msg"] for words in expected) and result["changed"] is False, (name, result["msg"])
    assert target.client().dbsize() == 1 and target.client().get("keep") == b"me"


def test_an_rdb_without_any_checksum_goes_through_a_scratch_server_and_says_why(ansible, servers, tmp_path):
    source = servers("src", password="pw", extra_config={"rdbchecksum": "no"})
    seed(source)
    raw = raw_rdb(source, tmp_path / "unchecked.rdb")
    assert raw.read_bytes()[-8:] == b"\0" * 8
    target = servers("tgt", password="pw2")
    run = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src=str(raw))))
    assert run.rc == 0, run
    restore = run.task(RESTORE)["result"]["restore"]
    assert "no checksum of its own" in restore["stream_fallback"] and restore["restored"] == 921
    refused = ansible.play(task(RESTORE, "redis_restore", dict(connection(servers("other")), src=str(raw),
                                                               transport="stream")))
    assert refused.rc != 0 and "no checksum of its own" in refused.task(RESTORE)["result"]["msg"]


def test_keys_the_target_refuses_half_way_are_counted_in_the_db_they_went_to(ansible, servers, tmp_path):
    """The target runs out of memory part way through three dbs: every reply is counted for the db its key went
    to, so what the task reports is what the target holds."""
    source = servers("src", password="pw")
    for db in (0, 3, 7):
        pipe = source.client(db=db).pipeline(transaction=False)
        for i in range(10000):
            pipe.set("k:%d:%05d" % (db, i), os.urandom(600).hex())
        pipe.execute()
    raw = raw_rdb(source, tmp_path / "three-dbs.rdb")
    assert raw.stat().st_size >= 32 << 20  # checked on two cores: db 3 spans the middle
    target = servers("tgt", password="pw2", extra_config={"maxmemory-policy": "noeviction"})
    squeezed, finished = [], threading.Event()

    def squeeze_memory_half_way():
        conn = target.client()
        while not finished.is_set() and not squeezed:
            if sum(db["keys"] for db in conn.info("keyspace").values()) > 4000:
                conn.config_set("maxmemory", "1mb")
                squeezed.append(True)
            time.sleep(0.0005)

    squeezer = threading.Thread(target=squeeze_memory_half_way)
    squeezer.start()
    try:
        run = ansible.play(task(RESTORE, "redis_restore", dict(connection(target), src=str(raw), transport="stream")))
    finally:
        finished.set()
        squeezer.join()
    assert squeezed and run.rc != 0, run
    result = run.task(RESTORE)["result"]
    report = result["restore"]
    assert result["changed"] is True and "failed" in result["msg"]
    assert report["transport"] == "stream" and "OOM" in report["errors"][0] and len(report["errors"]) == 5
    assert report["backup_keys"] == {"0": 10000, "3": 10000, "7": 10000}
    for db in (0, 3, 7):
        counted = report["per_db"][str(db)]
        assert counted["restored"] == target.client(db=db).dbsize(), (db, counted)
        assert counted["restored"] + counted["failed"] == 10000, (db, counted)
    assert 4000 <= report["restored"] < 30000 and report["failed"] == 30000 - report["restored"]
