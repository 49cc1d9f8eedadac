"""playbooks/maintenance.yml on this machine: a real backup, real PostgreSQL with a long query, a Compose project on
a private engine, a health endpoint on loopback; every check lands in the window's log on the host."""

from __future__ import annotations

import json
import sys
import threading
import time

import psycopg2

from conftest import REPO
from http_fixture import HealthServer
from pg_helpers import drop_database, make_database

SERVE = "touch /ready; while true; do sleep 0.2; done"
NOISY = "touch /ready; while true; do echo 'ERROR: broker unreachable'; sleep 0.5; done"


def inventory(tmp_path, host_vars):
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps({"all": {"hosts": {"localhost": dict(
        {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}, **host_vars)}}}))
    return path


def project(engine, tmp_path, name, command):
    src = tmp_path / name
    src.mkdir()
    (src / "compose.yaml").write_text(json.dumps({"services": {"web": {
        "image": engine.build_busybox_image(), "init": False, "command": ["sh", "-c", command],
        "healthcheck": {"test": ["CMD", "test", "-f", "/ready"], "interval": "300ms", "retries": 1}}}}))
    engine.docker("compose", "-p", name, "up", "-d", "--wait", cwd=str(src))
    return src


def _deploy_playbook(tmp_path):
    path = tmp_path / "deploy.yml"
    path.write_text("- hosts: all\n  gather_facts: false\n  roles: [runbook.ops.compose_app]\n")
    return path


def _sleep(conn):
    try:
        conn.cursor().execute("SELECT pg_sleep(60)")
    except psycopg2.Error:
        pass  # cancelled at the end of the test


def log_lines(window_dir):
    (log,) = list(window_dir.glob("*/window.log"))
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_window_runs_both_checklists_and_logs_every_check(ansible, pg, docker_engine, tmp_path, monkeypatch):
    for name, value in docker_engine.env.items():
        monkeypatch.setenv(name, value)
    src = tmp_path / "release"
    src.mkdir()
    service = {"image": docker_engine.build_busybox_image(), "init": False, "command": ["sh", "-c", SERVE],
               "healthcheck": {"test": ["CMD", "test", "-f", "/ready"], "interval": "300ms", "retries": 1}}
    (src / "compose.yaml").write_text(json.dumps({"services": {"web": service, "worker": dict(service, deploy={"replicas": 2})}}))
    app = {"compose_app_name": "shopmw", "compose_app_dir": str(tmp_path / "app")}
    deployed = ansible.play(None, playbook_path=_deploy_playbook(tmp_path), inventory=inventory(tmp_path, dict(
        app, compose_app_src=str(src), compose_app_version="r1", compose_app_install_engine=False,
        compose_app_pull="never")))
    assert deployed.rc == 0, deployed
    db = make_database(pg, "mw")
    web = HealthServer().start()
    sleeper = psycopg2.connect(**pg.conninfo(db))
    sleeper.autocommit = True
    thread = threading.Thread(target=_sleep, args=(sleeper,), daemon=True)
    thread.start()
    connection = {"login_host": pg.host, "login_port": pg.port, "login_user": pg.user, "login_password": pg.password}
    flag = tmp_path / "maintenance.on"
    work = tmp_path / "work.yml"
    work.write_text("- name: The operator's work, with the workers stopped\n  ansible.builtin.command:\n"
                    "    argv: [docker, ps, -q, --filter, label=com.docker.compose.service=worker]\n"
                    "  register: workers\n  changed_when: true\n  failed_when: workers.stdout | length > 0\n")
    hosts = inventory(tmp_path, dict(app, **{
        "backup_targets": [{"type": "postgres", "db": db}], "backup_postgres": connection,
        "backup_store": {"dir": str(tmp_path / "store")},
        "maintenance_window_dir": str(tmp_path / "windows"), "maintenance_window_databases": [db],
        "maintenance_window_postgres": connection, "maintenance_window_long_query_seconds": 1,
        "maintenance_window_projects": ["shopmw"], "maintenance_window_flag_file": str(flag),
        "maintenance_window_stop_services": ["worker"],
        "health_check_targets": [{"type": "http", "name": "api", "url": web.base_url + "/health"}]}))
    try:
        time.sleep(1.5)  # the query has run for more than long_query_seconds
        run = ansible.play(None, playbook_path=REPO / "playbooks" / "maintenance.yml", inventory=hosts,
                           extra_vars={"maintenance_tasks": str(work)})
    finally:
        sleeper.cancel()
        thread.join(10)
        sleeper.close()
        web.stop()
        drop_database(pg, db)
    assert run.rc == 0, run
    checks = {entry["check"]: entry for entry in log_lines(tmp_path / "windows")}
    assert set(checks) == {"window opened", "backups", "system state", "long-running queries", "maintenance mode on",
                           "services containers:shopmw", "endpoint api", "errors in container logs",
                           "maintenance mode off", "window closed"}
    assert checks["backups"]["ok"] and "(verified)" in checks["backups"]["detail"]
    assert not checks["long-running queries"]["ok"] and "1 running over 1" in checks["long-running queries"]["detail"]
    assert checks["services containers:shopmw"]["ok"] and checks["endpoint api"]["ok"]
    assert checks["errors in container logs"]["detail"].startswith("0 lines match")
    assert checks["maintenance mode off"]["ok"] and not flag.exists()
    assert "stopped worker" in checks["maintenance mode on"]["detail"]
    assert run.task("The operator's work, with the workers stopped")["status"] == "ok"  # no worker ran during the work
    running = docker_engine.docker("ps", "-q", "--filter", "label=com.docker.compose.service=worker").stdout.split()
    assert len(running) == 2  # back to the replicas it had
    (state,) = list((tmp_path / "windows").glob("*/state-before.json"))
    snapshot = json.loads(state.read_text())
    assert {p["name"] for p in snapshot["probes"]} == {"disk:/", "memory", "containers:shopmw"}
    assert snapshot["release"] == "releases/r1"
    assert not (tmp_path / "windows" / "current.json").exists()
    summary = run.task("Show one line per host")["result"]["msg"]
    assert len(summary) == 1 and "9/10 checks ok, failed: long-running queries" in summary[0], summary


