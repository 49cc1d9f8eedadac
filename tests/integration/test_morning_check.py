"""The runbooks' morning check: playbooks/morning_check.yml over real disks, memory, a Compose project on a private
engine (one service healthy, one exited) and Celery queues in a real Redis; one summary line per host."""

from __future__ import annotations

import json
import subprocess

from conftest import REPO

WORKER_CRASH = "echo cannot reach the broker; exit 3"
SERVE = "touch /ready; while true; do sleep 0.2; done"


def test_the_morning_check_reports_disks_memory_containers_and_queues_in_one_line(
        ansible, docker_engine, redis_plain, tmp_path, monkeypatch):
    image = docker_engine.build_busybox_image()
    project = tmp_path / "shop"
    project.mkdir()
    (project / "compose.yaml").write_text(json.dumps({"services": {
        "web": {"image": image, "init": False, "command": ["sh", "-c", SERVE],
                "healthcheck": {"test": ["CMD", "test", "-f", "/ready"], "interval": "300ms", "retries": 1}},
        "worker": {"image": image, "init": False, "command": ["sh", "-c", WORKER_CRASH]}}}))
    docker_engine.docker("compose", "-p", "shop", "up", "-d", "--wait", "web", cwd=str(project))
    docker_engine.docker("compose", "-p", "shop", "up", "-d", "worker", cwd=str(project))
    subprocess.run(["redis-cli", "-p", str(redis_plain.port), "DEL", "celery"], check=True, capture_output=True)
    subprocess.run(["redis-cli", "-p", str(redis_plain.port), "RPUSH", "celery", "t1", "t2", "t3", "t4", "t5"], check=True,
                   capture_output=True)
    for name, value in docker_engine.env.items():
        monkeypatch.setenv(name, value)  # the containers target reaches the private engine through DOCKER_HOST
    variables = {
        "health_check_targets": [{"type": "redis", "name": "broker", "login_port": redis_plain.port}],
        "health_check_morning_disks": ["/", str(tmp_path)],
        "health_check_morning_projects": ["shop"],
        "health_check_morning_queues": {"celery": {"warn": 2, "crit": 100}},
        "health_check_morning_redis": {"login_port": redis_plain.port},
    }
    run = ansible.play(None, playbook_path=REPO / "playbooks" / "morning_check.yml", extra_vars=variables)
    assert run.rc != 0  # the exited worker fails the host
    probe = run.task("Probe every health target")["result"]
    rows = {r["name"]: r for r in probe["results"]}
    assert rows["broker"]["status"] == "healthy"
    assert rows["disk:/"]["status"] in ("healthy", "degraded") and 0 < rows["disk:/"]["used_percent"] < 100
    assert rows["memory"]["available_bytes"] > 0
    assert rows["celery queues"]["status"] == "degraded" and rows["celery queues"]["queues"] == {"celery": 5}
    shop = rows["containers:shop"]
    assert shop["status"] == "unhealthy" and "shop-worker-1 is exited" in shop["error"]
    assert {c["name"]: c["health"] for c in shop["containers"]} == {"shop-web-1": "healthy", "shop-worker-1": "none"}
    summary = run.task("Show one line per host")["result"]["msg"]
    assert len(summary) == 1 and summary[0].startswith("localhost: UNHEALTHY: disk:/ ")
    for text in ("memory ", "containers:shop 1/2 running", "queue celery 5", "unhealthy containers:shop",
                 "degraded celery queues (queue celery holds 5, over warn 2)"):
        assert text in summary[0], summary[0]
    assert run.task("Fail when a required target is unhealthy")["status"] == "failed"
    docker_engine.docker("compose", "-p", "shop", "down", "-t", "0", cwd=str(project), check=False)
