"""Databases inside containers: real PostgreSQL and Redis in containers of a real Docker engine, no published port
(network_mode none), reached with container / compose_service; every tool runs inside the container."""

from __future__ import annotations

import json
import time

import pytest

from argv_scan import ArgvScanner
from proc_helpers import module_process, signal_process

PG_PASSWORD = "pg'pw=\"s3cret\" é"
REDIS_PASSWORD = "redis pw'=1"
DB = "app 'x'=ü"  # quotes, =, multibyte: the names a hostile user gives
PROJECT = "platform"


def compose_yaml(image, volumes, pg_command, redis_command):
    def service(name, command, user, env):  # $$: Compose would interpolate $VAR itself
        return {"image": image, "network_mode": "none", "user": user, "command": ["sh", "-c", command.replace("$", "$$")],
                "volumes": volumes, "environment": env, "stop_grace_period": "2s",
                "healthcheck": {"test": ["CMD-SHELL", "test -S /var/run/postgresql/.s.PGSQL.5432" if name == "db"
                                         else "REDISCLI_AUTH=\"$$REDIS_PASSWORD\" redis-cli ping | grep -q PONG"],
                                "interval": "1s", "retries": 30}}
    return json.dumps({"services": {
        # a service file and a host address in the container's environment that point elsewhere: libpq would prefer
        # them to PGHOST/PGPORT
        "db": service("db", "printf '[decoy]\\nhost=127.0.0.1\\nhostaddr=127.0.0.2\\nport=5499\\n' > /tmp/pg_service.conf; "
                      + pg_command, "postgres", {"POSTGRES_PASSWORD": PG_PASSWORD, "PGSERVICE": "decoy",
                                                 "PGSERVICEFILE": "/tmp/pg_service.conf", "PGHOSTADDR": "127.0.0.2"}),
        "cache": service("cache", redis_command, "0", {"REDIS_PASSWORD": REDIS_PASSWORD}),
    }})


@pytest.fixture(scope="module")
def platform(docker_engine, tmp_path_factory):
    """A Compose project with db (PostgreSQL) and cache (Redis), healthy, no network at all."""
    image = docker_engine.build_db_image()
    src = tmp_path_factory.mktemp("platform")
    (src / "compose.yaml").write_text(compose_yaml(image, docker_engine.db_volumes(), docker_engine.postgres_command(),
                                                   docker_engine.redis_command()))
    docker_engine.docker("compose", "-p", PROJECT, "--project-directory", str(src), "up", "-d", "--wait", cwd=str(src))
    psql(docker_engine, "CREATE DATABASE %s" % ident(DB))
    psql(docker_engine, "CREATE TABLE items AS SELECT g AS id, repeat('ü', 50) || g AS v FROM generate_series(1, 20000) g; "
                        "CREATE INDEX ON items (id)", db=DB)
    redis_cli(docker_engine, "sh", "-c", "for i in $(seq 1 300); do echo \"SET key:$i v$i\"; done | redis-cli > /dev/null")
    yield {"engine": docker_engine, "src": src}
    docker_engine.docker("compose", "-p", PROJECT, "--project-directory", str(src), "down", "-v", "-t", "1", cwd=str(src),
                         check=False)


def ident(name):
    return '"%s"' % name.replace('"', '""')


def conninfo(db):  # host and port written in: the container's PGSERVICE points elsewhere
    return "dbname='%s' host=/var/run/postgresql port=5432" % db.replace("\\", "\\\\").replace("'", "\\'")


def psql(engine, sql, db="postgres"):
    return engine.docker("exec", "-e", "PGPASSWORD", "%s-db-1" % PROJECT, "env", "-u", "PGHOSTADDR", "-u", "PGSERVICE",
                         "psql", "-XAt", "-v", "ON_ERROR_STOP=1", "-d", conninfo(db), "-c", sql,
                         env={"PGPASSWORD": PG_PASSWORD}).stdout.strip()


