# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: a database server that runs in a container. Not a public API.

The client tools (pg_dump, psql, redis-cli ...) run inside the container through the engine's exec API
(``docker exec -i``), so they match the server and need nothing on the host; their stdin and stdout are the
same pipes the host path uses. Secrets reach them through the exec's environment: ``docker exec -e NAME``
takes the value from the CLI's own environment, so no argv on either side holds it. The module's own
connections (psycopg2, redis-py) go through the container's namespaces: PostgreSQL's Unix socket under
``/proc/<pid>/root``, Redis over TCP from inside the container's network namespace. That needs no published
port, and it needs the engine on the host that runs the task, with the task running as root.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import threading

from ansible_collections.runbook.ops.plugins.module_utils import _docker
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line

TOKEN_VAR = "RUNBOOK_EXEC"
API_TIMEOUT = 30
_CLONE_NEWNET = 0x40000000
_MAX_LINKS = 40


def container_argspec_ex():
    """Options of every module that reaches a database in a container (doc fragment runbook.ops.container)."""
    return {"argspec": dict(
        container=dict(type="str"),
        compose_service=dict(type="str"),
        project_name=dict(type="str"),
        container_user=dict(type="str"),
        docker_host=dict(type="str"),
    ), "mutually_exclusive": [("container", "compose_service")],
        "required_by": {"compose_service": "project_name"}}


def wanted(params):
    return bool(params.get("container") or params.get("compose_service"))


_RESOLVED = {}  # one lookup per task: helpers get the same Container from any copy of the options


def _key(params):
    return tuple(params.get(name) for name in ("docker_host", "container", "compose_service", "project_name",
                                               "container_user"))


def resolve(params):
    """The Container ``params`` names, looked up once, or None when they name none."""
    if not wanted(params):
        return None
    key = _key(params)
    if key not in _RESOLVED:
        _RESOLVED[key] = Container.find(params)
    return _RESOLVED[key]


def of(params):
    """The Container ``params`` name (found on first use: never the host's server by mistake), or None."""
    return resolve(params)


class ExecEnv(dict):
    """The environment a tool sees inside ``container``: the values travel by name, never in argv."""

    def __init__(self, container, values):
        super().__init__(values)
        self.container = container


