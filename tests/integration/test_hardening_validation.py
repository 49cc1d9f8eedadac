"""Issue 8 A15: values that must be refused before any work, each with a message naming the option."""

from __future__ import annotations

import json

import pytest

from test_health_probe import PROBE, probe_task

CASES = [
    ("pg_backup", {"retention": {"keep_last": -1}}, "retention.keep_last is -1"),
    ("pg_backup", {"retention": {"keep_days": -3}}, "retention.keep_days is -3"),
    ("pg_backup", {"skip_if_newer_than": "-1h"}, "skip_if_newer_than is '-1h'"),
    ("pg_backup", {"skip_if_newer_than": "inf"}, "skip_if_newer_than is 'inf'"),
    ("pg_backup", {"skip_if_newer_than": "1e400d"}, "skip_if_newer_than is '1e400d'"),
    ("pg_backup", {"skip_if_newer_than": "99999999w"}, "more than 100 years"),
    ("pg_backup", {"compression_level": 99}, "compression_level 99 is out of range for zstd: use 1-22"),
    ("pg_backup", {"compression": "gzip", "compression_level": 0}, "out of range for gzip: use 1-9"),
    ("pg_backup", {"db": "app/../../etc"}, "db 'app/../../etc' cannot be part of a backup file name"),
    ("pg_backup", {"db": "é" * 40}, "PostgreSQL names are at most 63 bytes"),
    ("pg_backup", {"jobs": 0}, "jobs is 0"),
    ("pg_backup", {"login_port": 70000}, "login_port is 70000"),
    ("pg_backup", {"store": "FILE"}, "is a file, not a directory"),
    ("pg_restore", {"src": "latest", "jobs": -1}, "jobs is -1"),
    ("pg_restore", {"src": "latest", "db": "a/b"}, "cannot be part of a backup file name"),
    ("pg_restore", {"src": "  "}, "src is empty"),
    ("pg_restore", {"src": "latest", "min_tables": -1}, "min_tables is -1"),
    ("redis_backup", {"name": "cache/01"}, "name 'cache/01' cannot be part of a backup file name"),
    ("redis_backup", {"idle_timeout": 0}, "idle_timeout is 0"),
    ("redis_backup", {"compression": "none", "compression_level": 3}, "compression: none"),
    ("redis_restore", {"src": "latest", "key_pattern": ""}, "key_pattern is empty"),
    ("redis_restore", {"src": "latest", "db_map": {"0": "x"}}, "db_map entry '0': 'x' is not a pair of db numbers"),
    ("redis_restore", {"src": "latest", "db_map": {"zero": 1}}, "db_map entry 'zero'"),
    ("redis_restore", {"src": "latest", "batch_size": 0}, "batch_size is 0"),
    ("redis_restore", {"src": "latest", "name": "../x"}, "cannot be part of a backup file name"),
    ("redis_restore", {"src": "latest", "mode": "file", "service": "redis", "key_pattern": "a*"},
     "mode file replaces the whole dataset"),
]


@pytest.mark.parametrize("module, options, words", CASES, ids=["%s-%s" % (c[0], "-".join(c[1])) for c in CASES])
def test_a15_bad_values_are_refused_before_any_work(ansible, tmp_path, module, options, words):
    store = {"dir": str(tmp_path / "store")}
    spec = {"store": store}
    if module.startswith("pg_"):
        spec.update(db="app", login_host="127.0.0.1", login_port=1)
    else:
        spec.update(login_host="127.0.0.1", login_port=1)
    spec.update(options)
    if spec.get("store") == "FILE":
        (tmp_path / "afile").write_text("not a directory")
        spec["store"] = {"dir": str(tmp_path / "afile")}
    run = ansible.play("- name: Try\n  runbook.ops.%s: %s\n" % (module, json.dumps(spec)))
    assert run.rc != 0
    msg = run.task("Try")["result"]["msg"]
    assert words in msg, msg
    assert "cannot connect" not in msg and "cannot reach" not in msg  # refused before any connection
    assert not (tmp_path / "store").exists()


PROBE_CASES = [
    ({"type": "http", "url": "http://127.0.0.1:99999/health"}, "not a valid URL"),
    ({"type": "http", "url": "http://[::1/health"}, "IPv6 addresses in brackets"),
    ({"type": "http", "url": "http://[fe80::1%25eth0:80/"}, "not a valid URL"),
    ({"type": "redis", "db": "two"}, "a Redis db is a number"),
    ({"type": "redis", "db": -1}, "a Redis db is a number"),
    ({"type": "tcp", "host": "h", "port": 0}, "a tcp target needs field 'port'"),
    ({"type": "postgres", "login_port": 65536}, "field 'login_port' is 65536"),
]


@pytest.mark.parametrize("target, words", PROBE_CASES)
def test_a15_bad_probe_targets_are_refused_before_any_probe(ansible, target, words):
    run = ansible.play(probe_task([dict(target, name="bad")]))
    assert run.rc != 0
    assert words in run.task(PROBE)["result"]["msg"], run.task(PROBE)["result"]["msg"]