def redis_cli(engine, *argv):
    return engine.docker("exec", "-e", "REDISCLI_AUTH", "%s-cache-1" % PROJECT, *argv,
                         env={"REDISCLI_AUTH": REDIS_PASSWORD}).stdout.strip()


def reach(engine, service, **extra):
    options = {"compose_service": service, "project_name": PROJECT, "docker_host": engine.host,
               "login_password": PG_PASSWORD if service == "db" else REDIS_PASSWORD}
    options.update(extra)
    return options


def task(module, options, register="out"):
    return "- name: %s\n  runbook.ops.%s: %s\n  register: %s\n" % (module, module, json.dumps(options), register)


def files(store):
    return sorted(p.name for p in store.rglob("*") if p.is_file() and not p.name.endswith(".lock")) if store.exists() else []


def test_postgres_in_a_compose_service_is_backed_up_verified_and_restored_with_no_published_port(ansible, platform, tmp_path):
    engine = platform["engine"]
    store = tmp_path / "store"
    backup = dict(reach(engine, "db"), db=DB, globals=True, store={"dir": str(store)})
    planned = ansible.play(task("pg_backup", backup), check=True)
    assert planned.rc == 0, planned
    assert files(store) == []  # check mode: nothing written
    secrets = [PG_PASSWORD]
    content = "SELECT count(*) || ':' || md5(string_agg(id || '=' || v, ',' ORDER BY id)) FROM items"
    original = psql(engine, content, db=DB)
    with ArgvScanner(secrets, [b"pg_dump", b"pg_restore", b"psql"]) as scan:
        made = ansible.play(task("pg_backup", backup))
        assert made.rc == 0, made
        result = made.task("pg_backup")["result"]["backup"]
        assert result["verified"] and result["toc_entries"] >= 3 and result["db_size"] > 0
        manifest = json.loads(open(result["manifest"]).read())
        assert manifest["container"]["name"] == "%s-db-1" % PROJECT and manifest["server"] == "container %s-db-1" % PROJECT
        assert "15." in manifest["tool_versions"]["pg_dump"]  # the container's own pg_dump
        psql(engine, "DELETE FROM items WHERE id > 100", db=DB)
        restored = ansible.play(task("pg_restore", dict(reach(engine, "db"), db=DB, src="latest", force=True,
                                                        store={"dir": str(store)},
                                                        verify_queries=[{"query": "SELECT count(*) FROM items",
                                                                         "expected": 20000}])))
    assert restored.rc == 0, restored
    report = restored.task("pg_restore")["result"]["restore"]
    assert report["container"]["name"] == "%s-db-1" % PROJECT and report["safety_backup"]["id"]
    assert psql(engine, content, db=DB) == original  # row for row what was backed up
    assert report["previous"] and psql(engine, "SELECT count(*) FROM items", db=report["previous"]) == "100"
    assert scan.leaks == [] and any(b"docker\x00exec" in c for c in scan.seen)
    for run in (made, restored):
        assert PG_PASSWORD not in run.stdout + run.stderr + json.dumps(run.results)