class Container:
    def __init__(self, inspected, docker_host, user):
        self.id = inspected["Id"]
        self.name = inspected.get("Name", "").lstrip("/")
        self.pid = int((inspected.get("State") or {}).get("Pid") or 0)
        self.root = "/proc/%d/root" % self.pid
        self.docker_host = docker_host
        self.user = user
        self.default_user = (inspected.get("Config") or {}).get("User") or ""
        self.cache = {}

    # --- finding it -------------------------------------------------------------------------------

    @classmethod
    def find(cls, params):
        client = _docker.connect(params.get("docker_host"), API_TIMEOUT)
        try:
            inspected = cls._inspect(client, params)
        finally:
            client.close()
        found = cls(inspected, params.get("docker_host"), params.get("container_user"))
        state = inspected.get("State") or {}
        if not state.get("Running") or state.get("Paused") or state.get("Restarting"):
            raise OpsError("container %s is %s, not running: start it (docker start %s, or docker compose up -d) and run "
                           "the task again; nothing was written" % (found.name, state.get("Status", "stopped"), found.name))
        found.check_local()
        return found

    @staticmethod
    def _inspect(client, params):
        if params.get("container"):
            try:
                return client.api.inspect_container(params["container"])
            except Exception as exc:
                if getattr(exc, "status_code", None) == 404:
                    raise OpsError("no container named %r on the Docker engine%s: check container (docker ps -a lists "
                                   "them); nothing was written" % (params["container"], _on(params)), exception=exc)
                raise _docker.api_error("cannot inspect container %r" % params["container"], exc)
        project, service = params["project_name"], params["compose_service"]
        found = [c for c in _docker.compose_containers(client, project, service) if (c.get("State") or {}).get("Running")]
        if not found:
            raise OpsError("Compose project %r has no running container of service %r on the Docker engine%s: start it "
                           "(docker compose up -d %s) or check project_name and compose_service; nothing was written"
                           % (project, service, _on(params), service))
        return min(found, key=lambda c: int(((c.get("Config") or {}).get("Labels") or {}).get(_docker.NUMBER) or 0))

    def check_local(self):
        """The container's processes must be this host's: its namespaces and files are reached through /proc."""
        try:
            with open("/proc/%d/cgroup" % self.pid) as handle:
                local = self.id in handle.read()
        except OSError:
            local = False
        if not local:
            raise OpsError("container %s does not run on the host that runs this task (its process %d is not here): run "
                           "the task on the engine's host (delegate_to it), not against a remote docker_host"
                           % (self.name, self.pid))
        if not os.access(self.root + "/", os.R_OK | os.X_OK):
            raise OpsError("cannot reach the files of container %s through %s: run the task as root (become: true), with "
                           "the capabilities a host's root has (CAP_SYS_PTRACE, CAP_SYS_ADMIN; root inside another "
                           "container may lack them)" % (self.name, self.root))

    # --- files ------------------------------------------------------------------------------------

    def host_path(self, path):
        """This host's path to ``path`` inside the container; its symlinks resolve inside, never onto the host's files."""
        parts = [p for p in path.split("/") if p]
        resolved = []
        links = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            try:
                link = os.readlink("%s/%s" % (self.root, "/".join(resolved + [part])))
            except OSError:
                resolved.append(part)  # not a link, or not there (the caller finds out)
                continue
            links += 1
            if links > _MAX_LINKS:
                raise OpsError("too many symbolic links under %s in container %s" % (path, self.name))
            if link.startswith("/"):
                resolved = []
            parts = [p for p in link.split("/") if p] + parts
        return "%s/%s" % (self.root, "/".join(resolved))

    def exec_ids(self):
        """(uid, gid) the tools run as: container_user, else the container's user, else root."""
        if "ids" not in self.cache:
            self.cache["ids"] = self._ids(self.user or self.default_user)
        return self.cache["ids"]

    def _ids(self, spec):
        name, _sep, group = (spec or "0").partition(":")
        uid = gid = None
        if name.isdigit():
            uid = int(name)
        try:
            with open(self.host_path("/etc/passwd"), encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    fields = line.split(":")
                    if len(fields) > 3 and (fields[0] == name or (uid is not None and fields[2] == str(uid))):
                        uid, gid = int(fields[2]), int(fields[3])
                        break
        except (OSError, ValueError):
            pass
        if uid is None:
            raise OpsError("container_user %r is not a user of container %s (not in its /etc/passwd): give a user name it "
                           "has, or a numeric uid" % (name, self.name))
        if group.isdigit():
            gid = int(group)
        return uid, uid if gid is None else gid

    @contextlib.contextmanager
    def scratch(self, prefix=".runbook-"):
        """A private directory in the container's /tmp: (path on this host, path inside the container)."""
        inside = "/tmp/%s%s" % (prefix, secrets.token_hex(6))
        outside = self.host_path(inside)
        try:
            os.mkdir(outside, 0o700)
            os.chown(outside, *self.exec_ids())
        except OSError as exc:
            raise OpsError("cannot make a scratch directory %s in container %s: %s (its /tmp must be writable)"
                           % (inside, self.name, exc.strerror), exception=exc)
        try:
            yield outside, inside
        finally:
            shutil.rmtree(outside, ignore_errors=True)

    def give(self, path):
        """Hand a file or directory under a scratch directory to the user the tools run as."""
        uid, gid = self.exec_ids()
        os.lchown(path, uid, gid)
        for top, dirs, files in os.walk(path):
            for name in dirs + files:
                os.lchown(os.path.join(top, name), uid, gid)

    def inside(self, host_path):
        """The container's path for a path this host reaches under its root, else None."""
        prefix = self.root + "/"
        return "/" + host_path[len(prefix):] if host_path.startswith(prefix) else None

    # --- running tools ----------------------------------------------------------------------------

    def env(self, values):
        return ExecEnv(self, {k: str(v) for k, v in values.items() if v is not None})

    def wrap(self, argv, env):
        """(argv, environment, token) for the docker CLI that runs ``argv`` inside with ``env``."""
        docker = shutil.which("docker")
        if not docker:
            raise OpsError("the docker CLI is needed on this host to run %s inside container %s: install it (docker.io, "
                           "or docker-ce-cli)" % (os.path.basename(argv[0]), self.name))
        token = secrets.token_hex(8)
        cli_env = _docker.engine_env(self.docker_host)
        wrapped = [docker, "exec", "-i", "-e", TOKEN_VAR]
        if self.user:
            wrapped += ["-u", self.user]
        for name, value in env.items():
            cli_env[name] = value
            wrapped += ["-e", name]
        cli_env[TOKEN_VAR] = token
        for arg in argv:
            if self.inside(arg) and os.path.lexists(arg):
                self.give(arg)  # what the module wrote as root, the tool reads as the container's user
        return wrapped + [self.id] + [self.inside(a) or a for a in argv], cli_env, token

    def kill(self, token):
        """Kill what an exec with ``token`` started: stopping the CLI alone would close the tool's stdin (EOF)."""
        marker = ("%s=%s" % (TOKEN_VAR, token)).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/environ" % entry, "rb") as handle:
                    if marker in handle.read().split(b"\0"):
                        os.kill(int(entry), signal.SIGKILL)
            except OSError:
                continue

    # --- connections ------------------------------------------------------------------------------

    def connect_tcp(self, host, port, timeout):
        """A TCP socket connected from inside the container's network namespace."""
        box = {}

        def work():
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                handle = os.open("/proc/%d/ns/net" % self.pid, os.O_RDONLY)
                try:
                    if libc.setns(handle, _CLONE_NEWNET) != 0:
                        errno = ctypes.get_errno()
                        raise OSError(errno, os.strerror(errno))
                finally:
                    os.close(handle)
                box["socket"] = socket.create_connection((host, port), timeout=timeout)
            except OSError as exc:
                box["error"] = exc

        thread = threading.Thread(target=work, daemon=True)  # setns moves only this thread, which then ends
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["socket"]


def _on(params):
    return " at %s" % params["docker_host"] if params.get("docker_host") else ""


def describe(container):
    return {"name": container.name, "id": container.id[:12]} if container else None


def explain_exec(exc, container, tool):
    """A clearer message for a tool the container does not have."""
    text = first_line(exc)
    if "executable file not found" in text or "exited with 127" in text or "exited with 126" in text:
        return OpsError("container %s has no %s: use the server's own image (it ships its client tools), or install "
                        "them in it; nothing was written" % (container.name, tool), exception=exc)
    return exc
