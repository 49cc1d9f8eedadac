# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: one way to reach a Docker engine (the Docker SDK, every call bounded). Not a public API."""

from __future__ import annotations

import os

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line

PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
NUMBER = "com.docker.compose.container-number"
ONEOFF = "com.docker.compose.oneoff"


def docker_argspec_ex():
    return {"argspec": {
        "docker_host": {"type": "str"},
        "api_timeout": {"type": "int", "default": 60},
    }}


def engine_env(docker_host):
    """The environment for the Docker CLI and SDK: DOCKER_HOST set when the task names an engine."""
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    return env


def connect(docker_host=None, timeout=60):
    """A DockerClient for ``docker_host`` (else DOCKER_HOST, else the default socket) that answered a ping."""
    try:
        import docker  # imported here: only the tasks that reach an engine pay for it
    except ImportError as exc:
        raise OpsError("the Python library 'docker' is required on the host that runs this task: pip install docker",
                       exception=exc)
    where = docker_host or os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"
    try:
        client = docker.from_env(environment=engine_env(docker_host), timeout=timeout)
        client.ping()
    except Exception as exc:  # DockerException, requests' connection errors, a bad URL
        raise OpsError("no Docker engine answers at %s: %s. Start the engine, or set docker_host to the engine's "
                       "socket or URL" % (where, first_line(exc)), exception=exc)
    return client


def api_error(what, exc):
    return OpsError("%s: %s" % (what, first_line(exc)), exception=exc)


def compose_containers(client, project, service=None):
    """The project's containers (not one-off `run` containers), inspected, with their compose labels."""
    labels = ["%s=%s" % (PROJECT, project), "%s=False" % ONEOFF]  # as Compose selects them: strays not counted
    if service is not None:
        labels.append("%s=%s" % (SERVICE, service))
    try:
        listed = client.api.containers(all=True, filters={"label": labels})
        found = []
        for summary in listed:
            try:
                found.append(client.api.inspect_container(summary["Id"]))
            except Exception as exc:
                if getattr(exc, "status_code", None) == 404:  # removed between the list and the inspect
                    continue
                raise
    except OpsError:
        raise
    except Exception as exc:
        raise api_error("cannot list the containers of Compose project %s" % project, exc)
    return found


def describe(inspected):
    """What an operator needs of a container: name, id, number, state, health and its last health output."""
    state = inspected.get("State", {})
    labels = inspected.get("Config", {}).get("Labels") or {}
    health = state.get("Health") or {}
    log = health.get("Log") or []
    return {
        "name": inspected.get("Name", "").lstrip("/"),
        "id": inspected.get("Id", "")[:12],
        "service": labels.get(SERVICE),
        "number": int(labels[NUMBER]) if labels.get(NUMBER, "").isdigit() else 0,
        "state": state.get("Status", "unknown"),
        "health": health.get("Status") or "none",
        "last_health_output": (log[-1].get("Output") or "").strip()[-500:] if log else "",
        "last_health_exit_code": log[-1].get("ExitCode") if log else None,
        "exit_code": state.get("ExitCode"),
        "started_at": state.get("StartedAt"),
        "restart_count": inspected.get("RestartCount", 0),
        "restart_policy": (inspected.get("HostConfig", {}).get("RestartPolicy") or {}).get("Name") or "no",
    }
