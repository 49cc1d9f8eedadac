"""Fixtures of real servers and a runner of real ansible-playbook for the integration tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "harness"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from servers import DockerEngine, PostgresServer, RedisServer, S3Server  # noqa: E402
from pg_helpers import databases_like, drop_database, make_database, quoted, sql  # noqa: E402


def _world_traversable_tmpdir(prefix):
    """pytest's tmp dirs are 0700, which the postgres user cannot enter."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    return Path(path)


@pytest.fixture(scope="session")
def collections_path():
    """An ansible_collections tree whose runbook/ops is this checkout, so tests run the code as it is."""
    root = _world_traversable_tmpdir("runbook-collections-")
    target = root / "ansible_collections" / "runbook"
    target.mkdir(parents=True)
    (target / "ops").symlink_to(REPO)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg():
    base = _world_traversable_tmpdir("runbook-pg-")
    server = PostgresServer(base).start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def database(pg):
    """A fresh database with schemas, indexes, a view, a function, large objects, non-ASCII text and pgcrypto."""
    name = make_database(pg)
    yield name
    drop_database(pg, name)


@pytest.fixture
def names(pg):
    """Databases (exact names, whatever characters they hold) a test creates, dropped afterwards with their scratch
    and previous databases."""
    made = []
    yield made
    for name in made:
        for found in [name] + databases_like(pg, name[:20]):
            sql(pg, "postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % quoted(found))


@pytest.fixture(scope="session")
def redis_plain(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-plain")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_auth(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), password="redis-secret-pw",
                         acl_users={"probe": "acl-secret-pw"}).start()
    yield server
    server.stop()


@pytest.fixture
def servers(tmp_path):
    """A factory of Redis servers private to one test, stopped afterwards."""
    started = []

    def make(name, **kwargs):
        server = RedisServer(tmp_path / name, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    """db1, cache1 and two app hosts (each with its own Docker engine): systemd machines reached over SSH."""
    from fleet import DEMO, Fleet

    if os.environ.get("RUNBOOK_FLEET_REUSE"):  # development: a fleet already up (make demo-fleet), left running
        yield Fleet.attach(os.environ["RUNBOOK_FLEET_REUSE"])
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one fleet per run: its tests must share a worker
        claim = tmp_path_factory.getbasetemp().parent / "fleet.worker"
        try:
            with open(claim, "x") as handle:
                handle.write(os.environ["PYTEST_XDIST_WORKER"])
        except FileExistsError:
            pytest.fail("the fleet tests were sent to two xdist workers (%s and %s): run with --dist loadgroup on a "
                        "pytest that keeps xdist_group (requirements-dev.txt pins it)"
                        % (claim.read_text(), os.environ["PYTEST_XDIST_WORKER"]))
    running = Fleet(tmp_path_factory.mktemp("fleet"), DEMO).up()
    yield running
    running.down()


@pytest.fixture(scope="session")
def docker_engine():
    base = Path(tempfile.mkdtemp(prefix="rbk-docker-", dir="/tmp"))
    engine = DockerEngine(base).start()
    yield engine
    engine.stop()
    shutil.rmtree(base, ignore_errors=True)


class PlaybookRun:
    def __init__(self, proc, results):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.results = results

    def task(self, name, host=None):
        """The result of the last run of the task named ``name`` (on ``host`` when given)."""
        matches = [r for r in self.results if r["task"] == name and host in (None, r["host"])]
        assert matches, "task %r did not run; ran: %s\n%s" % (name, [r["task"] for r in self.results], self.stdout[-3000:])
        return matches[-1]

    @property
    def output(self):
        """Everything ansible-playbook printed (warnings go to stderr)."""
        return self.stdout + self.stderr

    def __repr__(self):
        failed = ["%s: %s" % (r["task"], r["result"].get("msg")) for r in self.results if r["status"] == "failed"]
        return "<PlaybookRun rc=%s failed: %s>\n%s\n%s" % (self.rc, failed, self.stdout[-3000:], self.stderr[-2000:])


class Ansible:
    """Runs ansible-playbook for real against localhost with the collection from this checkout."""

    def __init__(self, workdir, collections_path):
        self.workdir = Path(workdir)
        self.collections_path = collections_path
        self.inventory = self.workdir / "inventory.ini"
        self.inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
        self.runs = 0

    def env(self, results_file):
        env = dict(os.environ)
        env.update({
            # this checkout's runbook.ops first; the community collections make install put into collections/
            "ANSIBLE_COLLECTIONS_PATH": "%s:%s" % (self.collections_path, REPO / "collections"),
            "ANSIBLE_CALLBACK_PLUGINS": str(REPO / "tests" / "integration" / "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "record_results",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
            # modules run from here, so a test can tell its own module processes from another test's
            "ANSIBLE_REMOTE_TEMP": str(self.workdir / "remote-tmp"),
            "RUNBOOK_TEST_RESULTS": str(results_file),
        })
        return env

    def play(self, tasks, check=False, diff=False, verbosity=0, extra_vars=None, playbook_path=None,
             inventory=None, extra_args=()):
        """Run a one-play playbook of ``tasks`` (YAML text) on localhost, or the playbook at ``playbook_path``."""
        return self.start(tasks, check, diff, verbosity, extra_vars, playbook_path, inventory, extra_args)()

    def start(self, tasks, check=False, diff=False, verbosity=0, extra_vars=None, playbook_path=None,
              inventory=None, extra_args=()):
        """Start ansible-playbook in the background; returns a function that waits for it and gives the PlaybookRun."""
        self.runs += 1
        if playbook_path is None:
            playbook_path = self.workdir / ("play%d.yml" % self.runs)
            body = "- hosts: localhost\n  gather_facts: false\n  tasks:\n" + textwrap.indent(textwrap.dedent(tasks), "    ")
            playbook_path.write_text(body)
        results_file = self.workdir / ("results%d.jsonl" % self.runs)
        argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory or self.inventory), str(playbook_path)]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        if verbosity:
            argv.append("-" + "v" * verbosity)
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        argv += list(extra_args)
        proc = subprocess.Popen(argv, env=self.env(results_file), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=self.workdir)

        def finish(timeout=600):
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            results = []
            if results_file.exists():
                results = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
            return PlaybookRun(subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr), results)

        return finish


@pytest.fixture
def ansible(tmp_path, collections_path):
    return Ansible(tmp_path, collections_path)


@pytest.fixture(scope="module")
def module_ansible(tmp_path_factory, collections_path):
    """One Ansible runner for a whole test module (for state that several tests build on, such as the fleet)."""
    return Ansible(tmp_path_factory.mktemp("ansible"), collections_path)