def test_what_would_put_files_in_the_container_is_refused_before_anything_changes(ansible, platform, tmp_path):
    """The module never reads or writes the container's files (a process there could link them to the host's):
    directory-format dumps and in_place restores are refused; a swap restore streams with one job."""
    engine = platform["engine"]
    store = tmp_path / "store"
    made = ansible.play(task("pg_backup", dict(reach(engine, "db"), db=DB, format="directory", store={"dir": str(store)})))
    assert made.rc != 0 and "format directory with a container" in made.task("pg_backup")["result"]["msg"]
    assert files(store) == []
    made = ansible.play(task("pg_backup", dict(reach(engine, "db"), db=DB, store={"dir": str(store)})))
    assert made.rc == 0, made
    copy = "copy of %s" % DB
    before = psql(engine, "SELECT count(*) FROM pg_database")
    in_place = ansible.play(task("pg_restore", dict(reach(engine, "db"), db=copy, backup_db=DB, src="latest",
                                                    mode="in_place", store={"dir": str(store)})))
    assert in_place.rc != 0 and "mode in_place with a container" in in_place.task("pg_restore")["result"]["msg"]
    assert psql(engine, "SELECT count(*) FROM pg_database") == before
    swap = ansible.play(task("pg_restore", dict(reach(engine, "db"), db=copy, backup_db=DB, src="latest", jobs=4,
                                                store={"dir": str(store)}, compare_with=DB)))
    assert swap.rc == 0, swap
    report = swap.task("pg_restore")["result"]["restore"]
    assert report["comparison"]["match"] and report["jobs"] == 1
    leftovers = engine.docker("exec", "%s-db-1" % PROJECT, "sh", "-c", "ls -A /tmp").stdout.split()
    assert [name for name in leftovers if name.startswith(".")] == []  # nothing was put in the container


def redis_content(engine):
    keys = sorted(redis_cli(engine, "redis-cli", "--scan").split())
    return dict(zip(keys, redis_cli(engine, "redis-cli", "MGET", *keys).split("\n")))


def test_redis_in_a_container_backed_up_and_restored_live(ansible, platform, tmp_path):
    engine = platform["engine"]
    store = {"dir": str(tmp_path / "store")}
    by_name = {"container": "%s-cache-1" % PROJECT, "docker_host": engine.host, "login_password": REDIS_PASSWORD}
    original = redis_content(engine)
    with ArgvScanner([REDIS_PASSWORD], [b"redis-cli"]) as scan:
        run = ansible.play(task("redis_backup", dict(by_name, name="cache", method="replication", store=store),
                                register="replicated") +
                           task("redis_backup", dict(by_name, name="cache", store=store), register="saved"))
    assert scan.leaks == [] and any(b"--rdb" in c for c in scan.seen)
    assert run.rc == 0, run
    results = [r["result"]["backup"] for r in run.results if r["task"] == "redis_backup"]
    assert [r["method"] for r in results] == ["replication", "replication"]  # auto never reads the container's files
    assert all(r["keys"] == {"0": 300} and r["verified"] for r in results)
    refused = ansible.play(task("redis_backup", dict(by_name, name="cache", method="bgsave", store=store)))
    assert refused.rc != 0 and "use method replication" in refused.task("redis_backup")["result"]["msg"]
    redis_cli(engine, "redis-cli", "FLUSHALL")
    with ArgvScanner([REDIS_PASSWORD], [b"redis-cli"]) as scan:  # its safety backup runs redis-cli in the container
        restored = ansible.play(task("redis_restore", dict(by_name, name="cache", src="latest", store=store)))
    assert scan.leaks == []
    assert restored.rc == 0, restored
    report = restored.task("redis_restore")["result"]["restore"]
    assert report["restored"] == 300 and report["per_db"]["0"]["transport"] == "stream"
    assert redis_content(engine) == original
    for result in run.results + restored.results:
        assert REDIS_PASSWORD not in json.dumps(result)


def test_health_probe_reaches_servers_in_containers_and_names_what_is_wrong(ansible, platform):
    engine = platform["engine"]
    engine.docker("create", "--name", "stopped-db", engine.build_db_image(), "true")
    targets = [dict(reach(engine, "db"), type="postgres", query="SELECT count(*) FROM pg_database"),
               dict(reach(engine, "cache"), type="redis", info={"role": "master"}),
               {"type": "postgres", "container": "stopped-db", "docker_host": engine.host, "required": False},
               {"type": "redis", "container": "no-such-container", "docker_host": engine.host, "required": False}]
    run = ansible.play(task("health_probe", {"targets": targets}))
    assert run.rc == 0, run
    rows = {r["name"]: r for r in run.task("health_probe")["result"]["results"]}
    assert rows["postgres://%s.db:5432" % PROJECT]["status"] == "healthy"
    assert rows["redis://%s.cache:6379" % PROJECT]["detail"].startswith("PONG")
    assert "not running" in rows["postgres://stopped-db:5432"]["error"]
    assert "no container named 'no-such-container'" in rows["redis://no-such-container:6379"]["error"]


