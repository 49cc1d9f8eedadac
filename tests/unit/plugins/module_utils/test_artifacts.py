"""Artifact store logic: encryption, compression, atomic writes, retention, durations."""

from __future__ import annotations

import gzip
import os
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _artifacts as art
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

PAYLOAD = os.urandom(3 * art.CHUNK + 12345) + b"tail" * 1000


def write(path, key=None, compression="zstd"):
    sink = art.ArtifactSink(str(path), compression, None, key, md5=True)
    for start in range(0, len(PAYLOAD), 300000):
        sink.write(PAYLOAD[start:start + 300000])
    sink.close()
    return sink


def read(path, key=None, compression="zstd"):
    return b"".join(art.open_plain_reader(str(path), compression, key))


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_round_trip_with_encryption_and_digests_match_the_file(tmp_path, compression):
    key = art.EncryptionKey(passphrase="correct horse")
    sink = write(tmp_path / "a", key, compression)
    assert read(tmp_path / "a", art.EncryptionKey(passphrase="correct horse"), compression) == PAYLOAD
    assert art.file_digests(str(tmp_path / "a"), md5=True) == (sink.sha256.hexdigest(), sink.md5.hexdigest())
    assert oct(os.stat(tmp_path / "a").st_mode & 0o777) == "0o600"
    assert sink.raw_bytes == len(PAYLOAD)


def test_wrong_key_changed_byte_and_truncation_are_detected(tmp_path):
    key = art.EncryptionKey(passphrase="right")
    write(tmp_path / "a", key)
    with pytest.raises(OpsError, match="wrong encryption key"):
        read(tmp_path / "a", art.EncryptionKey(passphrase="wrong"))
    data = bytearray((tmp_path / "a").read_bytes())
    changed = bytearray(data)
    changed[len(data) // 2] ^= 1
    (tmp_path / "b").write_bytes(bytes(changed))
    with pytest.raises(OpsError, match="fails authentication"):
        read(tmp_path / "b", key)
    (tmp_path / "c").write_bytes(bytes(data[:art.CHUNK + 100]))
    with pytest.raises(OpsError, match="truncated"):
        read(tmp_path / "c", key)
    (tmp_path / "d").write_bytes(b"not an encrypted file at all, just text" * 10)
    with pytest.raises(OpsError, match="not encrypted by runbook.ops"):
        read(tmp_path / "d", key)


def test_raw_key_file_and_key_id_do_not_depend_on_the_file(tmp_path):
    (tmp_path / "k").write_bytes(os.urandom(32))
    first, second = art.EncryptionKey(key_file=str(tmp_path / "k")), art.EncryptionKey(key_file=str(tmp_path / "k"))
    assert first.key_id == second.key_id and first.kdf == art.KDF_RAW
    write(tmp_path / "a", first)
    assert read(tmp_path / "a", second) == PAYLOAD
    with pytest.raises(OpsError, match="cannot read encryption key_file"):
        art.EncryptionKey(key_file=str(tmp_path / "missing"))


def test_truncated_compressed_stream_is_detected(tmp_path):
    write(tmp_path / "a", None, "zstd")
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes()[:-50])
    with pytest.raises(OpsError, match="truncated"):
        read(tmp_path / "b")


def test_concatenated_gzip_members_are_read_whole(tmp_path):
    (tmp_path / "a.gz").write_bytes(gzip.compress(b"one ") + gzip.compress(b"two"))
    assert read(tmp_path / "a.gz", compression="gzip") == b"one two"


def test_aborted_write_leaves_nothing(tmp_path):
    sink = art.ArtifactSink(str(tmp_path / "a"), "zstd")
    sink.write(b"x" * 1000)
    sink.abort()
    assert os.listdir(tmp_path) == []


def manifests(*ages_hours, verified=True):
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    return now, [{"id": "b%d" % i, "finished": art.format_time(now - timedelta(hours=h)), "verified": verified}
                 for i, h in enumerate(ages_hours)]


def test_retention_keep_last_and_keep_days():
    now, items = manifests(1, 30, 60, 200)
    keep, prune = art.select_retained(items, now, keep_last=2)
    assert [m["id"] for m in keep] == ["b0", "b1"] and [m["id"] for m in prune] == ["b2", "b3"]
    keep, prune = art.select_retained(items, now, keep_days=2)
    assert [m["id"] for m in prune] == ["b2", "b3"]
    assert art.select_retained(items, now)[1] == []


def test_retention_gfs_keeps_newest_of_each_period():
    now, items = manifests(1, 2, 25, 26, 24 * 9, 24 * 40)
    keep, _prune = art.select_retained(items, now, keep_daily=2, keep_weekly=2, keep_monthly=2)
    # Mon 23 Nov: daily b0 (23rd), b2 (22nd); weekly b0 (W48), b2 (W47, Sunday); monthly b0 (Nov), b5 (Oct)
    assert [m["id"] for m in keep] == ["b0", "b2", "b5"]


def test_retention_never_prunes_the_newest_verified_backup():
    now, items = manifests(1, 2, 3)
    items[0]["verified"] = False
    keep, _prune = art.select_retained(items, now, keep_last=0, keep_days=0)
    assert [m["id"] for m in keep] == ["b1"]


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("6h", 21600), ("1d", 86400), ("2w", 1209600), ("15", 15)])
def test_parse_age(text, seconds):
    assert art.parse_age(text).total_seconds() == seconds


def test_parse_age_rejects_nonsense():
    with pytest.raises(OpsError, match="not a duration"):
        art.parse_age("soon")


def test_lock_refuses_a_second_holder(tmp_path):
    with art.StoreLock(str(tmp_path), "postgres", "app"):
        with pytest.raises(OpsError, match="another backup of this database is running"):
            with art.StoreLock(str(tmp_path), "postgres", "app", timeout=0.3):
                pass
    with art.StoreLock(str(tmp_path), "postgres", "app"):
        pass
