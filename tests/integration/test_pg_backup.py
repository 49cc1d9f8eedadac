"""runbook.ops.pg_backup by real ansible-playbook against a real PostgreSQL and moto's S3 server."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from servers import PG_BIN, free_port

from ansible_collections.runbook.ops.plugins.module_utils._artifacts import atomic, codec, lock

from pg_helpers import BACKUP, backup_task, pg_dump_text, sql


def restore_artifact(pg, path, compression, key, target):
    """Independent check: decode the file afresh, restore with the real pg_restore."""
    sql(pg, "postgres", "CREATE DATABASE %s" % target)
    plain = Path(str(path) + ".plain")
    with open(plain, "wb") as out:
        layers = []
        for data in codec.decode(codec.read_chunks(str(path)), codec.Secrets(key=key), layers):
            out.write(data)
        assert layers == codec.expected_layers(compression, key is not None)
    env = dict(os.environ, **pg.env)
    subprocess.run([str(PG_BIN / "pg_restore"), "--no-password", "--exit-on-error", "-d", target, str(plain)],
                   env=env, check=True, capture_output=True)
    plain.unlink()


def test_backup_round_trip_is_encrypted_verified_private_and_restores_the_same_content(ansible, pg, database, tmp_path):
    store = str(tmp_path / "store")
    run = ansible.play(backup_task(pg, database, {"dir": store}, encryption={"passphrase": "backup-pass-phrase"},
                                   md5_sidecar=True, labels={"schedule": "6h"}), verbosity=3)
    assert run.rc == 0, run
    result = run.task(BACKUP)["result"]
    assert result["changed"] is True
    backup = result["backup"]
    path = Path(backup["path"])
    assert path.name.startswith(database + "_") and path.name.endswith(".dump.zst.enc")
    assert backup["verified"] is True and backup["toc_entries"] > 10
    assert backup["size"] == path.stat().st_size and backup["raw_size"] > backup["size"] // 10
    assert backup["throughput_mb_s"] > 0 and backup["duration"] > 0
    for secret in (pg.password, "backup-pass-phrase"):
        assert secret not in run.stdout and secret not in run.stderr and secret not in json.dumps(result)
    manifest = json.loads(Path(backup["manifest"]).read_text())
    assert manifest["sha256"] == backup["sha256"] and manifest["encrypted"] is True and manifest["labels"] == {"schedule": "6h"}
    assert manifest["server_version"].startswith("15")
    sha_line = Path(str(path) + ".sha256").read_text().split()
    assert sha_line == [backup["sha256"], path.name]
    assert subprocess.run(["md5sum", "-c", path.name + ".md5"], cwd=path.parent, capture_output=True, check=False).returncode == 0
    for produced in (path, Path(backup["manifest"]), Path(str(path) + ".sha256")):
        assert stat.S_IMODE(produced.stat().st_mode) == 0o600
    assert not list(path.parent.glob(".*partial"))

    key = codec.EncryptionKey(passphrase="backup-pass-phrase")
    restore_artifact(pg, path, "zstd", key, database + "_copy")
    try:
        assert pg_dump_text(pg, database + "_copy") == pg_dump_text(pg, database)
        assert sql(pg, database + "_copy", "SELECT count(*) FROM sales.customers", fetch=True) == [(500,)]
        assert sql(pg, database + "_copy", "SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata",
                   fetch=True) == [("large object payload ✓",)]
    finally:
        sql(pg, "postgres", "DROP DATABASE IF EXISTS %s_copy" % database)


def test_check_mode_writes_nothing_and_skip_if_newer_than_makes_reruns_no_ops(ansible, pg, database, tmp_path):
    store = tmp_path / "store"
    task = backup_task(pg, database, {"dir": str(store)}, skip_if_newer_than="1h", compression="gzip", format="plain")
    check = ansible.play(task, check=True)
    assert check.rc == 0, check
    assert check.task(BACKUP)["result"]["changed"] is True
    assert not store.exists()
    first = ansible.play(task)
    assert first.rc == 0, first
    assert first.task(BACKUP)["result"]["changed"] is True
    assert first.task(BACKUP)["result"]["backup"]["path"].endswith(".sql.gz")
    for check_mode in (True, False):
        again = ansible.play(task, check=check_mode)
        assert again.rc == 0, again
        result = again.task(BACKUP)["result"]
        assert result["changed"] is False
        assert result["backup"]["id"] == first.task(BACKUP)["result"]["backup"]["id"]
        assert "within 1h" in result["skipped_reason"]
    assert len(list(store.rglob("*.manifest.json"))) == 1


def test_failed_dump_leaves_no_artifact_and_says_why(ansible, pg, tmp_path):
    store = tmp_path / "store"
    run = ansible.play(backup_task(pg, "no_such_database", {"dir": str(store)}))
    assert run.rc != 0
    assert "no_such_database" in run.task(BACKUP)["result"]["msg"]
    assert not list(store.rglob("*.dump*")) if store.exists() else True


def test_unreadable_key_file_fails_without_writing_cleartext(ansible, pg, database, tmp_path):
    store = tmp_path / "store"
    run = ansible.play(backup_task(pg, database, {"dir": str(store)}, encryption={"key_file": str(tmp_path / "missing.key")}))
    assert run.rc != 0
    assert "cannot read encryption key_file" in run.task(BACKUP)["result"]["msg"]
    assert not store.exists() or not list(store.rglob("*.dump*"))


def test_upload_to_s3_and_a_down_endpoint_keeps_the_local_copy_for_a_later_run(ansible, pg, database, s3, tmp_path):
    bucket = "backups-%s" % uuid.uuid4().hex[:6]
    s3.client().create_bucket(Bucket=bucket)
    store = {"dir": str(tmp_path / "store"),
             "s3": {"bucket": bucket, "prefix": "prod", "endpoint_url": "http://127.0.0.1:%d" % free_port(),
                    "access_key": s3.access_key, "secret_key": s3.secret_key, "region": s3.region, "sse": "AES256"}}
    down = ansible.play(backup_task(pg, database, store))
    assert down.rc != 0
    result = down.task(BACKUP)["result"]
    assert "local copy is kept" in result["msg"]
    kept = list((tmp_path / "store").rglob("*.manifest.json"))
    assert len(kept) == 1
    store["s3"]["endpoint_url"] = s3.endpoint_url
    up = ansible.play(backup_task(pg, database, store))
    assert up.rc == 0, up
    result = up.task(BACKUP)["result"]
    earlier_id = json.loads(kept[0].read_text())["id"]
    assert result["uploaded_pending"] == [earlier_id]
    assert result["backup"]["s3_uri"].startswith("s3://%s/prod/postgres/" % bucket)
    keys = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert len([k for k in keys if k.endswith(".manifest.json")]) == 2
    assert len([k for k in keys if k.endswith(".dump.zst")]) == 2
    head = s3.client().head_object(Bucket=bucket, Key=result["backup"]["s3_uri"].split("/", 3)[3])
    assert head["ServerSideEncryption"] == "AES256"
    assert s3.secret_key not in up.stdout


def test_retention_prunes_old_backups_but_keeps_the_newest_verified(ansible, pg, database, tmp_path):
    store = tmp_path / "store"
    for _round in range(3):
        run = ansible.play(backup_task(pg, database, {"dir": str(store)}, compression="none", retention={"keep_last": 2}))
        assert run.rc == 0, run
        time.sleep(1.05)  # ids have one-second resolution
    result = run.task(BACKUP)["result"]
    assert len(result["pruned"]) == 1
    assert len(list(store.rglob("*.manifest.json"))) == 2
    assert len([p for p in store.rglob("*.dump") if not p.name.startswith(".")]) == 2


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real ENOSPC, not a simulated one."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_fails_clearly_keeps_nothing_partial_and_earlier_backups_intact(ansible, pg, database, small_disk):
    store = {"dir": str(small_disk / "store")}
    first = ansible.play(backup_task(pg, database, store, compression="none"))
    assert first.rc == 0, first
    earlier = first.task(BACKUP)["result"]["backup"]
    sql(pg, database, "CREATE TABLE big AS SELECT gen_random_bytes(1000) AS junk FROM generate_series(1, 3000)")
    full = ansible.play(backup_task(pg, database, store, compression="none"))
    assert full.rc != 0
    assert "no space left" in full.task(BACKUP)["result"]["msg"]
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".partial")]
    assert len(list(small_disk.rglob("*.manifest.json"))) == 1
    assert atomic.file_digests(earlier["path"])[0] == earlier["sha256"]


def test_two_backups_of_one_database_never_write_together(ansible, pg, database, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    with lock.StoreLock(str(store), "postgres", database):
        run = ansible.play(backup_task(pg, database, {"dir": str(store)}, lock_timeout=1))
    assert run.rc != 0
    assert "another backup of this database is running" in run.task(BACKUP)["result"]["msg"]
    assert not list(store.rglob("*.manifest.json"))
