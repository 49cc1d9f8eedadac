"""mode file puts the decoded RDB in the data directory without following what the server's user may put there."""

from __future__ import annotations

import os

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _redis_file_swap as swap


def test_the_rdb_is_linked_with_the_servers_mode_and_owner(tmp_path):
    scratch, data = tmp_path / "scratch", tmp_path / "data"
    scratch.mkdir()
    data.mkdir()
    (scratch / "dump.rdb").write_bytes(b"REDIS0011payload")
    staged = data / ".dump.rdb.restore"
    swap._stage(str(scratch / "dump.rdb"), str(staged), 0o640, os.getuid(), os.getgid())
    assert staged.read_bytes() == b"REDIS0011payload" and oct(staged.stat().st_mode & 0o777) == "0o640"


def test_a_symlink_planted_at_the_staged_name_is_replaced_not_followed(tmp_path):
    scratch, data = tmp_path / "scratch", tmp_path / "data"
    scratch.mkdir()
    data.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    os.chmod(victim, 0o600)
    (scratch / "dump.rdb").write_bytes(b"REDIS0011payload")
    staged = data / ".dump.rdb.restore"
    staged.symlink_to(victim)
    swap._stage(str(scratch / "dump.rdb"), str(staged), 0o644, os.getuid(), os.getgid())
    assert not staged.is_symlink() and staged.read_bytes() == b"REDIS0011payload"
    assert victim.read_text() == "keep me" and oct(victim.stat().st_mode & 0o777) == "0o600"


def test_across_filesystems_the_copy_refuses_a_name_planted_after_the_cleanup(tmp_path, monkeypatch):
    import errno

    scratch, data = tmp_path / "scratch", tmp_path / "data"
    scratch.mkdir()
    data.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (scratch / "dump.rdb").write_bytes(b"REDIS0011payload")
    staged = data / ".dump.rdb.restore"

    def cross_device_and_race(source, target):
        os.symlink(str(victim), target)  # the server's user wins the race after the cleanup
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(swap.os, "link", cross_device_and_race)
    with pytest.raises(OSError):
        swap._stage(str(scratch / "dump.rdb"), str(staged), 0o644, os.getuid(), os.getgid())
    assert victim.read_text() == "keep me"