def test_errors_in_the_logs_keep_maintenance_mode_on_and_the_window_open(ansible, docker_engine, tmp_path, monkeypatch):
    for name, value in docker_engine.env.items():
        monkeypatch.setenv(name, value)
    flag = tmp_path / "maintenance.on"
    hosts = inventory(tmp_path, {"maintenance_window_backup": False, "maintenance_window_dir": str(tmp_path / "windows"),
                                 "maintenance_window_projects": ["noisymw"], "maintenance_window_flag_file": str(flag)})
    opened = ansible.play(None, playbook_path=REPO / "playbooks" / "maintenance.yml", inventory=hosts,
                          extra_vars={"maintenance_phase": "start"})
    assert opened.rc == 0, opened
    assert flag.exists() and (tmp_path / "windows" / "current.json").exists()
    again = ansible.play(None, playbook_path=REPO / "playbooks" / "maintenance.yml", inventory=hosts,
                         extra_vars={"maintenance_phase": "start"})
    assert again.rc != 0 and "already open" in again.output
    project(docker_engine, tmp_path, "noisymw", NOISY)  # the work brought up a service that logs errors
    closed = ansible.play(None, playbook_path=REPO / "playbooks" / "maintenance.yml", inventory=hosts,
                          extra_vars={"maintenance_phase": "finish"})
    assert closed.rc != 0
    assert "errors in container logs" in closed.output and "maintenance mode was left on" in closed.output
    assert flag.exists() and (tmp_path / "windows" / "current.json").exists()
    entries = log_lines(tmp_path / "windows")
    errors = [e for e in entries if e["check"] == "errors in container logs"][0]
    assert not errors["ok"] and "ERROR: broker unreachable" in errors["detail"]
    assert [e["phase"] for e in entries].count("post") >= 4
