"""The compose_app role on a private engine: releases from git refs (run from their checkout), idempotent redeploys,
rollback, and a rolling restart during which the service never loses more than one replica."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

# healthy one second after it starts, so a restart is visible as "starting"; a warm shutdown on SIGTERM
GREETING = "it's \"q\" $HOME $${x} \\ = ü"  # quotes, $, backslash, multibyte: written to .env literally
SERVE = "trap 'exit 0' TERM; sleep 1; touch /ready; while true; do sleep 0.2; done"


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args], check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def image(docker_engine):
    return docker_engine.build_busybox_image()


@pytest.fixture
def repo(tmp_path, image):
    """A git repository whose compose file mounts ./static (relative to the checkout): tags v1 and v2."""
    path = tmp_path / "repo"
    (path / "static").mkdir(parents=True)
    compose = {"services": {"web": {"image": image, "init": False, "command": ["sh", "-c", SERVE],
                                    "volumes": ["./static:/static:ro"], "environment": {"GREETING": "${GREETING}"},
                                    "stop_grace_period": "5s",
                                    "healthcheck": {"test": ["CMD", "test", "-f", "/ready"], "interval": "500ms",
                                                    "retries": 1}}}}
    (path / "deploy.yaml").write_text(json.dumps(compose))
    git(tmp_path, "init", "-q", str(path))
    for version in ("one", "two"):
        (path / "static" / "version").write_text(version)
        git(path, "add", "-A")
        git(path, "commit", "-qm", version)
        git(path, "tag", "v1" if version == "one" else "v2")
    return path


def role_play(engine, entry, variables):
    return ("- name: On the private engine\n  environment: %s\n  block:\n"
            "    - name: compose_app %s\n      ansible.builtin.include_role:\n        name: runbook.ops.compose_app\n"
            "        tasks_from: %s\n      vars: %s\n" % (json.dumps(engine.env), entry, entry, json.dumps(variables)))


def exec_out(engine, container, *argv):
    return engine.docker("exec", container, *argv).stdout.strip()


def test_git_releases_run_from_their_checkout_redeploy_idempotently_and_roll_back(ansible, docker_engine, repo, tmp_path):
    engine = docker_engine
    base = {"compose_app_name": "gitapp", "compose_app_dir": str(tmp_path / "app"), "compose_app_repo": "file://%s" % repo,
            "compose_app_repo_file": "deploy.yaml", "compose_app_install_engine": False, "compose_app_pull": "never",
            "compose_app_env": {"GREETING": GREETING}}
    first = ansible.play(role_play(engine, "main", dict(base, compose_app_version="v1")))
    assert first.rc == 0, first
    assert exec_out(engine, "gitapp-web-1", "cat", "/static/version") == "one"  # ./static of the v1 checkout
    assert exec_out(engine, "gitapp-web-1", "sh", "-c", "echo \"$GREETING\"") == GREETING
    assert (tmp_path / "app" / "releases" / "v1" / ".env").stat().st_mode & 0o777 == 0o600

    again = ansible.play(role_play(engine, "main", dict(base, compose_app_version="v1")))
    assert again.rc == 0, again
    assert [r["task"] for r in again.results if r["result"].get("changed")] == []

    second = ansible.play(role_play(engine, "main", dict(base, compose_app_version="v2")))
    assert second.rc == 0, second
    assert exec_out(engine, "gitapp-web-1", "cat", "/static/version") == "two"
    history = json.loads((tmp_path / "app" / "releases.json").read_text())
    assert [entry["version"] for entry in history] == ["v1", "v2"] and history[-1]["previous"] == "v1"

    back = ansible.play(role_play(engine, "rollback", base))
    assert back.rc == 0, back
    assert exec_out(engine, "gitapp-web-1", "cat", "/static/version") == "one"
    assert (tmp_path / "app" / "current").resolve().name == "v1"
    engine.docker("compose", "-p", "gitapp", "down", "-t", "1", check=False)


def healthy_count(engine, project):
    out = engine.docker("ps", "--filter", "label=com.docker.compose.project=%s" % project, "--format", "{{.Status}}",
                        check=False).stdout
    return sum(1 for line in out.splitlines() if "(healthy)" in line)


def test_a_rolling_restart_restarts_every_replica_and_never_more_than_one_at_a_time(ansible, docker_engine, image, tmp_path):
    engine = docker_engine
    src = tmp_path / "src"
    src.mkdir()
    (src / "compose.yaml").write_text(json.dumps({"services": {"web": {
        "image": image, "init": False, "command": ["sh", "-c", SERVE], "stop_grace_period": "5s",
        "deploy": {"replicas": 3},
        "healthcheck": {"test": ["CMD", "test", "-f", "/ready"], "interval": "300ms", "retries": 1}}}}))
    base = {"compose_app_name": "rolling", "compose_app_dir": str(tmp_path / "app"), "compose_app_src": str(src),
            "compose_app_version": "r1", "compose_app_install_engine": False, "compose_app_pull": "never"}
    deployed = ansible.play(role_play(engine, "main", base))
    assert deployed.rc == 0, deployed
    deadline = time.monotonic() + 30
    while healthy_count(engine, "rolling") < 3:
        assert time.monotonic() < deadline, "the replicas never became healthy"
        time.sleep(0.2)
    names = ["rolling-web-%d" % n for n in (1, 2, 3)]
    started = {n: exec_started(engine, n) for n in names}
    lowest = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            lowest.append(healthy_count(engine, "rolling"))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    restarted = ansible.play(role_play(engine, "restart", dict(base, compose_app_restart_services=["web"])) +
                             "- name: Show\n  ansible.builtin.debug:\n    var: compose_app_restarted\n")
    stop.set()
    watcher.join()
    assert restarted.rc == 0, restarted
    assert min(lowest) >= 2, "more than one replica was down at once: %s" % lowest
    assert all(exec_started(engine, n) != started[n] for n in names)
    record = restarted.task("Show")["result"]["compose_app_restarted"]
    assert [r["name"] for r in record] == names and all(r["service"] == "web" for r in record)
    engine.docker("compose", "-p", "rolling", "down", "-t", "1", check=False)


def exec_started(engine, name):
    return engine.docker("inspect", "--format", "{{.State.StartedAt}}", name).stdout.strip()
