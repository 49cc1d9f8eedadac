"""runbook.ops.pg_restore (and pg_backup's other formats) by real ansible-playbook against a real PostgreSQL and S3."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from argv_scan import ArgvScanner
from pg_helpers import (BACKUP, RESTORE, backup_task, databases, drop_database, make_database, pg_dump_text, pg_tool,
                        restore_task, sql, table_counts)


@pytest.fixture
def cleanup(pg):
    """Names of databases (prefixes) a test creates, dropped afterwards."""
    prefixes = []
    yield prefixes
    for prefix in prefixes:
        for name in databases(pg, prefix):
            drop_database(pg, name)


def backup(ansible, pg, db, store, **options):
    run = ansible.play(backup_task(pg, db, store, **options))
    assert run.rc == 0, run
    return run.task(BACKUP)["result"]["backup"]


def test_round_trip_latest_into_a_new_database_has_the_same_content(ansible, pg, database, tmp_path, cleanup):
    store = {"dir": str(tmp_path / "store")}
    made = backup(ansible, pg, database, store, encryption={"passphrase": "pw-for-backups"})
    target = database + "_restored"
    cleanup.append(target)
    run = ansible.play(restore_task(pg, target, "latest", backup_db=database, store=store,
                                    encryption={"passphrase": "pw-for-backups"}, compare_with=database,
                                    verify_queries=[{"query": "SELECT count(*) FROM sales.customers", "expected": 500}]),
                       diff=True)
    assert run.rc == 0, run
    result = run.task(RESTORE)["result"]
    restore = result["restore"]
    assert result["changed"] is True
    assert restore["id"] == made["id"] and restore["checksum"] == "manifest" and restore["sha256"] == made["sha256"]
    assert restore["layers"] == ["aes-256-gcm", "zstd"] and restore["format"] == "custom" and restore["jobs"] == 2
    assert restore["tables"] == 2 and restore["rows_estimate"] == 800 and restore["previous"] is None
    assert restore["comparison"]["match"] is True and restore["comparison"]["rows"] == 800
    assert restore["verify_queries"] == [{"query": "SELECT count(*) FROM sales.customers", "result": "500"}]
    assert restore["duration"] > 0 and restore["load_duration"] > 0 and restore["throughput_mb_s"] > 0
    assert pg_dump_text(pg, target) == pg_dump_text(pg, database)
    assert sql(pg, target, "SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata", fetch=True) == \
        [("large object payload ✓",)]
    assert sql(pg, target, "SELECT sales.greet('Zoë')", fetch=True) == [("hello Zoë",)]
    assert databases(pg, target) == [target]  # no scratch database left behind
    assert not list((tmp_path / "store").rglob(".restore-*"))


def test_swap_replaces_a_live_database_keeps_the_old_one_and_a_safety_backup(ansible, pg, database, tmp_path, cleanup):
    cleanup.append(database + "_pre_restore")
    store = {"dir": str(tmp_path / "store")}
    made = backup(ansible, pg, database, store)
    sql(pg, database, "INSERT INTO sales.customers (name) VALUES ('after the backup')")
    sql(pg, "postgres", "ALTER DATABASE %s SET work_mem TO '7MB'" % database)
    refused = ansible.play(restore_task(pg, database, made["path"], store=store))
    assert refused.rc != 0
    assert "set force: true" in refused.task(RESTORE)["result"]["msg"]
    assert sql(pg, database, "SELECT count(*) FROM sales.customers", fetch=True) == [(501,)]

    import psycopg2
    session = psycopg2.connect(**pg.conninfo(database))  # an application still connected
    try:
        run = ansible.play(restore_task(pg, database, made["path"], store=store, force=True))
    finally:
        session.close()
    assert run.rc == 0, run
    restore = run.task(RESTORE)["result"]["restore"]
    assert restore["sessions_terminated"] >= 1
    assert restore["previous"].startswith(database + "_pre_restore_")
    assert restore["copied_properties"]["settings"] == 1
    assert sql(pg, database, "SELECT count(*) FROM sales.customers", fetch=True) == [(500,)]
    assert sql(pg, database, "SHOW work_mem", fetch=True) == [("7MB",)]
    assert sql(pg, restore["previous"], "SELECT count(*) FROM sales.customers", fetch=True) == [(501,)]
    safety = restore["safety_backup"]
    manifest = json.loads(Path(safety["path"]).parent.joinpath(safety["id"] + ".manifest.json").read_text())
    assert manifest["labels"]["purpose"] == "pre-restore" and manifest["verified"] is True

    # latest skips the safety backup: it picks the backup the operator took
    again = ansible.play(restore_task(pg, database, "latest", store=store, force=True, keep_previous=False,
                                      safety_backup=False))
    assert again.rc == 0, again
    restore = again.task(RESTORE)["result"]["restore"]
    assert restore["id"] == made["id"] and restore["previous"] is None and restore["previous_dropped"]
    assert databases(pg, database + "_pre_restore") == [run.task(RESTORE)["result"]["restore"]["previous"]]


FOREIGN = ["sql", "sql.gz", "sql.zst", "dump", "dump.gz", "tar", "directory", "sql.gz.enc-pbkdf2",
           "sql.gz.enc-legacy-md5", "sql.gz.enc-legacy-sha256", "dump.md5-sidecar"]


def make_foreign(pg, db, kind, directory):
    """A backup as the platforms' shell scripts write them."""
    passphrase = "old-script-passphrase"
    env = dict(os.environ, OLD_PASS=passphrase)
    sql_file = directory / "plain.sql"
    if not sql_file.exists():
        pg_tool(pg, "pg_dump", "-d", db, "-f", str(sql_file))
    if kind == "sql":
        return sql_file, None
    if kind == "sql.gz":
        target = directory / ("%s_20260126_020000.sql.gz" % db)
        subprocess.run("gzip -c %s > %s" % (sql_file, target), shell=True, check=True)
        return target, None
    if kind == "sql.zst":
        target = directory / "backup.sql.zst"
        subprocess.run(["zstd", "-q", "-T2", str(sql_file), "-o", str(target)], check=True)
        return target, None
    if kind in ("dump", "dump.gz", "dump.md5-sidecar"):
        target = directory / "loyalty_20231114_120000.dump"
        pg_tool(pg, "pg_dump", "-Fc", "-d", db, "-f", str(target))
        if kind == "dump.gz":
            subprocess.run(["pigz", "-p2", str(target)], check=True)
            return Path(str(target) + ".gz"), None
        if kind == "dump.md5-sidecar":
            subprocess.run("md5sum %s > %s.md5" % (target.name, target.name), shell=True, cwd=directory, check=True)
        return target, None
    if kind == "tar":
        target = directory / "backup.tar"
        pg_tool(pg, "pg_dump", "-Ft", "-d", db, "-f", str(target))
        return target, None
    if kind == "directory":
        target = directory / "dumpdir"
        pg_tool(pg, "pg_dump", "-Fd", "-j2", "-d", db, "-f", str(target))
        return target, None
    variant = kind.split("-", 1)[1]
    target = directory / ("backup_20260126_020000.sql.gz.enc")
    kdf = {"pbkdf2": ["-pbkdf2"], "legacy-md5": ["-md", "md5"], "legacy-sha256": []}[variant]
    subprocess.run("gzip -c %s | openssl enc -aes-256-cbc -salt %s -pass env:OLD_PASS -out %s 2>/dev/null"
                   % (sql_file, " ".join(kdf), target), shell=True, env=env, check=True)
    return target, {"passphrase": passphrase}


