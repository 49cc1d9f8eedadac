# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: scaling Compose services as a plan made from the engine's state. Not a public API.

``plan_service`` is pure (unit-tested): from a service's containers and the replicas wanted it says which containers
go (stopped gracefully, highest-numbered first, stopped ones before running ones) and whether ``compose up`` must
create or start any. Check mode reports that plan and calls nothing that changes the engine. Scaling up runs
``compose up --no-recreate --no-deps``, so a running container is never recreated; scaling down stops exactly the
planned containers with their stop signal and grace period, then removes them (named volumes stay).
"""

from __future__ import annotations

import math
import re
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.runbook.ops.plugins.module_utils._compose import ComposeProject, project_argspec_ex
from ansible_collections.runbook.ops.plugins.module_utils._docker import api_error, compose_containers, connect, describe
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, Terminated
from ansible_collections.runbook.ops.plugins.module_utils._module import merge_specs
from ansible_collections.runbook.ops.plugins.module_utils._retry import Deadline

LIVE = ("running", "restarting", "paused")
STOP_WORKERS = 32  # Compose stops a service's containers all at once, too
MAX_REPLICAS = 10000
# a container without a healthcheck counts as ready once it has run this long without a restart (a crash loop with
# a restart policy is "running" for an instant every time)
SETTLE_SECONDS = 2.0


def argspec_ex():
    return merge_specs(project_argspec_ex(), {"argspec": {
        "services": {"type": "dict", "required": True},
        "wait": {"type": "bool", "default": True},
        "wait_timeout": {"type": "int", "default": 120},
        "stop_timeout": {"type": "int"},
    }})


def replicas_wanted(services):
    """``services`` as {name: int}: counts are whole numbers >= 0 (``"3"`` is accepted, ``True``/``-1``/``1.5`` not)."""
    if not services:
        raise OpsError("services is empty: give each service to scale and its replicas, e.g. {backend: 3}")
    wanted = {}
    for name, count in services.items():
        if isinstance(count, bool) or not (isinstance(count, int) or
                                           (isinstance(count, str) and re.fullmatch(r"[0-9]+", count.strip()))):
            raise OpsError("services.%s: the replica count must be a whole number >= 0, not %r" % (name, count))
        wanted[str(name)] = int(count)
        if wanted[str(name)] < 0:
            raise OpsError("services.%s: the replica count must be >= 0, not %d" % (name, wanted[str(name)]))
        if wanted[str(name)] > MAX_REPLICAS:
            raise OpsError("services.%s: %d replicas is more than %d on one engine; refusing what looks like a typo"
                           % (name, wanted[str(name)], MAX_REPLICAS))
    return wanted


def plan_service(containers, wanted):
    """What to do for one service. ``containers``: ``describe()`` dicts of its containers."""
    ordered = sorted(containers, key=lambda c: c["number"])
    live = [c for c in ordered if c["state"] in LIVE]
    idle = [c for c in ordered if c["state"] not in LIVE]
    surplus = max(0, len(ordered) - wanted)
    # stopped containers go first (they serve nothing), then the highest-numbered running replicas
    remove = (list(reversed(idle)) + list(reversed(live)))[:surplus]
    removed_ids = {c["id"] for c in remove}
    kept = [c for c in ordered if c["id"] not in removed_ids]
    start = [c["name"] for c in kept if c["state"] not in LIVE]
    return {
        "before": len(live),
        "after": wanted,
        "remove": [{"name": c["name"], "id": c["id"], "number": c["number"], "running": c["state"] in LIVE}
                   for c in remove],
        "start": start,
        "create": max(0, wanted - len(kept)),
    }


def plan_changes(plan):
    return bool(plan["remove"] or plan["start"] or plan["create"])


def not_ready(container):
    """Why a container is not ready yet (None when it is running and, with a healthcheck, healthy)."""
    if container["state"] != "running":
        if container["state"] in ("exited", "dead") and container.get("exit_code") is not None:
            return "%s with code %s" % (container["state"], container["exit_code"])
        return container["state"]
    if container["health"] not in ("none", "healthy"):
        if container["last_health_exit_code"] is None:
            return "running, %s" % container["health"]
        output = ": %s" % container["last_health_output"] if container["last_health_output"] else " with no output"
        return "running, %s: last check exited %s%s" % (container["health"], container["last_health_exit_code"], output)
    return None


def cannot_recover(container):
    """An exited container no restart policy brings back: waiting longer cannot help."""
    return container["state"] in ("exited", "dead") and container["restart_policy"] == "no"


class Settling:
    """Containers without a healthcheck are ready only after SETTLE_SECONDS running without a restart."""

    def __init__(self, seconds=SETTLE_SECONDS, clock=time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self.since = {}

    def why_not(self, container):
        reason = not_ready(container)
        if reason or container["health"] != "none":
            return reason
        run = (container["id"], container.get("started_at"), container.get("restart_count"))
        first = self.since.setdefault(run, self.clock())
        if self.clock() - first < self.seconds:
            return "running for less than %gs (restarted %s times)" % (self.seconds, container.get("restart_count", 0))
        return None


class ComposeScale:
    def __init__(self, module, params):
        self.module = module
        self.params = params
        self.started = time.monotonic()
        self.wanted = replicas_wanted(params["services"])
        if params["wait"] and params["wait_timeout"] <= 0:
            raise OpsError("wait_timeout must be > 0 seconds, not %d" % params["wait_timeout"])
        if params.get("stop_timeout") is not None and params["stop_timeout"] < 0:
            raise OpsError("stop_timeout must be >= 0 seconds, not %d" % params["stop_timeout"])
        self.client = connect(params.get("docker_host"), params["api_timeout"])
        self.project = ComposeProject(params)
        self._check_services()

    def _check_services(self):
        known = self.project.services
        unknown = sorted(set(self.wanted) - set(known))
        if unknown:
            raise OpsError("no service %s in Compose project %s (its services: %s); nothing was changed"
                           % (", ".join(unknown), self.project.name, ", ".join(sorted(known)) or "none"))
        for name, count in self.wanted.items():
            if count > 1 and known[name].get("container_name"):
                raise OpsError("service %s sets container_name %r, so it cannot run %d replicas; nothing was changed"
                               % (name, known[name]["container_name"], count))

    def current(self, service):
        found = [describe(c) for c in compose_containers(self.client, self.project.name, service)]
        return sorted(found, key=lambda c: c["number"])

    def run(self):
        plans = {name: plan_service(self.current(name), count) for name, count in self.wanted.items()}
        changed = any(plan_changes(p) for p in plans.values())
        result = {"changed": changed, "project_name": self.project.name, "services": {},
                  "diff": {"before": {"services": {n: p["before"] for n, p in plans.items()}},
                           "after": {"services": {n: p["after"] for n, p in plans.items()}}}}
        if self.module.check_mode:
            for name, plan in plans.items():
                result["services"][name] = {"before": plan["before"], "after": plan["after"], "created": plan["create"],
                                            "started": plan["start"], "removed": plan["remove"],
                                            "containers": self.current(name)}
            result["duration_seconds"] = self._elapsed()
            return result
        removed = {}
        try:
            if any(p["remove"] for p in plans.values()):
                removed = self._scale_down(plans)
            up = sorted(n for n, p in plans.items() if p["start"] or p["create"])
            if up:
                self._up(up, result, removed)
            containers = self._wait(result, removed) if self.params["wait"] else {n: self.current(n) for n in plans}
        except OpsError as exc:  # after a change began, the failure says so, with what was already done
            raise exc.extend("", changed=result["changed"], project_name=self.project.name,
                             removed=exc.details.get("removed", removed), duration_seconds=self._elapsed())
        except Terminated as exc:
            exc.details.update(changed=result["changed"], project_name=self.project.name, removed=removed,
                               note="stopped by a signal while scaling; containers already stopped stay stopped, "
                                    "run the task again to reach the planned replicas")
            raise
        for name, plan in plans.items():
            result["services"][name] = {"before": plan["before"], "after": plan["after"], "created": plan["create"],
                                        "started": plan["start"], "removed": removed.get(name, []),
                                        "containers": containers[name]}
        result["duration_seconds"] = self._elapsed()
        return result

    def _elapsed(self):
        return round(time.monotonic() - self.started, 3)

    def _grace(self, service):
        if self.params.get("stop_timeout") is not None:
            return self.params["stop_timeout"]
        return self.project.grace_period(service)

    def _scale_down(self, plans):
        jobs = [(name, entry) for name, plan in plans.items() for entry in plan["remove"]]
        with ThreadPoolExecutor(max_workers=min(STOP_WORKERS, len(jobs))) as pool:
            done = list(pool.map(lambda job: self._remove(*job), jobs))
        removed = {}
        for (name, _entry), outcome in zip(jobs, done):
            removed.setdefault(name, []).append(outcome)
        failures = [o for o in done if o.get("error")]
        if failures:
            raise OpsError("scaling down failed for %s; run the task again to finish"
                           % "; ".join("%s: %s" % (o["name"], o["error"]) for o in failures),
                           changed=True, removed=removed)
        return removed

    def _remove(self, service, entry):
        outcome = dict(entry)
        grace = self._grace(service)
        started = time.monotonic()
        try:
            if entry["running"]:
                # the engine sends the container's stop signal (SIGTERM unless the service sets stop_signal) and
                # SIGKILL only after the grace period: a Celery worker finishes its tasks (warm shutdown)
                self.client.api.stop(entry["id"], timeout=int(math.ceil(grace)))
            state = self.client.api.inspect_container(entry["id"]).get("State", {})
            outcome.update(exit_code=state.get("ExitCode"), stop_seconds=round(time.monotonic() - started, 3),
                           killed_after_grace=bool(entry["running"] and state.get("ExitCode") == 137))
            self.client.api.remove_container(entry["id"], v=False)
        except Exception as exc:
            if getattr(exc, "status_code", None) in (404, 409):  # gone, or being removed by someone else: done
                outcome.update(stop_seconds=round(time.monotonic() - started, 3), removed_by_another=True)
            else:
                outcome["error"] = api_error("cannot stop and remove %s" % entry["name"], exc).message
        return outcome

    def _up(self, services, result, removed):
        argv = ["up", "--detach", "--no-recreate", "--no-deps", "--no-build"]
        for name in services:
            argv += ["--scale", "%s=%d" % (name, self.wanted[name])]
        try:
            self.project.run(*(argv + ["--"] + services), what="compose up")
        except OpsError as exc:
            raise exc.extend("the services may be partly scaled; run the task again", changed=True,
                             removed=removed, project_name=self.project.name)

    def _wait(self, result, removed):
        """Poll the engine until every container of the services is running and healthy, up to wait_timeout."""
        timeout = self.params["wait_timeout"]
        deadline = Deadline(timeout)
        settling = Settling()
        while True:
            containers = {name: self.current(name) for name in self.wanted}
            reasons = {c["id"]: settling.why_not(c) for cs in containers.values() for c in cs}
            waiting = [c for cs in containers.values() for c in cs if reasons[c["id"]]]
            short = [n for n, cs in containers.items() if len(cs) != self.wanted[n]]
            if not waiting and not short:
                return containers
            hopeless = [c for c in waiting if cannot_recover(c)]
            if hopeless or deadline.passed():
                why = "exited and no restart policy brings them back" if hopeless else \
                    "did not become ready within wait_timeout (%ds)" % timeout
                names = "; ".join("%s (%s)" % (c["name"], reasons[c["id"]]) for c in (hopeless or waiting))
                if short:
                    names += ("; " if names else "") + "; ".join(
                        "%s has %d containers, not %d" % (n, len(containers[n]), self.wanted[n]) for n in short)
                raise OpsError("%s %s: %s" % ("these containers" if waiting else "the services", why, names),
                               changed=result["changed"], project_name=self.project.name, removed=removed,
                               services={n: {"containers": cs} for n, cs in containers.items()},
                               duration_seconds=self._elapsed())
            time.sleep(min(0.1, max(deadline.left(), 0.01)))
