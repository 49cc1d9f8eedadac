"""Compression, encryption and the one decode path writers and readers share."""

from __future__ import annotations

import gzip
import os

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._artifacts import atomic, codec
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, pop_warnings

PAYLOAD = os.urandom(3 * codec.CHUNK + 12345) + b"tail" * 1000


def write(path, key=None, compression="zstd"):
    writer = atomic.AtomicWriter(str(path))
    sink = codec.EncodingSink(writer, compression, None, key, md5=True)
    for start in range(0, len(PAYLOAD), 300000):
        sink.write(PAYLOAD[start:start + 300000])
    sink.finish()
    writer.commit()
    return sink


def read(path, key=None):
    layers = []
    data = b"".join(codec.decode(codec.read_chunks(str(path)), codec.Secrets(key=key), layers))
    return data, layers


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_round_trip_with_encryption_and_digests_match_the_file(tmp_path, compression):
    key = codec.EncryptionKey(passphrase="correct horse")
    sink = write(tmp_path / "a", key, compression)
    data, layers = read(tmp_path / "a", codec.EncryptionKey(passphrase="correct horse"))
    assert data == PAYLOAD and layers == codec.expected_layers(compression, True)
    assert atomic.file_digests(str(tmp_path / "a"), md5=True) == (sink.sha256.hexdigest(), sink.md5.hexdigest())
    assert oct(os.stat(tmp_path / "a").st_mode & 0o777) == "0o600"
    assert sink.raw_bytes == len(PAYLOAD)


def test_wrong_key_changed_byte_and_truncation_are_detected(tmp_path):
    key = codec.EncryptionKey(passphrase="right")
    write(tmp_path / "a", key)
    with pytest.raises(OpsError, match="wrong encryption key"):
        read(tmp_path / "a", codec.EncryptionKey(passphrase="wrong"))
    data = bytearray((tmp_path / "a").read_bytes())
    changed = bytearray(data)
    changed[len(data) // 2] ^= 1
    (tmp_path / "b").write_bytes(bytes(changed))
    with pytest.raises(OpsError, match="fails authentication"):
        read(tmp_path / "b", key)
    (tmp_path / "c").write_bytes(bytes(data[:codec.CHUNK + 100]))
    with pytest.raises(OpsError, match="truncated"):
        read(tmp_path / "c", key)


def test_raw_key_file_and_key_id_do_not_depend_on_the_file(tmp_path):
    (tmp_path / "k").write_bytes(os.urandom(32))
    os.chmod(tmp_path / "k", 0o600)
    first, second = codec.EncryptionKey(key_file=str(tmp_path / "k")), codec.EncryptionKey(key_file=str(tmp_path / "k"))
    assert first.key_id == second.key_id and first.kdf == codec.KDF_RAW
    write(tmp_path / "a", first)
    assert read(tmp_path / "a", second)[0] == PAYLOAD
    assert pop_warnings() == []
    with pytest.raises(OpsError, match="cannot read encryption key_file"):
        codec.EncryptionKey(key_file=str(tmp_path / "missing"))


def test_key_file_readable_by_others_is_used_with_a_warning(tmp_path):
    (tmp_path / "k").write_text("a passphrase in a file\n")
    os.chmod(tmp_path / "k", 0o644)
    pop_warnings()
    codec.EncryptionKey(key_file=str(tmp_path / "k"))
    warnings = pop_warnings()
    assert len(warnings) == 1 and "mode 0644" in warnings[0] and "chmod 600" in warnings[0]


def test_truncated_compressed_stream_is_detected(tmp_path):
    write(tmp_path / "a", None, "zstd")
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes()[:-50])
    with pytest.raises(OpsError, match="truncated"):
        read(tmp_path / "b")


def test_concatenated_gzip_members_are_read_whole(tmp_path):
    (tmp_path / "a.gz").write_bytes(gzip.compress(b"one ") + gzip.compress(b"two"))
    assert read(tmp_path / "a.gz") == (b"one two", ["gzip"])


@pytest.mark.parametrize("kind, level, words", [("zstd", 0, "1-22"), ("zstd", 23, "1-22"), ("gzip", 10, "1-9"),
                                                ("gzip", -1, "1-9"), ("none", 3, "compression: none")])
def test_out_of_range_compression_levels_are_refused(kind, level, words):
    with pytest.raises(OpsError, match=words):
        codec.check_level(kind, level)


def test_aborted_write_leaves_nothing(tmp_path):
    writer = atomic.AtomicWriter(str(tmp_path / "a"))
    writer.write(b"x" * 1000)
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_reading_ahead_hashes_everything_and_a_reader_that_stops_early_leaves_no_thread(tmp_path):
    import hashlib
    import threading

    path = tmp_path / "big"
    path.write_bytes(PAYLOAD * 4)
    digest = hashlib.sha256()
    assert b"".join(codec.read_chunks(str(path), [digest])) == PAYLOAD * 4
    assert digest.hexdigest() == hashlib.sha256(PAYLOAD * 4).hexdigest()
    chunks = codec.read_chunks(str(path))
    next(chunks)
    chunks.close()
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]


def test_a_read_error_reaches_the_reader(tmp_path):
    with pytest.raises(IsADirectoryError):
        list(codec.read_chunks(str(tmp_path)))
