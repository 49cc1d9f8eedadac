"""A container's files seen from the host, and the exec wrapping: symlinks never lead onto the host, secrets never
reach argv, and host paths under the container's root become the container's own paths."""

from __future__ import annotations

import os

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _container
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError


@pytest.fixture
def box(tmp_path):
    """A Container whose root is a directory laid out like a Debian image: /var/run -> /run (absolute)."""
    root = tmp_path / "root"
    (root / "run" / "postgresql").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\npostgres:x:999:998::/var/lib/postgresql:/bin/sh\n")
    (root / "escape").symlink_to("../../../../../../etc")
    (root / "loop").symlink_to("loop")
    container = _container.Container({"Id": "f" * 64, "Name": "/db", "State": {"Pid": 1}, "Config": {"User": ""}},
                                     "unix:///run/engine.sock", None)
    container.root = str(root)
    return container


def test_absolute_links_resolve_inside_the_container(box):
    assert box.host_path("/var/run/postgresql") == box.root + "/run/postgresql"
    assert box.host_path("var/run/../etc/passwd") == box.root + "/etc/passwd"


def test_a_link_that_climbs_out_stays_inside(box):
    assert box.host_path("/escape/passwd") == box.root + "/etc/passwd"
    assert box.host_path("/../../etc/passwd") == box.root + "/etc/passwd"


def test_a_link_loop_is_refused(box):
    with pytest.raises(OpsError, match="too many symbolic links"):
        box.host_path("/loop/x")


def test_exec_ids_from_the_containers_passwd(box):
    assert box.exec_ids() == (0, 0)
    box.user, box.cache = "postgres", {}
    assert box.exec_ids() == (999, 998)
    box.user, box.cache = "1234:55", {}
    assert box.exec_ids() == (1234, 55)
    box.user, box.cache = "nobody-here", {}
    with pytest.raises(OpsError, match="not a user of container db"):
        box.exec_ids()


def test_secrets_travel_by_name_and_host_paths_become_container_paths(box, monkeypatch):
    monkeypatch.setattr(_container.shutil, "which", lambda name: "/usr/bin/docker")
    box.user = "postgres"
    env = box.env({"PGPASSWORD": "pa'ss=word é", "PGPORT": 5432, "PGSSLMODE": None})
    scratch = box.root + "/tmp/.restore-1"
    argv, cli_env, token = box.wrap(["pg_restore", "--list", scratch + "/archive.dump"], env)
    assert all("pa'ss=word" not in arg for arg in argv)
    assert cli_env["PGPASSWORD"] == "pa'ss=word é" and cli_env["PGPORT"] == "5432" and "PGSSLMODE" not in cli_env
    assert cli_env["DOCKER_HOST"] == "unix:///run/engine.sock" and cli_env[_container.TOKEN_VAR] == token
    assert argv[:5] == ["/usr/bin/docker", "exec", "-i", "-e", _container.TOKEN_VAR]
    assert argv[5:7] == ["-u", "postgres"]
    assert argv[-4:] == ["f" * 64, "pg_restore", "--list", "/tmp/.restore-1/archive.dump"]  # by id: a name is never an option
    assert "-e" in argv and "PGPASSWORD" in argv


def test_a_missing_docker_cli_is_named(box, monkeypatch):
    monkeypatch.setattr(_container.shutil, "which", lambda name: None)
    with pytest.raises(OpsError, match="the docker CLI is needed on this host to run pg_dump inside container db"):
        box.wrap(["pg_dump"], box.env({}))


def test_no_container_options_means_the_host_path(monkeypatch):
    assert _container.resolve({"container": None, "compose_service": None}) is None
    assert _container.of({}) is None


def test_kill_finds_only_the_exec_with_its_token(box, monkeypatch):
    killed = []
    monkeypatch.setattr(_container.os, "kill", lambda pid, sig: killed.append(pid))
    box.kill("no-such-token-%d" % os.getpid())
    assert killed == []
