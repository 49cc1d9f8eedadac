"""compose_scale against a real Docker engine and the real Compose CLI: images built here, healthchecks real."""

from __future__ import annotations

import threading
import time

import pytest

from servers import compose_binary

SCALE = "Scale the services"

# sh as PID 1 ignores SIGTERM unless it traps it: this one finishes its "work" for a second and exits 0, as a Celery
# worker's warm shutdown does; it is healthy once it wrote /ready
WORKER = ("trap 'sleep 1; exit 0' TERM; touch /ready; while true; do sleep 0.2; done")
STUBBORN = "trap '' TERM; touch /ready; while true; do sleep 0.2; done"


def compose_file(path, image, services):
    lines = ["services:"]
    for name, spec in services.items():
        lines += ["  %s:" % name, "    image: %s" % image, "    init: false",
                  "    command: [sh, -c, %r]" % spec.get("command", WORKER),
                  "    stop_grace_period: %s" % spec.get("grace", "10s")]
        for key in ("restart", "profiles"):
            if spec.get(key):
                lines.append("    %s: %s" % (key, spec[key]))
        if spec.get("health", True):
            lines += ["    healthcheck:", "      test: %s" % spec.get("test", '["CMD", "test", "-f", "/ready"]'),
                      "      interval: 500ms", "      timeout: 2s", "      retries: %d" % spec.get("retries", 1)]
        if spec.get("container_name"):
            lines.append("    container_name: %s" % spec["container_name"])
    path.mkdir(parents=True, exist_ok=True)
    (path / "compose.yaml").write_text("\n".join(lines) + "\n")
    return path


def scale_task(engine, project_src, services, **options):
    options = dict({"project_src": str(project_src), "docker_host": engine.host, "services": services,
                    "wait_timeout": 60}, **options)
    body = "\n".join("    %s: %s" % (k, _yaml(v)) for k, v in options.items())
    return ("- name: %s\n  runbook.ops.compose_scale:\n%s\n  environment:\n    DOCKER_CONFIG: %s\n  register: scaled\n"
            % (SCALE, body, engine.config_dir))


def _yaml(value):
    import json
    return json.dumps(value)


def containers(engine, project, service):
    out = engine.docker("ps", "-a", "--filter", "label=com.docker.compose.project=%s" % project,
                        "--filter", "label=com.docker.compose.service=%s" % service,
                        "--format", "{{.Names}} {{.ID}} {{.State}}").stdout
    return sorted(tuple(line.split()) for line in out.splitlines() if line.strip())


def inspect(engine, name, template):
    return engine.docker("inspect", "--format", template, name).stdout.strip()


@pytest.fixture(scope="module")
def image(docker_engine):
    return docker_engine.build_busybox_image()


@pytest.fixture
def project(docker_engine, tmp_path):
    created = []

    def make(name, services, image_tag):
        src = compose_file(tmp_path / name, image_tag, services)
        created.append(src)
        return src

    yield make
    for src in created:
        docker_engine.docker("compose", "--project-directory", str(src), "down", "-t", "0", check=False)


