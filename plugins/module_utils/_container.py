# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: a database server that runs in a container. Not a public API.

The client tools (pg_dump, psql, redis-cli ...) run inside the container through the engine's exec API
(``docker exec -i``), so they match the server and need nothing on the host; their stdin and stdout are the
same pipes the host path uses. Secrets reach them through the exec's environment: ``docker exec -e NAME``
takes the value from the CLI's own environment, so no argv on either side holds it. The module's own
connections (psycopg2, redis-py) are TCP connections made from inside the container's network namespace (libpq
through a private relay socket), so they need no published port and never touch the container's files, which a
process in the container could turn into links to the host's. The engine must run on the host that runs the task,
and the task as root.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading

from ansible_collections.runbook.ops.plugins.module_utils import _docker
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line

TOKEN_VAR = "RUNBOOK_EXEC"
# What the container's own environment could use to send a client elsewhere (a libpq service file, a host address)
# or change what it does: unset for every tool (``env -u``); the module's values are given by name after it.
UNSET = ("PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR", "PGHOSTADDR", "PGOPTIONS", "PGDATABASE", "PGREQUIREAUTH",
         "PGTARGETSESSIONATTRS", "PGLOADBALANCEHOSTS")
RELAY_PREFIX = "rbk-relay-"
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
        self.netns = "/proc/%d/ns/net" % self.pid
        self.docker_host = docker_host
        self.user = user
        self.cache = {}
        self.relays = {}

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
            action = "docker unpause %s" % found.name if state.get("Paused") else \
                "docker start %s, or docker compose up -d" % found.name
            raise OpsError("container %s is %s, not running: %s, and run the task again; nothing was written"
                           % (found.name, state.get("Status", "stopped"), action))
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
        if not os.access(self.netns, os.R_OK):
            raise OpsError("cannot reach the network of container %s through %s: run the task as root (become: true), "
                           "with the capabilities a host's root has (CAP_SYS_PTRACE, CAP_SYS_ADMIN; root inside another "
                           "container may lack them)" % (self.name, self.netns))

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
        unset = [arg for name in UNSET if name not in env for arg in ("-u", name)]
        return wrapped + [self.id, "/usr/bin/env"] + unset + list(argv), cli_env, token

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
                handle = os.open(self.netns, os.O_RDONLY)
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

    def unix_relay(self, host, port, timeout):
        """A Unix socket directory on this host whose ``.s.PGSQL.<port>`` leads to ``host:port`` in the container.

        For libpq, which cannot be handed a socket: each connection to the relay opens a TCP connection from inside
        the container's network namespace and the bytes are copied both ways. Nothing of the container's filesystem
        is touched, so nothing in the container can redirect the module elsewhere.
        """
        key = (host, port)
        if key not in self.relays:
            self.relays[key] = _Relay(self, host, port, timeout)
        return self.relays[key].directory


class _Relay:
    def __init__(self, container, host, port, timeout):
        # 0700: only this task's user reaches it; in /tmp, as a socket path is limited to 107 bytes; named by our pid so
        # a later task removes it if this one is killed
        _sweep_relays()
        self.directory = tempfile.mkdtemp(prefix="%s%d-" % (RELAY_PREFIX, os.getpid()), dir="/tmp")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(os.path.join(self.directory, ".s.PGSQL.%d" % port))
        self.listener.listen(16)
        self.target = (container, host, port, timeout)
        threading.Thread(target=self.serve, daemon=True).start()
        atexit.register(self.close)

    def serve(self):
        container, host, port, timeout = self.target
        while True:
            try:
                client, _address = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = container.connect_tcp(host, port, timeout)
            except OSError:
                client.close()  # libpq reports the refused connection
                continue
            upstream.settimeout(None)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self):
        try:
            self.listener.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _sweep_relays():
    """Remove relay directories of tasks that are gone (killed before they could)."""
    try:
        names = os.listdir("/tmp")
    except OSError:
        return
    for name in names:
        pid = name[len(RELAY_PREFIX):].split("-", 1)[0]
        if not name.startswith(RELAY_PREFIX) or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join("/tmp", name), ignore_errors=True)
        except OSError:
            pass


def _pump(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _on(params):
    return " at %s" % params["docker_host"] if params.get("docker_host") else ""


def describe(container):
    return {"name": container.name, "id": container.id[:12]} if container else None


def explain_exec(exc, container, tool):
    """A clearer message for a tool the container does not have, or a container_user it does not know."""
    text = first_line(exc)
    if "unable to find user" in text or "no matching entries in passwd" in text:
        return OpsError("container_user %r is not a user of container %s (%s); nothing was written"
                        % (container.user, container.name, text), exception=exc)
    if "stat /usr/bin/env" in text or 'exec: "/usr/bin/env"' in text:  # env itself is missing
        return OpsError("container %s has no env (coreutils or busybox), which its tools are started with so that its "
                        "own environment cannot send them to another server" % container.name, exception=exc)
    if "executable file not found" in text or "exited with 127" in text or "exited with 126" in text:
        return OpsError("container %s has no %s: use the server's own image (it ships its client tools), or install "
                        "them in it; nothing was written" % (container.name, tool), exception=exc)
    return exc
