"""100 HTTP targets on loopback: one runbook.ops.health_probe task versus an ansible.builtin.uri loop.

All run as real ansible-playbook in this run; an empty playbook is timed too, so the ratio of the
task time alone (wall minus start-up) is printed beside the ratio of whole runs. health_probe runs
twice: as it runs on the controller (in the action's process), and through its module (a task
environment sends it there), as it runs on any other host.
Run with `make bench` (needs `make install` first; the Makefile does it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))

from http_fixture import HealthServer  # noqa: E402

TARGETS = 100


def run_playbook(workdir, name, tasks):
    playbook = workdir / ("%s.yml" % name)
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n%s" % tasks)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"), ANSIBLE_NOCOLOR="1")
    inventory = "localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable
    (workdir / "inventory").write_text(inventory)
    started = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(workdir / "inventory"), str(playbook)],
                          env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit("%s failed:\n%s%s" % (name, proc.stdout[-3000:], proc.stderr[-2000:]))
    return elapsed


def main():
    server = HealthServer().start()
    urls = [server.base_url + "/n/%d" % i for i in range(TARGETS)]
    targets = [{"name": "n%d" % i, "type": "http", "url": url, "json": {"status": "healthy"}} for i, url in enumerate(urls)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        empty = run_playbook(workdir, "empty", "    - ansible.builtin.meta: noop\n")
        task = "    - runbook.ops.health_probe:\n        targets: %s\n" % json.dumps(targets)
        probe = run_playbook(workdir, "probe", task)
        module = run_playbook(workdir, "module", task + "      environment:\n        BENCH: module\n")
        uri = run_playbook(workdir, "uri", "    - ansible.builtin.uri:\n        url: '{{ item }}'\n        return_content: true\n"
                                           "      loop: %s\n" % json.dumps(urls))
    server.stop()
    probe_task, module_task, uri_task = (max(wall - empty, 1e-3) for wall in (probe, module, uri))
    print("health_probe benchmark: %d HTTP targets on loopback (load %s)" % (TARGETS, " ".join(open("/proc/loadavg").read().split()[:3])))
    print("  empty playbook (start-up)            %7.2f s" % empty)
    print("  runbook.ops.health_probe             %7.2f s  (task alone %.2f s)" % (probe, probe_task))
    print("  the same through its module          %7.2f s  (task alone %.2f s)" % (module, module_task))
    print("  ansible.builtin.uri loop             %7.2f s  (task alone %.2f s, %.3f s per item)" % (uri, uri_task, uri_task / TARGETS))
    print("  ratio uri/health_probe: %.1fx whole playbook, %.1fx task alone (goal >= 80x); through the module %.1fx, %.1fx"
          % (uri / probe, uri_task / probe_task, uri / module, uri_task / module_task))


if __name__ == "__main__":
    main()
