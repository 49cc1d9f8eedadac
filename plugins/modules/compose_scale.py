#!/usr/bin/python
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: compose_scale
short_description: Scale Docker Compose services to a number of replicas, gracefully, and wait until they are healthy
version_added: 0.2.0
description:
  - Reads each service's containers from the engine (by their C(com.docker.compose.project) and
    C(com.docker.compose.service) labels) and changes only what differs from O(services).
  - Scaling up runs C(compose up --detach --no-recreate --no-deps --no-build --scale ...) for those services only, so a
    running container is never recreated, nothing else in the project is touched and nothing is built.
  - Scaling down stops the planned containers with the service's stop signal (C(SIGTERM) unless it sets
    C(stop_signal)) and lets each finish within O(stop_timeout) or the service's C(stop_grace_period) (a Celery
    worker's warm shutdown), then removes them; named volumes stay. Stopped containers go first, then the
    highest-numbered running replicas. Each removed container is reported with its exit code and how long it took.
  - With O(wait), polls the engine until every container of the services is running and, where the service has a
    healthcheck, healthy, for up to O(wait_timeout) seconds; on timeout the message names each container that is not
    ready with its last health-check output. A container that has exited and has no restart policy fails the wait
    at once, as nothing would bring it back.
  - Bad input (a service not in the project, a negative count, a file that does not parse, no engine) fails before
    anything changes.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.attributes
  - runbook.ops.docker
  - runbook.ops.docker.compose
attributes:
  check_mode:
    support: full
    details: Reads the project and the engine and reports the same plan; nothing is built, pulled, created, started or stopped.
  diff_mode:
    support: full
    details: Replicas per service before and after.
  idempotent:
    support: full
options:
  services:
    description:
      - Each service to scale and the replicas it should run, a mapping such as C(backend=3) and C(celery_worker=4).
      - V(0) stops all of a service's containers. Services not named here are left alone.
    type: dict
    required: true
  wait:
    description: Wait until every container of the named services is running and, with a healthcheck, healthy.
    type: bool
    default: true
  wait_timeout:
    description: Seconds O(wait) waits, counted from the end of the change.
    type: int
    default: 120
  stop_timeout:
    description:
      - Seconds a container being scaled down gets to stop before it is killed. Default is the service's
        C(stop_grace_period), else Docker's 10 seconds.
    type: int
seealso:
  - module: community.docker.docker_compose_v2
notes:
  - Containers started with C(compose run) (one-off) are not replicas and are ignored.
"""

EXAMPLES = r"""
- name: Add Celery workers for the nightly import, waiting until all are healthy
  runbook.ops.compose_scale:
    project_src: /srv/app
    services:
      celery_worker: 4
      backend: 3
    wait_timeout: 180

- name: Back to one worker; each stopping worker gets two minutes to finish its tasks
  runbook.ops.compose_scale:
    project_src: /srv/app
    services:
      celery_worker: 1
    stop_timeout: 120
"""

RETURN = r"""
project_name:
  description: The Compose project's name.
  returned: always
  type: str
  sample: app
services:
  description: Per service scaled.
  returned: always
  type: dict
  contains:
    before:
      description: Replicas running (or restarting or paused) before the task.
      type: int
    after:
      description: Replicas wanted, and running once the task is done.
      type: int
    created:
      description: Containers created (in check mode, that would be).
      type: int
    started:
      description: Stopped containers started again (in check mode, that would be).
      type: list
      elements: str
    removed:
      description:
        - Containers stopped and removed (in check mode, those that would be), each with C(name), C(id), C(number),
          C(running), C(exit_code), C(stop_seconds) and C(killed_after_grace).
      type: list
      elements: dict
    containers:
      description: The service's containers afterwards, each with C(name), C(id), C(number), C(state), C(health)
        (V(none) without a healthcheck) and C(last_health_output).
      type: list
      elements: dict
  sample:
    celery_worker:
      before: 1
      after: 3
      created: 2
      started: []
      removed: []
      containers:
        - {name: app-celery_worker-1, id: 3f2a1b4c5d6e, number: 1, state: running, health: healthy}
duration_seconds:
  description: Seconds the task took, waiting included.
  returned: always
  type: float
  sample: 4.2
"""

from ansible_collections.runbook.ops.plugins.module_utils._compose_scale import ComposeScale, argspec_ex
from ansible_collections.runbook.ops.plugins.module_utils._module import run_module


def main():
    run_module(argspec_ex(), lambda module: ComposeScale(module, module.params).run())


if __name__ == "__main__":
    main()