def watch_running(engine, name, stop):
    """Polls a container's state until ``stop`` is set; returns the states seen (it must never stop serving)."""
    seen = set()

    def loop():
        while not stop.is_set():
            seen.add(inspect(engine, name, "{{.State.Status}} {{.State.StartedAt}} {{.RestartCount}}"))
            time.sleep(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return seen, thread


def test_scale_up_and_down_four_ways_and_the_remaining_replica_never_stops(ansible, docker_engine, image, project):
    src = project("scaleweb", {"web": {"grace": "20s"}}, image)
    first = ansible.play(scale_task(docker_engine, src, {"web": 1}))
    assert first.rc == 0, first
    assert first.task(SCALE)["result"]["services"]["web"]["created"] == 1
    [(web1, web1_id, _state)] = containers(docker_engine, "scaleweb", "web")
    web1_started = inspect(docker_engine, web1, "{{.State.StartedAt}}")

    # check mode: the same plan, no change at all
    check = ansible.play(scale_task(docker_engine, src, {"web": 3}), check=True, diff=True)
    assert check.rc == 0, check
    planned = check.task(SCALE)["result"]
    assert planned["changed"] is True
    assert planned["diff"] == {"before": {"services": {"web": 1}}, "after": {"services": {"web": 3}}}
    assert planned["services"]["web"]["created"] == 2
    assert [c[0] for c in containers(docker_engine, "scaleweb", "web")] == [web1]

    up = ansible.play(scale_task(docker_engine, src, {"web": 3}), diff=True)
    assert up.rc == 0, up
    result = up.task(SCALE)["result"]
    assert result["changed"] is True and result["services"]["web"]["before"] == 1
    web = result["services"]["web"]["containers"]
    assert [(c["number"], c["state"], c["health"]) for c in web] == [(1, "running", "healthy")] * 1 + \
        [(2, "running", "healthy"), (3, "running", "healthy")]
    # scaling up never recreated the running replica
    assert web[0]["id"] == web1_id[:12] and inspect(docker_engine, web1, "{{.State.StartedAt}}") == web1_started

    for check_mode in (True, False):
        again = ansible.play(scale_task(docker_engine, src, {"web": 3}), check=check_mode)
        assert again.rc == 0, again
        assert again.task(SCALE)["result"]["changed"] is False

    check = ansible.play(scale_task(docker_engine, src, {"web": 1}), check=True)
    assert [r["name"] for r in check.task(SCALE)["result"]["services"]["web"]["removed"]] == \
        ["scaleweb-web-3", "scaleweb-web-2"]
    assert len(containers(docker_engine, "scaleweb", "web")) == 3

    stop = threading.Event()
    seen, thread = watch_running(docker_engine, web1, stop)
    try:
        down = ansible.play(scale_task(docker_engine, src, {"web": 1}), diff=True)
    finally:
        stop.set()
        thread.join()
    assert down.rc == 0, down
    result = down.task(SCALE)["result"]
    assert result["diff"]["after"] == {"services": {"web": 1}}
    removed = result["services"]["web"]["removed"]
    assert [r["name"] for r in removed] == ["scaleweb-web-3", "scaleweb-web-2"]
    # SIGTERM, then the trap finished its work and exited 0 well within the grace period: no SIGKILL
    assert all(r["exit_code"] == 0 and r["killed_after_grace"] is False and 1 <= r["stop_seconds"] < 10 for r in removed)
    assert [c[0] for c in containers(docker_engine, "scaleweb", "web")] == [web1]
    assert seen == {"running %s 0" % web1_started}, seen

    for check_mode in (True, False):
        again = ansible.play(scale_task(docker_engine, src, {"web": 1}), check=check_mode)
        assert again.rc == 0 and again.task(SCALE)["result"]["changed"] is False, again


def test_a_replica_that_ignores_sigterm_is_killed_after_the_grace_period(ansible, docker_engine, image, project):
    src = project("stubborn", {"worker": {"command": STUBBORN, "grace": "2s"}}, image)
    assert ansible.play(scale_task(docker_engine, src, {"worker": 2})).rc == 0
    down = ansible.play(scale_task(docker_engine, src, {"worker": 0}))
    assert down.rc == 0, down
    removed = down.task(SCALE)["result"]["services"]["worker"]["removed"]
    assert [(r["name"], r["exit_code"], r["killed_after_grace"]) for r in removed] == \
        [("stubborn-worker-2", 137, True), ("stubborn-worker-1", 137, True)]
    # the two stopped side by side, each after its own 2 s grace period
    assert all(2 <= r["stop_seconds"] < 6 for r in removed), removed
    assert containers(docker_engine, "stubborn", "worker") == []


def test_wait_fails_at_wait_timeout_naming_the_unhealthy_container(ansible, docker_engine, image, project):
    src = project("sick", {"api": {"test": '["CMD", "sh", "-c", "echo database is not reachable; exit 1"]',
                                   "retries": 1}}, image)
    started = time.monotonic()
    run = ansible.play(scale_task(docker_engine, src, {"api": 1}, wait_timeout=6, compose_command=str(compose_binary())))
    took = time.monotonic() - started
    assert run.rc != 0
    result = run.task(SCALE)["result"]
    assert result["changed"] is True
    assert "did not become ready within wait_timeout (6s)" in result["msg"]
    assert "sick-api-1 (running, unhealthy: last check exited 1: database is not reachable)" in result["msg"]
    # not before the timeout, and not much after it (ansible-playbook's own start-up included)
    assert 6 <= result["duration_seconds"] < 8, result["duration_seconds"]
    assert took < 6 + 10
    assert result["services"]["api"]["containers"][0]["last_health_output"] == "database is not reachable"


def test_an_exited_container_without_restart_policy_fails_the_wait_at_once(ansible, docker_engine, image, project):
    src = project("crash", {"job": {"command": "echo cannot read settings; exit 3", "health": False}}, image)
    run = ansible.play(scale_task(docker_engine, src, {"job": 1}, wait_timeout=60))
    assert run.rc != 0
    result = run.task(SCALE)["result"]
    assert "exited and no restart policy brings them back: crash-job-1 (exited with code 3)" in result["msg"]
    assert result["duration_seconds"] < 30


BAD = {
    "a service not in the project": ({"nosuch": 1}, {}, "no service nosuch in Compose project badinput"),
    "a negative count": ({"web": -1}, {}, "services.web: the replica count must be >= 0, not -1"),
    "a count that is not a number": ({"web": "three"}, {}, "services.web: the replica count must be a whole number"),
    "a count given as true": ({"web": True}, {}, "services.web: the replica count must be a whole number"),
    "a compose file that does not parse": ({"web": 1}, {"broken": True}, "the Compose project does not parse"),
    "no engine at docker_host": ({"web": 1}, {"docker_host": "unix:///nonexistent/docker.sock"},
                                 "no Docker engine answers at unix:///nonexistent/docker.sock"),
    "container_name with replicas": ({"pinned": 2}, {}, "service pinned sets container_name 'badinput-pinned'"),
    "a compose_command that does not work": ({"web": 1}, {"compose_command": "/bin/false"},
                                             "compose_command '/bin/false' does not work"),
    "a compose_command that is not a command line": ({"web": 1}, {"compose_command": "'unclosed"},
                                                     "cannot be read as a command line"),
    "a superscript digit as count": ({"web": "\u00b3"}, {}, "the replica count must be a whole number"),
    "a count that looks like a typo": ({"web": 99999999}, {}, "refusing what looks like a typo"),
    "a project name Compose refuses": ({"web": 1}, {"project_name": "Bad Name"}, "is not a Compose project name"),
    "a command_timeout of zero": ({"web": 1}, {"command_timeout": 0}, "command_timeout must be > 0 seconds"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fails_before_anything_changes(ansible, docker_engine, image, project, case):
    services, options, message = BAD[case]
    src = project("badinput", {"web": {}, "pinned": {"container_name": "badinput-pinned"}}, image)
    if options.pop("broken", False):
        (src / "compose.yaml").write_text("services:\n  web: [unclosed\n")
    run = ansible.play(scale_task(docker_engine, src, services, **options))
    assert run.rc != 0
    result = run.task(SCALE)["result"]
    assert message in result["msg"], result["msg"]
    assert not result.get("changed")
    assert containers(docker_engine, "badinput", "web") == [] and containers(docker_engine, "badinput", "pinned") == []


def test_a_crash_looping_service_does_not_pass_the_wait(ansible, docker_engine, image, project):
    """No healthcheck and restart: always - "running" for an instant on every restart is not ready."""
    src = project("crashloop", {"loop": {"command": "sleep 0.3; echo boom; exit 3", "health": False,
                                         "restart": "always"}}, image)
    run = ansible.play(scale_task(docker_engine, src, {"loop": 1}, wait_timeout=6))
    assert run.rc != 0
    result = run.task(SCALE)["result"]
    assert result["changed"] is True and "did not become ready within wait_timeout (6s)" in result["msg"]
    assert "crashloop-loop-1" in result["msg"]


def test_a_service_without_healthcheck_is_ready_once_it_keeps_running(ansible, docker_engine, image, project):
    src = project("steady", {"plain": {"health": False}}, image)
    run = ansible.play(scale_task(docker_engine, src, {"plain": 2}, wait_timeout=20))
    assert run.rc == 0, run
    assert [c["state"] for c in run.task(SCALE)["result"]["services"]["plain"]["containers"]] == ["running"] * 2


def test_containers_compose_does_not_own_are_not_counted(ansible, docker_engine, image, project):
    """A container that only carries the project and service labels is not a replica (Compose ignores it too)."""
    src = project("strays", {"web": {}}, image)
    assert ansible.play(scale_task(docker_engine, src, {"web": 1})).rc == 0
    docker_engine.docker("run", "-d", "--name", "strays-impostor", "--label", "com.docker.compose.project=strays",
                         "--label", "com.docker.compose.service=web", "--label",
                         "com.docker.compose.container-number=abc", image, "sleep", "1000")
    try:
        run = ansible.play(scale_task(docker_engine, src, {"web": 2}))
        assert run.rc == 0, run
        web = run.task(SCALE)["result"]["services"]["web"]
        assert (web["before"], web["created"]) == (1, 1) and len(web["containers"]) == 2
        assert "strays-impostor" not in [c["name"] for c in web["containers"]]
    finally:
        docker_engine.docker("rm", "-f", "strays-impostor")


def test_a_service_of_an_inactive_profile_can_be_scaled(ansible, docker_engine, image, project):
    src = project("profiled", {"web": {}, "debug": {"profiles": "[debug]"}}, image)
    up = ansible.play(scale_task(docker_engine, src, {"debug": 2}))
    assert up.rc == 0, up
    assert len(containers(docker_engine, "profiled", "debug")) == 2 and containers(docker_engine, "profiled", "web") == []
    down = ansible.play(scale_task(docker_engine, src, {"debug": 0}))
    assert down.rc == 0, down
    assert containers(docker_engine, "profiled", "debug") == []


def test_a_grace_period_under_a_second_is_not_a_sigkill(ansible, docker_engine, image, project):
    src = project("quick", {"worker": {"command": "trap 'sleep 0.2; exit 0' TERM; touch /ready; "
                                                  "while true; do sleep 0.1; done", "grace": "500ms"}}, image)
    assert ansible.play(scale_task(docker_engine, src, {"worker": 1})).rc == 0
    down = ansible.play(scale_task(docker_engine, src, {"worker": 0}))
    assert down.rc == 0, down
    [removed] = down.task(SCALE)["result"]["services"]["worker"]["removed"]
    assert removed["exit_code"] == 0 and removed["killed_after_grace"] is False


def test_two_scale_downs_at_once_both_succeed(ansible, docker_engine, image, project):
    src = project("racing", {"worker": {}}, image)
    assert ansible.play(scale_task(docker_engine, src, {"worker": 4})).rc == 0
    first = ansible.start(scale_task(docker_engine, src, {"worker": 1}))
    second = ansible.start(scale_task(docker_engine, src, {"worker": 1}))
    for run in (first(), second()):
        assert run.rc == 0, run
    assert [c[0] for c in containers(docker_engine, "racing", "worker")] == ["racing-worker-1"]
