"""Manifests, the tolerant catalog, retention, locks, stale scratch space and option validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._artifacts import atomic, lock, manifest as mf, retention, store
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, pop_warnings


def manifests(*ages_hours, verified=True):
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    return now, [{"id": "b%d" % i, "finished": mf.format_time(now - timedelta(hours=h)), "verified": verified}
                 for i, h in enumerate(ages_hours)]


def test_retention_keep_last_and_keep_days():
    now, items = manifests(1, 30, 60, 200)
    keep, prune = retention.select_retained(items, now, keep_last=2)
    assert [m["id"] for m in keep] == ["b0", "b1"] and [m["id"] for m in prune] == ["b2", "b3"]
    keep, prune = retention.select_retained(items, now, keep_days=2)
    assert [m["id"] for m in prune] == ["b2", "b3"]
    assert retention.select_retained(items, now)[1] == []


def test_retention_gfs_keeps_newest_of_each_period():
    now, items = manifests(1, 2, 25, 26, 24 * 9, 24 * 40)
    keep, _prune = retention.select_retained(items, now, keep_daily=2, keep_weekly=2, keep_monthly=2)
    # Mon 23 Nov: daily b0 (23rd), b2 (22nd); weekly b0 (W48), b2 (W47, Sunday); monthly b0 (Nov), b5 (Oct)
    assert [m["id"] for m in keep] == ["b0", "b2", "b5"]


def test_retention_never_prunes_the_newest_verified_backup():
    now, items = manifests(1, 2, 3)
    items[0]["verified"] = False
    keep, _prune = retention.select_retained(items, now, keep_last=0, keep_days=0)
    assert [m["id"] for m in keep] == ["b1"]


def test_negative_retention_counts_are_refused():
    with pytest.raises(OpsError, match="retention.keep_last is -1"):
        retention.validate({"keep_last": -1})
    retention.validate({"keep_last": 0, "keep_days": None})


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("6h", 21600), ("1d", 86400), ("2w", 1209600),
                                           ("15", 15), ("1.5h", 5400)])
def test_parse_age(text, seconds):
    assert mf.parse_age(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["soon", "-1h", "0", "inf", "nanh", "1e300d", "99999999w", "", "h"])
def test_parse_age_refuses_negative_infinite_and_overflowing_values(text):
    with pytest.raises(OpsError, match="skip_if_newer_than"):
        mf.parse_age(text)


@pytest.mark.parametrize("name", ["a/b", "..", ".", "", "x\x00y", "é" * 91])
def test_subject_names_that_cannot_be_file_names_are_refused(name):
    with pytest.raises(OpsError, match="db"):
        mf.validate_subject(name, "db")


def test_subject_names_with_quotes_equals_and_multibyte_text_are_fine():
    for name in ("it's", "dbname=other", "Zürich 東京", "a" * 63):
        assert mf.validate_subject(name, "db") == name


def write_manifest(root, subject, stamp, **fields):
    directory = root / "postgres" / "2026" / "11" / "23"
    directory.mkdir(parents=True, exist_ok=True)
    manifest = dict({"id": "%s_%s" % (subject, stamp), "database": subject, "file": "%s_%s.dump" % (subject, stamp),
                     "finished": "2026-11-23T%s:%s:%s.000000Z" % (stamp[9:11], stamp[11:13], stamp[13:15])}, **fields)
    path = directory / ("%s_%s.manifest.json" % (subject, stamp))
    path.write_text(json.dumps(manifest))
    return path


def test_catalog_reads_only_its_subject_and_skips_damaged_manifests_with_a_warning(tmp_path):
    write_manifest(tmp_path, "app", "20261123_010000")
    write_manifest(tmp_path, "app", "20261123_020000")
    write_manifest(tmp_path, "app_x", "20261123_030000")
    broken_other = write_manifest(tmp_path, "other", "20261123_040000")
    broken_other.write_text("{not json")
    broken_own = write_manifest(tmp_path, "app", "20261123_050000")
    broken_own.write_text('{"id": "app_20261123_050000"}')
    pop_warnings()
    found = mf.catalog(str(tmp_path), "postgres", "app")
    assert [m["id"] for m in found] == ["app_20261123_020000", "app_20261123_010000"]
    warnings = pop_warnings()
    assert len(warnings) == 1 and "app_20261123_050000" in warnings[0] and "lacks finished" in warnings[0]
    everything = mf.catalog(str(tmp_path), "postgres")
    assert len(everything) == 3 and len(pop_warnings()) == 2


def test_lock_refuses_a_second_holder_and_names_are_hashed(tmp_path):
    with lock.StoreLock(str(tmp_path), "postgres", "app'=/x"):
        with pytest.raises(OpsError, match="another backup of this database is running"):
            with lock.StoreLock(str(tmp_path), "postgres", "app'=/x", timeout=0.3):
                pass
    with lock.StoreLock(str(tmp_path), "postgres", "app'=/x"):
        pass
    assert all("'" not in name and "=" not in name for name in os.listdir(tmp_path / ".locks"))


def test_store_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OpsError, match="store.dir .* is a file"):
        store.validate({"dir": str(tmp_path / "f")})
    with pytest.raises(OpsError, match="has a file where a directory should be"):
        atomic.make_dirs(str(tmp_path / "f" / "sub"))


def test_scratch_of_a_dead_owner_is_removed_and_a_live_one_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name, pid in (("staging-dead", dead.pid), ("staging-live", os.getpid()), ("other-dead", dead.pid)):
        (tmp_path / name).mkdir()
        marker = dict(atomic.owner_marker(), pid=pid)
        if pid != os.getpid():
            marker["start"] = -1
        (tmp_path / name / atomic.OWNER_FILE).write_text(json.dumps(marker))
    (tmp_path / "staging-unmarked").mkdir()
    removed = atomic.sweep_scratch(str(tmp_path), store.SCRATCH_PREFIXES)
    assert removed == [str(tmp_path / "staging-dead")]
    assert sorted(os.listdir(tmp_path)) == ["other-dead", "staging-live", "staging-unmarked"]


def test_scratch_in_check_mode_stays_out_of_the_store(tmp_path):
    with store.scratch({"dir": str(tmp_path / "store")}, ".restore-", check_mode=True) as path:
        assert not path.startswith(str(tmp_path))
    assert not (tmp_path / "store").exists()


def test_partial_files_of_one_subject_only_are_swept(tmp_path):
    for name in (".app_20261123_010000.dump.zst.partial", ".app_x_20261123_010000.dump.partial", "app_20261123.dump"):
        (tmp_path / name).write_text("x")
    removed = atomic.sweep_partials(str(tmp_path), mf.id_pattern("app") + r"\..+")
    assert [os.path.basename(p) for p in removed] == [".app_20261123_010000.dump.zst.partial"]
