"""The exec wrapping of a container's tools: secrets never reach argv, the container is named by id, a killed tool is
found by its token; and a relay that reaches a port inside a network namespace."""

from __future__ import annotations

import os
import socket

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _container
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError


@pytest.fixture
def box():
    return _container.Container({"Id": "f" * 64, "Name": "/db", "State": {"Pid": 1}, "Config": {"User": ""}},
                                "unix:///run/engine.sock", None)


def test_secrets_travel_by_name_and_host_paths_become_container_paths(box, monkeypatch):
    monkeypatch.setattr(_container.shutil, "which", lambda name: "/usr/bin/docker")
    box.user = "postgres"
    env = box.env({"PGPASSWORD": "pa'ss=word é", "PGPORT": 5432, "PGSSLMODE": None})
    argv, cli_env, token = box.wrap(["pg_restore", "--list"], env)
    assert all("pa'ss=word" not in arg for arg in argv)
    assert cli_env["PGPASSWORD"] == "pa'ss=word é" and cli_env["PGPORT"] == "5432" and "PGSSLMODE" not in cli_env
    assert cli_env["DOCKER_HOST"] == "unix:///run/engine.sock" and cli_env[_container.TOKEN_VAR] == token
    assert argv[:5] == ["/usr/bin/docker", "exec", "-i", "-e", _container.TOKEN_VAR]
    assert argv[5:7] == ["-u", "postgres"]
    at = argv.index("f" * 64)  # by id: a name is never an option
    assert argv[at + 1] == "/usr/bin/env" and argv[-2:] == ["pg_restore", "--list"]
    unset = argv[at + 2:-2]
    assert unset[::2] == ["-u"] * len(_container.UNSET) and set(unset[1::2]) == set(_container.UNSET)
    assert "-e" in argv and "PGPASSWORD" in argv


def test_a_missing_docker_cli_is_named(box, monkeypatch):
    monkeypatch.setattr(_container.shutil, "which", lambda name: None)
    with pytest.raises(OpsError, match="the docker CLI is needed on this host to run pg_dump inside container db"):
        box.wrap(["pg_dump"], box.env({}))


def test_no_container_options_means_the_host_path(monkeypatch):
    assert _container.resolve({"container": None, "compose_service": None}) is None
    assert _container.of({}) is None


def test_the_relay_carries_a_connection_to_the_port_behind_it(box, monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    monkeypatch.setattr(box, "connect_tcp", lambda host, port_, timeout: socket.create_connection((host, port_), timeout))
    directory = box.unix_relay("127.0.0.1", port, 5)
    assert oct(os.stat(directory).st_mode & 0o777) == "0o700" and len(directory) + 20 < 107
    client = socket.socket(socket.AF_UNIX)
    client.connect(os.path.join(directory, ".s.PGSQL.%d" % port))
    peer, _address = server.accept()
    client.sendall(b"ping")
    assert peer.recv(4) == b"ping"
    peer.sendall(b"pong")
    assert client.recv(4) == b"pong"
    for end in (client, peer, server):
        end.close()
    box.relays[("127.0.0.1", port)].close()
    assert not os.path.exists(directory)


def test_kill_finds_only_the_exec_with_its_token(box, monkeypatch):
    killed = []
    monkeypatch.setattr(_container.os, "kill", lambda pid, sig: killed.append(pid))
    box.kill("no-such-token-%d" % os.getpid())
    assert killed == []