@pytest.mark.parametrize("kind", FOREIGN)
def test_restores_backups_made_by_the_platforms_scripts(ansible, pg, database, tmp_path, cleanup, kind):
    src, encryption = make_foreign(pg, database, kind, tmp_path)
    target = database + "_foreign"
    cleanup.append(target)
    options = {"safety_backup": False, "compare_with": database}
    if encryption:
        options["encryption"] = encryption
    run = ansible.play(restore_task(pg, target, str(src), **options))
    assert run.rc == 0, run
    restore = run.task(RESTORE)["result"]["restore"]
    assert restore["comparison"]["match"] is True, restore["comparison"]
    assert table_counts(pg, target) == table_counts(pg, database)
    expected_format = {"sql": "plain", "dump": "custom", "tar": "directory", "directory": "directory"}
    assert restore["format"] == expected_format[kind.split(".")[0].split("-")[0]]
    if kind.startswith("sql.gz.enc"):
        assert restore["layers"][0].startswith("openssl-aes-256-cbc/") and restore["layers"][1] == "gzip"
        assert ("pbkdf2" in restore["layers"][0]) == (kind.endswith("pbkdf2"))
    if kind == "dump.md5-sidecar":
        assert restore["checksum"] == "sidecar"
    if kind == "sql":
        assert pg_dump_text(pg, target) == pg_dump_text(pg, database)


