"""Scale a service 1 -> 10 -> 1: runbook.ops.compose_scale (wait on) versus `docker compose up -d --scale --wait`.

Both run in this run against the same private Docker engine and the same project (a busybox service with a
healthcheck and a warm-shutdown trap). The headline is the whole task as the user waits for it: ansible-playbook's
own start-up is included for compose_scale (an empty playbook is timed too and printed beside it).
Run with `make bench`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))

from servers import DockerEngine  # noqa: E402

ROUNDS = 3
COMPOSE = """services:
  worker:
    image: %s
    command: [sh, -c, "trap 'exit 0' TERM; touch /ready; while true; do sleep 0.2; done"]
    stop_grace_period: 10s
    healthcheck:
      test: ["CMD", "test", "-f", "/ready"]
      interval: 500ms
      retries: 1
"""


def timed(argv, env, cwd=None):
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit("%s failed:\n%s%s" % (" ".join(map(str, argv[:6])), proc.stdout[-3000:], proc.stderr[-2000:]))
    return elapsed


def playbook(workdir, name, tasks):
    path = workdir / ("%s.yml" % name)
    path.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n%s" % tasks)
    return [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(workdir / "inventory"), str(path)]


def module_seconds(workdir, env, project, replicas):
    """The module's own duration_seconds for a scale run (JSON callback)."""
    task = {"runbook.ops.compose_scale": {"project_src": str(project), "services": {"worker": replicas},
                                          "wait_timeout": 120}}
    argv = playbook(workdir, "measure%d" % replicas, "    - %s\n" % json.dumps(task))
    proc = subprocess.run(argv, env=dict(env, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json"), cwd=workdir,
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return result["duration_seconds"]


def main():
    base = Path(tempfile.mkdtemp(prefix="rbk-bench-", dir="/tmp"))
    engine = DockerEngine(base).start()
    try:
        image = engine.build_busybox_image()
        project = base / "benchscale"
        project.mkdir()
        (project / "compose.yaml").write_text(COMPOSE % image)
        workdir = base / "ansible"
        workdir.mkdir()
        (workdir / "inventory").write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n"
                                           % sys.executable)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"), ANSIBLE_NOCOLOR="1", **engine.env)

        durations = {}

        def module(replicas):
            task = {"runbook.ops.compose_scale": {"project_src": str(project), "services": {"worker": replicas},
                                                  "wait_timeout": 120}}
            return playbook(workdir, "scale%d" % replicas, "    - %s\n" % json.dumps(task))

        def raw(replicas):
            return ["docker", "compose", "up", "-d", "--scale", "worker=%d" % replicas, "--wait", "--wait-timeout", "120"]

        empty = min(timed(playbook(workdir, "empty", "    - ansible.builtin.meta: noop\n"), env) for _round in range(2))
        ping = min(timed(playbook(workdir, "ping", "    - ansible.builtin.ping:\n"), env) for _round in range(2))
        figures = {"compose_scale": [], "docker compose": []}
        for _round in range(ROUNDS):
            for name, argv in (("docker compose", raw), ("compose_scale", module)):
                timed(raw(1), env, cwd=project)
                up = timed(argv(10), env, cwd=project)
                down = timed(argv(1), env, cwd=project)
                figures[name].append((up, down))
                if name == "compose_scale":
                    durations.setdefault("up", []).append(module_seconds(workdir, env, project, 10))
                    durations.setdefault("down", []).append(module_seconds(workdir, env, project, 1))
            engine.docker("compose", "down", "-t", "0", cwd=project)
        load = os.getloadavg()
    finally:
        engine.stop()
        shutil.rmtree(base, ignore_errors=True)

    def best(name, index):
        return min(f[index] for f in figures[name])

    print("compose_scale benchmark: one service with a healthcheck, 1 -> 10 -> 1, best of %d (load %.2f %.2f %.2f)"
          % ((ROUNDS,) + load))
    print("  empty playbook (ansible start-up)          %6.2f s" % empty)
    for name in ("docker compose", "compose_scale"):
        up, down = best(name, 0), best(name, 1)
        print("  %-40s %6.2f s up, %6.2f s down, %6.2f s whole" % (
            name + (" up -d --scale --wait" if name == "docker compose" else " (whole playbook)"), up, down, up + down))
    raw = best("docker compose", 0) + best("docker compose", 1)
    ratio = (best("compose_scale", 0) + best("compose_scale", 1)) / raw
    inside = min(durations["up"]) + min(durations["down"])
    print("  ansible-playbook with one ping task                %6.2f s (Ansible's fixed cost of a module task: %.2f s)"
          % (ping, ping))
    print("  compose_scale inside the module (duration_seconds) %6.2f s up, %6.2f s down, %6.2f s whole"
          % (min(durations["up"]), min(durations["down"]), inside))
    print("  ratio compose_scale / docker compose: %.2fx whole playbook (goal <= 1.2x), %.2fx module time, "
          "%.2fx whole playbook minus a one-task playbook per run" % (ratio, inside / raw,
                                                                      (ratio * raw - 2 * ping) / raw))


if __name__ == "__main__":
    main()
