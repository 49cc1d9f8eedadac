#!/usr/bin/python
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: health_probe
short_description: Probe many http, tcp, PostgreSQL and Redis targets at once and grade their health
version_added: 0.1.0
description:
  - Checks every target concurrently in one task and reports for each one its status, latency, HTTP status,
    a detail and the error if any.
  - >-
    Understands the C(/health), C(/health/ready) and C(/health/live) endpoints of web platforms, which
    answer 200 with a JSON body such as C({"status": "healthy", "checks": {"database": {"status": "healthy"}}})
    and 503 when a component is down.
  - A target is C(healthy), C(degraded) (it answered, but slower than O(targets[].max_latency_ms), or it
    failed and is not required) or C(unhealthy). The task is C(unhealthy) when a required target is.
  - Every target is validated before any probe runs; a bad one fails the task naming the target and the field.
  - Never reports C(changed). Check mode probes too, since probing only reads.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.attributes
  - runbook.ops.attributes.read_only
options:
  targets:
    description:
      - What to probe. Each target has a O(targets[].type) and the fields that type uses.
      - Fields that do not apply to the type are refused.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - Name shown in results and messages. Must be unique.
          - Defaults to the url (its password masked), C(host:port), C(type://host:port), C(disk:<path>),
            C(memory) or C(containers:<project>).
        type: str
      type:
        description:
          - One of V(http), V(tcp), V(postgres), V(redis), V(disk), V(memory), V(containers).
          - V(disk) and V(memory) read this host (the one the task runs on). A use at or over
            O(targets[].warn_percent) grades the target C(degraded), at or over O(targets[].crit_percent)
            C(unhealthy).
          - V(containers) checks every container of a Compose project (O(targets[].project_name), optionally only
            O(targets[].services)) on the engine of O(targets[].docker_host). A container that is not running, or is
            unhealthy, makes it C(unhealthy) (with the last health-check output); more restarts than
            O(targets[].max_restarts) make it C(degraded).
        type: str
        required: true
      timeout:
        description:
          - Seconds one probe of this target may take in all (more than 0, at most 3600), whatever the peer does -
            connecting, a server that sends one byte a second, redirects, the TLS expiry check. A probe still
            running then is reported as timed out and abandoned.
        type: float
        default: 5.0
      max_latency_ms:
        description: A healthy answer slower than this many milliseconds grades the target C(degraded).
        type: int
      required:
        description:
          - A required target that fails makes the whole task C(unhealthy).
          - A target that is not required only degrades it.
        type: bool
        default: true
      url:
        description:
          - (http) Absolute http:// or https:// URL. IPv6 addresses go in brackets (C(http://[::1]:8000/health)).
          - C(user:password@) in it is sent as basic auth (unless O(targets[].headers) has an C(Authorization)) and is
            masked in names, messages and results.
          - Redirects of GET and HEAD are followed (at most 5) to http and https only; credential headers are
            dropped when a redirect leads to another origin (scheme, host or port).
        type: str
      method:
        description: (http) HTTP method.
        type: str
        default: GET
      headers:
        description:
          - (http) Request headers.
          - Values of C(Authorization), C(Proxy-Authorization), C(Cookie), C(X-Api-Key) and C(X-Auth-Token)
            are treated as secrets and never shown.
        type: dict
      body:
        description: (http) Request body; a mapping or list is sent as JSON.
        type: raw
      status_codes:
        description: (http) Status codes that count as up.
        type: list
        elements: int
        default: [200]
      json:
        description:
          - "(http) Assertions on the JSON body, as C(dotted.path: expected value)."
          - Digits in a path index lists (C(items.0.status)); a list of expected values accepts any of them.
          - "Example: C({status: healthy, checks.database.status: healthy})."
        type: dict
      contains:
        description: (http) Text the body must contain.
        type: str
      validate_certs:
        description: (http, redis) Verify the server's TLS certificate.
        type: bool
        default: true
      cert_min_days:
        description: (http) Fail when the TLS certificate expires in fewer days than this.
        type: int
      host:
        description: (tcp) Host to connect to.
        type: str
      port:
        description: (tcp) Port to connect to.
        type: int
      login_host:
        description: (postgres, redis) Server host.
        type: str
        default: localhost
      login_port:
        description: (postgres, redis) Server port; 5432 for postgres and 6379 for redis when not set.
        type: int
      login_user:
        description: (postgres, redis) User to log in as; C(postgres) for postgres, an ACL user for redis.
        type: str
      login_password:
        description: (postgres, redis) Password. Never shown in results or logs.
        type: str
      db:
        description: (postgres, redis) Database name for postgres (default C(postgres)), number for redis (default C(0)).
        type: raw
      ssl_mode:
        description: (postgres) libpq sslmode.
        type: str
      ca_cert:
        description: (postgres, redis) CA certificate file to verify the server with.
        type: path
      query:
        description: (postgres) Query to run instead of C(SELECT 1); its first value is shown in the detail.
        type: str
      tls:
        description: (redis) Connect over TLS.
        type: bool
        default: false
      info:
        description: "(redis) INFO fields and their expected values, for example C({role: master})."
        type: dict
      container:
        description:
          - (postgres, redis) The server runs in this container, with no published port needed. The probe connects
            over TCP from inside the container's network namespace, so O(targets[].login_host) and
            O(targets[].login_port) are as seen from inside the container.
          - The engine must run on the host that runs the task, and the task as root. A missing or stopped container
            makes the target unhealthy, with that reason.
        type: str
      compose_service:
        description: (postgres, redis) Instead of O(targets[].container), the Compose service that runs the server.
        type: str
      project_name:
        description: (postgres, redis) The Compose project of O(targets[].compose_service).
        type: str
      docker_host:
        description:
          - (postgres, redis) The Docker engine of the container (a C(unix://) socket of this host).
          - (containers) The Docker engine, as C(DOCKER_HOST) takes it; the default socket when not set.
        type: str
      queues:
        description:
          - "(redis) Queue depth limits, for Celery's queues (Redis lists named like the queues), for example
            C({celery: 1000}) or C({celery: {warn: 100, crit: 1000}})."
          - A queue longer than C(crit) makes the target C(unhealthy), longer than C(warn) C(degraded). A key that is
            not a list makes it C(unhealthy). A missing key is an empty queue.
        type: dict
      path:
        description: (disk) An absolute path on the filesystem to check (its mount point, or any path on it).
        type: str
      warn_percent:
        description:
          - (disk, memory) Percent used (of the disk's blocks or inodes, whichever is higher; of the memory) that grades
            C(degraded); 80 when not set.
        type: float
      crit_percent:
        description: (disk, memory) Percent used that grades C(unhealthy); 90 when not set.
        type: float
      services:
        description: (containers) Only these services of the project; each must have at least one container.
        type: list
        elements: str
      max_restarts:
        description: (containers) A container restarted more often than this grades the target C(degraded).
        type: int
  concurrency:
    description: How many targets to probe at the same time.
    type: int
    default: 20
  retries:
    description: Probe an unhealthy target again up to this many times before giving up on it.
    type: int
    default: 0
  delay:
    description: Seconds between retries, and between rounds of O(wait_until_healthy).
    type: float
    default: 1.0
  wait_until_healthy:
    description:
      - Poll until every required target is up, then return; give up after O(deadline) seconds.
      - Only targets still down are probed again. Do not combine with O(retries).
    type: bool
    default: false
  deadline:
    description:
      - Seconds O(wait_until_healthy) may take in all. Probes of the last round get only the time left, so the task
        ends by the deadline.
    type: float
    default: 60.0
  fail_on_unhealthy:
    description:
      - Fail the task when the overall status is C(unhealthy).
      - With V(false) the task succeeds and reports the status for later tasks to act on.
    type: bool
    default: true
notes:
  - Needs the Python library C(psycopg2) for postgres targets and C(redis) for redis targets, on the host the module runs on.
  - >-
    On the controller itself (connection C(local), for example with C(delegate_to: localhost)), with no become,
    async, task C(timeout) or C(environment), and no C(ansible_python_interpreter) set to another Python than the
    controller's, a task whose targets are all of type V(http), V(tcp), V(disk) or V(memory) runs in
    the controller's process: no module is packed and no interpreter started, which saves about half a second a
    task. The same code runs with the same validated options, and the result says RV(in_process). Options the module
    would refuse, and every other case, run the module as usual.
seealso:
  - module: ansible.builtin.uri
  - module: ansible.builtin.wait_for
"""

EXAMPLES = r"""
- name: Check the platform before a deploy
  runbook.ops.health_probe:
    targets:
      - name: api
        type: http
        url: http://localhost:8000/health/ready
        json:
          status: healthy
          checks.database.status: healthy
        max_latency_ms: 500
      - name: frontend
        type: http
        url: https://www.example.com/
        cert_min_days: 14
        required: false
      - name: postgres
        type: postgres
        login_host: db1.internal
        login_user: monitor
        login_password: "{{ vault_monitor_password }}"
      - name: redis
        type: redis
        login_host: cache1.internal
        login_password: "{{ vault_redis_password }}"
        info:
          role: master
      - name: rabbitmq
        type: tcp
        host: mq1.internal
        port: 5672

- name: Wait up to two minutes for the app to come back after a restart
  runbook.ops.health_probe:
    targets:
      - type: http
        url: http://localhost:8000/health/live
    wait_until_healthy: true
    deadline: 120
    delay: 2

- name: Record the status without failing, to decide later
  runbook.ops.health_probe:
    targets: "{{ platform_health_targets }}"
    fail_on_unhealthy: false
  register: health
"""

RETURN = r"""
status:
  description: Overall status.
  returned: always
  type: str
  choices: [healthy, degraded, unhealthy]
  sample: healthy
results:
  description: One entry per target, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Target name.
      type: str
      sample: api
    type:
      description: Target type.
      type: str
      sample: http
    status:
      description: C(healthy), C(degraded) or C(unhealthy).
      type: str
      sample: healthy
    required:
      description: Whether the target was required.
      type: bool
    latency_ms:
      description: Milliseconds the last probe took.
      type: float
      sample: 3.2
    http_status:
      description: HTTP status code (http targets), else null.
      type: int
      sample: 200
    detail:
      description: "What the target answered, for example V(status: healthy) or V(server 15.18)."
      type: str
    error:
      description: Why the target is not healthy, else null.
      type: str
      sample: HTTP 503, expected 200
    attempts:
      description: How many times the target was probed.
      type: int
    cert_days_left:
      description: Days until the TLS certificate expires (http targets with cert_min_days).
      type: int
      returned: when cert_min_days is set and the request succeeded
    used_percent:
      description: Percent of the disk or of the memory in use (disk and memory targets).
      type: float
      returned: for disk and memory targets
    inodes_used_percent:
      description: Percent of the filesystem's inodes in use.
      type: float
      returned: for disk targets
    free_bytes:
      description: Bytes free for unprivileged users on the filesystem.
      type: int
      returned: for disk targets
    available_bytes:
      description: Bytes of memory available (MemAvailable).
      type: int
      returned: for memory targets
    containers:
      description: The project's containers (name, service, state, health, restart_count).
      type: list
      elements: dict
      returned: for containers targets that reached the engine
    queues:
      description: Length of each queue.
      type: dict
      returned: for redis targets with queues
failed_targets:
  description: Names of required targets that are unhealthy.
  returned: always
  type: list
  elements: str
  sample: [api]
counts:
  description: How many targets are in each status.
  returned: always
  type: dict
  sample: {healthy: 4, degraded: 1, unhealthy: 0, total: 5}
duration:
  description: Seconds the whole task took.
  returned: always
  type: float
  sample: 0.42
msg:
  description: The overall status with counts, or which required targets are unhealthy and why.
  returned: always
  type: str
  sample: "1 of 3 targets unhealthy: api (HTTP 503, expected 200)"
rounds:
  description: Rounds of probes run by O(wait_until_healthy); 1 otherwise.
  returned: always
  type: int
in_process:
  description: The probes ran in the controller's own process (see the notes); absent when the module ran.
  returned: when true
  type: bool
  sample: true
"""

from ansible_collections.runbook.ops.plugins.module_utils import _probe
from ansible_collections.runbook.ops.plugins.module_utils._module import run_module


def main():
    run_module(_probe.argspec_ex(), _probe.run)


if __name__ == "__main__":
    main()