def damage(path, how):
    data = bytearray(Path(path).read_bytes())
    if how == "changed byte":
        data[len(data) // 2] ^= 0x01
    elif how == "truncated":
        data = data[: len(data) * 2 // 3]
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["changed byte", "truncated", "wrong key", "not a backup", "changed byte, no manifest",
                                  "truncated openssl"])
def test_bad_input_is_refused_by_validate_only_and_restore_and_the_target_is_untouched(
        ansible, pg, database, tmp_path, cleanup, case):
    cleanup.append(database + "_restore_")
    store = {"dir": str(tmp_path / "store")}
    encryption = {"passphrase": "right-passphrase"}
    made = backup(ansible, pg, database, store, encryption=encryption, compression="gzip")
    path = made["path"]
    expected = {"changed byte": "checksum mismatch", "truncated": "checksum mismatch", "wrong key": "wrong encryption key",
                "not a backup": "not a PostgreSQL backup", "changed byte, no manifest": "checksum mismatch",
                "truncated openssl": "truncated or damaged"}[case]
    if case in ("changed byte", "truncated"):
        damage(path, case)
    elif case == "wrong key":
        encryption = {"passphrase": "wrong-passphrase"}
    elif case == "not a backup":
        path = str(tmp_path / "notes.txt.gz")
        with gzip.open(path, "wb") as handle:
            handle.write(b"\x00\x01binary junk, not SQL\xff" * 100)
    elif case == "changed byte, no manifest":
        os.unlink(made["manifest"])  # the .sha256 sidecar still guards it
        damage(path, "changed byte")
    elif case == "truncated openssl":
        src, encryption = make_foreign(pg, database, "sql.gz.enc-pbkdf2", tmp_path)
        data = src.read_bytes()
        src.write_bytes(data[:-16])
        path = str(src)
    before = pg_dump_text(pg, database)
    for options in ({"validate_only": True}, {"force": True}, {"force": True, "mode": "in_place"}):
        run = ansible.play(restore_task(pg, database, path, store=store, encryption=encryption, **options))
        assert run.rc != 0, (options, run)
        msg = run.task(RESTORE)["result"]["msg"]
        assert expected in msg, (options, msg)
    assert pg_dump_text(pg, database) == before
    assert databases(pg, database) == [database]
    assert len(list((tmp_path / "store").rglob("*.manifest.json"))) <= 1  # no safety backup was needed


def test_a_restore_that_fails_half_way_leaves_the_target_untouched(ansible, pg, database, tmp_path, cleanup):
    role = "gone_%s" % uuid.uuid4().hex[:6]
    source = make_database(pg, "half")
    cleanup.append(source)
    cleanup.append(database + "_restore_")
    sql(pg, "postgres", "CREATE ROLE %s" % role)
    sql(pg, source, "CREATE TABLE sales.late (id int); ALTER TABLE sales.late OWNER TO %s" % role)
    dump = tmp_path / "needs_role.dump"
    pg_tool(pg, "pg_dump", "-Fc", "-d", source, "-f", str(dump))
    sql(pg, source, "DROP TABLE sales.late")
    sql(pg, "postgres", "DROP ROLE %s" % role)
    before = pg_dump_text(pg, database)
    for mode in ("swap", "in_place"):
        run = ansible.play(restore_task(pg, database, str(dump), force=True, mode=mode, store={"dir": str(tmp_path / "s")}))
        assert run.rc != 0
        msg = run.task(RESTORE)["result"]["msg"]
        assert 'role "%s" does not exist' % role in msg, msg
        assert "untouched" in msg or "rolled back" in msg
        assert pg_dump_text(pg, database) == before
        assert databases(pg, database) == [database]
    # the platforms' fix: give the objects to a role that exists
    target = database + "_owned"
    cleanup.append(target)
    owner = "owner_%s" % uuid.uuid4().hex[:6]
    sql(pg, "postgres", "CREATE ROLE %s" % owner)
    try:
        run = ansible.play(restore_task(pg, target, str(dump), owner=owner, safety_backup=False))
        assert run.rc == 0, run
        owners = sql(pg, target, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'sales'", fetch=True)
        assert owners == [(owner,)]
        assert sql(pg, "postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '%s'" % target,
                   fetch=True) == [(owner,)]
    finally:
        drop_database(pg, target)
        sql(pg, "postgres", "DROP ROLE %s" % owner)


def test_failed_verify_query_keeps_the_target_and_drops_the_scratch_database(ansible, pg, database, tmp_path, cleanup):
    cleanup.append(database + "_restore_")
    made = backup(ansible, pg, database, {"dir": str(tmp_path / "store")})
    sql(pg, database, "DELETE FROM audit.events")
    run = ansible.play(restore_task(pg, database, made["path"], force=True, safety_backup=False,
                                    verify_queries=[{"query": "SELECT count(*) FROM audit.events", "expected": 1}]))
    assert run.rc != 0
    msg = run.task(RESTORE)["result"]["msg"]
    assert "returned 300, expected 1" in msg and "untouched" in msg
    assert sql(pg, database, "SELECT count(*) FROM audit.events", fetch=True) == [(0,)]
    assert databases(pg, database) == [database]


def test_in_place_restore_and_check_mode(ansible, pg, database, tmp_path):
    store = {"dir": str(tmp_path / "store")}
    made = backup(ansible, pg, database, store, compression="zstd")
    sql(pg, database, "DELETE FROM sales.customers WHERE id > 10")
    task = restore_task(pg, database, made["path"], store=store, force=True, mode="in_place")
    check = ansible.play(task, check=True, diff=True)
    assert check.rc == 0, check
    planned = check.task(RESTORE)["result"]
    assert planned["changed"] is True and planned["restore"]["safety_backup"] == "would be taken"
    assert "restored from %s" % made["id"] in planned["diff"]["after"]
    assert sql(pg, database, "SELECT count(*) FROM sales.customers", fetch=True) == [(10,)]
    assert len(list((tmp_path / "store").rglob("*.manifest.json"))) == 1
    run = ansible.play(task)
    assert run.rc == 0, run
    restore = run.task(RESTORE)["result"]["restore"]
    assert restore["mode"] == "in_place" and restore["jobs"] == 1 and restore["previous"] is None
    assert sql(pg, database, "SELECT count(*) FROM sales.customers", fetch=True) == [(500,)]
    assert len(list((tmp_path / "store").rglob("*.manifest.json"))) == 2  # the safety backup


@pytest.mark.parametrize("level", ["checksum", "list", "restore"])
def test_validate_only_levels_change_nothing(ansible, pg, database, tmp_path, level, cleanup):
    cleanup.append(database + "_verify_")
    made = backup(ansible, pg, database, {"dir": str(tmp_path / "store")}, format="plain")
    before = pg_dump_text(pg, database)
    run = ansible.play(restore_task(pg, database, made["path"], validate_only=True, validate_level=level))
    assert run.rc == 0, run
    result = run.task(RESTORE)["result"]
    assert result["changed"] is False and result["restore"]["valid"] is True and result["restore"]["level"] == level
    assert result["restore"]["sha256"] == made["sha256"]
    if level == "restore":
        assert result["restore"]["tables"] == 2 and result["restore"]["test_database"].startswith(database + "_verify_")
    assert pg_dump_text(pg, database) == before
    assert databases(pg, database) == [database]


def test_directory_format_with_globals_s3_only_store_and_s3_retention(ansible, pg, database, s3, tmp_path, cleanup):
    bucket = "dir-%s" % uuid.uuid4().hex[:6]
    s3.client().create_bucket(Bucket=bucket)
    store = {"work_dir": str(tmp_path / "work"),
             "s3": {"bucket": bucket, "prefix": "prod", "endpoint_url": s3.endpoint_url, "access_key": s3.access_key,
                    "secret_key": s3.secret_key, "region": s3.region}}
    key_file = tmp_path / "backup.key"
    key_file.write_bytes(os.urandom(32))
    options = dict(format="directory", jobs=2, globals=True, encryption={"key_file": str(key_file)},
                   retention={"keep_last": 2})
    ids = []
    for _round in range(3):
        made = backup(ansible, pg, database, store, **options)
        ids.append(made["id"])
        assert made["path"] is None and made["s3_uri"].endswith(".dir.tar.zst.enc") and made["verified"] is True
        assert made["globals_file"] == made["id"] + ".globals.sql.zst.enc"
        time.sleep(1.05)
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert len([k for k in keys if k.endswith(".manifest.json")]) == 2
    assert not [k for k in keys if ids[0] in k]  # pruned with its sidecars and globals
    assert len([k for k in keys if k.endswith(".globals.sql.zst.enc")]) == 2
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file() and not p.name.endswith(".lock")]

    target = database + "_fromdir"
    cleanup.append(target)
    run = ansible.play(restore_task(pg, target, "latest", backup_db=database, store=store,
                                    encryption={"key_file": str(key_file)}, jobs=2, compare_with=database))
    assert run.rc == 0, run
    restore = run.task(RESTORE)["result"]["restore"]
    assert restore["id"] == ids[-1] and restore["format"] == "directory" and restore["jobs"] == 2
    assert restore["comparison"]["match"] is True
    assert pg_dump_text(pg, target) == pg_dump_text(pg, database)
    # a single object by its s3:// uri, with its sidecar and manifest fetched beside it
    run = ansible.play(restore_task(pg, database, made["s3_uri"], store=store, encryption={"key_file": str(key_file)},
                                    validate_only=True))
    assert run.rc == 0, run
    assert run.task(RESTORE)["result"]["restore"]["checksum"] == "manifest"


def test_pg_dump_killed_mid_backup_leaves_nothing_that_looks_finished(ansible, pg, tmp_path, cleanup):
    big = make_database(pg, "big")
    cleanup.append(big)
    sql(pg, big, "CREATE TABLE filler AS SELECT i, md5(i::text) || md5((i * 7)::text) AS t FROM generate_series(1, 3000000) i")
    store = tmp_path / "store"
    killed = []

    def kill_pg_dump():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        argv = Path("/proc/%s/cmdline" % pid).read_bytes().split(b"\0")
                    except OSError:
                        continue
                    if argv[0].endswith(b"pg_dump") and any(big.encode() in arg for arg in argv):
                        time.sleep(0.3)
                        os.kill(int(pid), 9)
                        killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_pg_dump)
    killer.start()
    run = ansible.play(backup_task(pg, big, {"dir": str(store)}, compression="none"))
    killer.join()
    assert killed
    assert run.rc != 0
    msg = run.task(BACKUP)["result"]["msg"]
    assert "killed by signal 9" in msg and "no backup was kept" in msg
    leftovers = [p for p in store.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == []


def test_no_secret_in_any_argv_result_or_verbose_output(ansible, pg, database, tmp_path, cleanup):
    cleanup.append(database + "_secret")
    store = {"dir": str(tmp_path / "store")}
    secrets = [pg.password, "argv-scan-passphrase"]
    with ArgvScanner(secrets, [b"pg_", b"psql"]) as scan:
        made = ansible.play(backup_task(pg, database, store, encryption={"passphrase": secrets[1]}, format="plain"),
                            verbosity=3)
        restored = ansible.play(restore_task(pg, database + "_secret", "latest", backup_db=database, store=store,
                                             encryption={"passphrase": secrets[1]}), verbosity=3)
    assert scan.leaks == []
    assert made.rc == 0 and restored.rc == 0, (made, restored)
    assert any(b"pg_dump" in c for c in scan.seen) and any(b"psql" in c for c in scan.seen)
    for run in (made, restored):
        for secret in secrets:
            assert secret not in run.stdout and secret not in run.stderr
            assert secret not in json.dumps(run.results)
    for produced in (tmp_path / "store").rglob("*"):
        if produced.is_file():
            assert oct(produced.stat().st_mode & 0o777) == "0o600", produced
    shutil.rmtree(tmp_path / "store")
