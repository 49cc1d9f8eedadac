"""A backup is checked while it is written (decoded, compared, inspected) and read back against its sha256."""

from __future__ import annotations

import os
import threading

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _backup
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import atomic, codec, manifest as mf, stream_check
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

PAYLOAD = os.urandom(2 * codec.CHUNK + 777) + b"text " * 200000


def checker_threads():
    """Threads of this change still alive (other tests' daemon threads may come and go meanwhile)."""
    return [t for t in threading.enumerate() if t.name in ("stream-check", "read-ahead", "write-out")]


def write_checked(path, compression, key=None, inspect=None, tamper=None):
    seen = []

    def default_inspect(chunks):
        seen.append(b"".join(chunks))
        return {"inspected": len(seen[-1])}

    check = stream_check.StreamCheck(key, inspect or default_inspect)
    writer = atomic.AtomicWriter(str(path))
    sink = codec.EncodingSink(writer, compression, None, key, check=check)
    if tamper:
        sink._out = tamper(sink._out)
    try:
        for start in range(0, len(PAYLOAD), 250000):
            sink.write(PAYLOAD[start:start + 250000])
        sink.finish()
        fields = check.finish()
    except BaseException:
        check.abort()
        writer.abort()
        raise
    writer.commit()
    return fields, check, seen


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
@pytest.mark.parametrize("encrypted", [False, True])
def test_the_inspection_sees_exactly_the_dumped_bytes_through_the_decode_path(tmp_path, compression, encrypted):
    key = codec.EncryptionKey(passphrase="p") if encrypted else None
    fields, check, seen = write_checked(tmp_path / "a", compression, key)
    assert fields == {"inspected": len(PAYLOAD)} and seen == [PAYLOAD]
    assert check.layers == codec.expected_layers(compression, encrypted) and check.compared == len(PAYLOAD)


def test_an_inspection_that_stops_early_still_compares_the_whole_stream(tmp_path):
    def head_only(chunks):
        return {"head": next(iter(chunks))[:5]}

    fields, check, _seen = write_checked(tmp_path / "a", "zstd", inspect=head_only)
    assert fields == {"head": PAYLOAD[:5]} and check.compared == len(PAYLOAD)


def flip_one_byte(out):
    """An encoder that damages one byte of what it emits, after the sha256 was taken of the good bytes."""
    state = {"done": False}

    def damaged(data):
        if data and not state["done"] and len(data) > 100:
            state["done"] = True
            data = data[:50] + bytes([data[50] ^ 0xFF]) + data[51:]
        return out(data)
    return damaged


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_an_encoded_stream_that_does_not_decode_to_the_dump_is_refused(tmp_path, compression):
    with pytest.raises(OpsError, match="verification failed|damaged"):
        write_checked(tmp_path / "a", compression, tamper=flip_one_byte)
    assert not os.listdir(tmp_path)


def test_a_stream_cut_short_is_refused(tmp_path):
    def cut(out):
        state = {"emitted": 0}

        def short(data):
            state["emitted"] += len(data)
            return out(data) if state["emitted"] < 500000 else None
        return short

    with pytest.raises(OpsError, match="truncated|fewer than were dumped|ends early"):
        write_checked(tmp_path / "a", "none", tamper=cut)


def test_an_inspection_failure_is_the_write_failure_and_no_thread_is_left(tmp_path):
    def refuse(chunks):
        next(iter(chunks))
        raise OpsError("pg_restore --list rejects the archive: not an archive")

    with pytest.raises(OpsError, match="rejects the archive"):
        write_checked(tmp_path / "a", "zstd", inspect=refuse)
    assert not checker_threads() and not os.listdir(tmp_path)


class Module:
    check_mode = False

    def __init__(self):
        self.no_log_values = set()


class FileJob(_backup.BackupJob):
    kind = "files"
    extension = ".bin"

    def facts(self):
        return {"format": "bin"}

    def produce(self, sink):
        for start in range(0, len(PAYLOAD), 100000):
            sink.write(PAYLOAD[start:start + 100000])
        return {}

    def inspect(self, chunks, manifest):
        return {"bytes_seen": sum(len(data) for data in chunks), "file_named": manifest["file"]}


def job_params(store, **extra):
    return dict({"store": {"dir": str(store)}, "retention": None, "compression": "zstd", "compression_level": None,
                 "md5_sidecar": False, "verify": True, "skip_if_newer_than": None, "lock_timeout": 0, "labels": {},
                 "encryption": None}, **extra)


def test_a_verified_backup_records_the_inspection_and_reads_back_its_sha256(tmp_path):
    backup = FileJob(Module(), job_params(tmp_path), "app").run()["backup"]
    manifest = mf.load_manifest(backup["manifest"])
    assert backup["verified"] is True and manifest["bytes_seen"] == len(PAYLOAD)
    assert manifest["file_named"] == os.path.basename(backup["path"])


def test_bytes_changed_on_disk_after_the_write_fail_the_read_back_and_nothing_is_kept(tmp_path, monkeypatch):
    commit = atomic.AtomicWriter.commit

    def commit_then_rot(writer):
        commit(writer)
        if writer.path.endswith(".zst"):
            with open(writer.path, "r+b") as handle:
                handle.seek(40)
                byte = handle.read(1)
                handle.seek(40)
                handle.write(bytes([byte[0] ^ 1]))

    monkeypatch.setattr(atomic.AtomicWriter, "commit", commit_then_rot)
    with pytest.raises(OpsError, match="reads back with sha256"):
        FileJob(Module(), job_params(tmp_path), "app").run()
    assert not [name for _d, _s, names in os.walk(tmp_path) for name in names if not name.endswith(".lock")]


def test_a_write_out_error_seen_by_the_background_flusher_fails_the_commit(tmp_path, monkeypatch):
    def failing_fdatasync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic, "FLUSH_EVERY", 1024)
    monkeypatch.setattr(atomic.os, "fdatasync", failing_fdatasync)
    writer = atomic.AtomicWriter(str(tmp_path / "a"))
    writer.write(b"x" * 4096)
    with pytest.raises(OpsError, match="Input/output error"):
        writer.write(b"y" * 4096)
        writer.commit()
    assert not os.listdir(tmp_path)


def test_a_check_that_cannot_start_its_file_leaves_no_thread(tmp_path):
    params = job_params(tmp_path)
    job = FileJob(Module(), params, "app")
    with pytest.raises(OpsError, match="cannot write"):
        job.stream(str(tmp_path / "missing-dir" / "x.zst"), job.produce, lambda chunks: {})
    assert not checker_threads()


class GlobalsJob(FileJob):
    def extras(self):
        def produce_globals(sink):
            sink.write(b"CREATE ROLE app;\n" * 1000)
            return {"globals_file": "g"}
        return [(".globals.sql", produce_globals)]


def test_extra_files_are_checked_in_stream_too(tmp_path, monkeypatch):
    checked = []
    real = stream_check.StreamCheck.finish

    def finish(self):
        fields = real(self)
        checked.append(self.compared)
        return fields

    monkeypatch.setattr(stream_check.StreamCheck, "finish", finish)
    backup = GlobalsJob(Module(), job_params(tmp_path), "app").run()["backup"]
    assert backup["verified"] and checked == [len(PAYLOAD), len(b"CREATE ROLE app;\n" * 1000)]