@pytest.mark.parametrize("case", ["missing", "stopped", "no tool", "no server", "compose service absent", "unknown container_user"])
def test_a_container_that_is_missing_stopped_or_lacks_the_tool_fails_before_anything_is_written(
        ansible, platform, tmp_path, case):
    engine = platform["engine"]
    image = engine.build_db_image()
    name = "case-%s" % case.replace(" ", "-")
    engine.docker("rm", "-f", name, check=False)
    store = tmp_path / "store"
    if case == "stopped":
        engine.docker("create", "--name", name, image, "true")
    elif case == "no tool":  # a Redis server whose container has no redis-cli on its PATH
        engine.docker("run", "-d", "--name", name, "--network", "none", "-e", "PATH=/nowhere", *sum(
            (["-v", v] for v in engine.db_volumes()), []), image, "/usr/bin/redis-server", "--port", "6379")
    elif case in ("no server", "unknown container_user"):
        engine.docker("run", "-d", "--name", name, "--network", "none", *sum((["-v", v] for v in engine.db_volumes()), []),
                      image, "sleep", "600")
    if case == "compose service absent":
        options = dict(reach(engine, "db"), compose_service="worker")
    elif case == "unknown container_user":
        options = dict(reach(engine, "db"), container_user="nosuchuser")
    else:
        options = {"container": name, "docker_host": engine.host}
    module = "redis_backup" if case == "no tool" else "pg_backup"
    options.update({"store": {"dir": str(store)}, "method": "replication"} if module == "redis_backup"
                   else {"db": DB, "store": {"dir": str(store)}})
    run = ansible.play(task(module, options))
    msg = run.task(module)["result"]["msg"]
    expected = {"missing": "no container named", "stopped": "not running", "no tool": "has no redis-cli",
                "no server": "nothing answers on 127.0.0.1:5432 inside container", "compose service absent": "no running container of service 'worker'",
                "unknown container_user": "container_user 'nosuchuser' is not a user of container"}
    assert run.rc != 0 and expected[case] in msg, msg
    assert files(store) == []
    engine.docker("rm", "-f", name, check=False)


def test_sigterm_half_way_stops_the_tool_inside_the_container_and_keeps_nothing(ansible, platform, tmp_path):
    engine = platform["engine"]
    store = tmp_path / "store"
    # a session holding an exclusive lock makes pg_dump inside the container wait on its first table
    blocker = engine.docker("exec", "-d", "-e", "PGPASSWORD", "%s-db-1" % PROJECT, "env", "-u", "PGHOSTADDR", "-u",
                            "PGSERVICE", "psql", "-X", "-d", conninfo(DB), "-c",
                            "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)",
                            env={"PGPASSWORD": PG_PASSWORD})
    assert blocker.returncode == 0
    finish = ansible.start(task("pg_backup", dict(reach(engine, "db"), db=DB, store={"dir": str(store)})))
    deadline = time.monotonic() + 60
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'runbook.ops' AND wait_event_type = 'Lock'"
    while psql(engine, waiting) == "0":
        assert time.monotonic() < deadline, "pg_dump never started in the container"
        time.sleep(0.2)
    signal_process(module_process("pg_backup", ansible))
    run = finish()
    assert run.rc != 0
    assert "stopped by a signal" in run.task("pg_backup")["result"]["msg"]
    time.sleep(0.5)
    inside = engine.docker("exec", "%s-db-1" % PROJECT, "sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    assert "pg_dump" not in inside  # the tool in the container was killed, not left waiting for its lock
    assert files(store) == []
    psql(engine, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' "
                 "AND pid <> pg_backend_pid()")
