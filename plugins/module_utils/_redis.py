# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: Redis connections, facts, RDB files and scratch servers. Not a public API.

The password reaches redis-cli only through REDISCLI_AUTH in its environment, and a scratch
redis-server gets its settings from a 0600 file, never from argv.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line

CONNECTION_OPTIONS = dict(
    login_host=dict(type="str", default="localhost", aliases=["host"]),
    login_port=dict(type="int", default=6379, aliases=["port"]),
    login_user=dict(type="str"),
    login_password=dict(type="str", no_log=True),
    tls=dict(type="bool", default=False),
    ca_cert=dict(type="path"),
    validate_certs=dict(type="bool", default=True),
)
RDB_MAGIC = b"REDIS"
RDB_EOF = 0xFF


def _redis_library():
    try:
        import redis
    except ImportError as exc:
        raise OpsError("the Python library redis is needed on the host: pip install redis", exception=exc)
    return redis


def client(params, db=0, timeout=10):
    """A connected client; OpsError that names the server when it is down or refuses the login."""
    redis = _redis_library()
    kwargs = dict(host=params.get("login_host") or "localhost", port=int(params.get("login_port") or 6379), db=db,
                  username=params.get("login_user"), password=params.get("login_password"), socket_timeout=timeout,
                  socket_connect_timeout=timeout, client_name="runbook.ops")
    if params.get("tls"):
        kwargs.update(ssl=True, ssl_ca_certs=params.get("ca_cert"),
                      ssl_cert_reqs="required" if params.get("validate_certs", True) else "none")
    conn = redis.Redis(**kwargs)
    conn.runbook_params = params
    try:
        conn.ping()
    except redis.RedisError as exc:
        raise OpsError("cannot reach Redis at %s:%s: %s" % (kwargs["host"], kwargs["port"], first_line(exc)), exception=exc)
    return conn


def cli_argv(params, tool="redis-cli"):
    path = shutil.which(tool)
    if not path:
        raise OpsError("%s is not installed on the host: install the redis-tools package" % tool)
    argv = [path, "-h", params.get("login_host") or "localhost", "-p", str(params.get("login_port") or 6379)]
    if params.get("login_user"):
        argv += ["--user", params["login_user"]]
    if params.get("tls"):
        argv.append("--tls")
        if params.get("ca_cert"):
            argv += ["--cacert", params["ca_cert"]]
        if not params.get("validate_certs", True):
            argv.append("--insecure")
    return argv


def cli_env(params):
    env = dict(os.environ)
    env.pop("REDISCLI_AUTH", None)
    if params.get("login_password"):
        env["REDISCLI_AUTH"] = params["login_password"]
    return env


def keyspace(conn):
    """{db number: key count} from INFO keyspace."""
    info = conn.info("keyspace")
    return {int(name[2:]): int(value["keys"]) for name, value in info.items() if name.startswith("db")}


def facts(conn):
    info = conn.info()
    return {"redis_version": info.get("redis_version"), "used_memory": info.get("used_memory"),
            "keys": {str(db): count for db, count in sorted(keyspace(conn).items())},
            "aof_enabled": bool(info.get("aof_enabled")), "role": info.get("role")}


def config_get(conn, name):
    """CONFIG GET, or None when CONFIG is disabled or renamed on a hardened server."""
    redis = _redis_library()
    try:
        value = conn.config_get(name)
    except redis.ResponseError:
        return None
    value = value.get(name)
    return value.decode() if isinstance(value, bytes) else value


def rdb_version(head):
    if not head.startswith(RDB_MAGIC) or not head[5:9].isdigit():
        return None
    return int(head[5:9])


class RdbCheck:
    """Wraps a sink: checks an RDB stream's magic and end-of-file opcode on the way through.

    With ``strip_mark``, the 40 hex characters that ``redis-cli --rdb -`` leaves after a diskless
    transfer (it can only truncate them from a file, not from stdout) are held back and dropped.
    """

    MARK = 40

    def __init__(self, sink, strip_mark=False):
        self.sink = sink
        self.strip_mark = strip_mark
        self.head = b""
        self.tail = b""
        self.held = b""
        self.mark_stripped = False

    def write(self, data):
        if self.strip_mark:
            data = self.held + data
            data, self.held = data[:-self.MARK], data[-self.MARK:]
        if not data:
            return
        if len(self.head) < 9:
            self.head += data[:9 - len(self.head)]
        self.tail = (self.tail + data)[-9:]
        self.sink.write(data)

    def finish(self):
        held, self.held, self.strip_mark = self.held, b"", False
        marked = (len(held) == self.MARK and all(c in b"0123456789abcdef" for c in held)
                  and len(self.tail) == 9 and self.tail[0] == RDB_EOF)
        if marked:
            self.mark_stripped = True
        else:
            self.write(held)

    def version(self, what):
        if self.strip_mark:
            self.finish()
        version = rdb_version(self.head)
        if version is None:
            raise OpsError("%s is not an RDB file (it does not start with REDIS and a version)" % what)
        if version >= 5 and (len(self.tail) < 9 or self.tail[0] != RDB_EOF):
            raise OpsError("%s is truncated: the RDB does not end with its end-of-file marker and checksum" % what)
        return version


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_loaded(params, timeout, what, proc=None, log_tail=None):
    """Poll until the server answers and has finished loading its data; a client on db 0."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise OpsError("Redis could not load %s: %s" % (what, log_tail() if log_tail else "it exited"))
        try:
            conn = client(params, timeout=5)
            if not conn.info("persistence").get("loading"):
                return conn
        except Exception:  # OpsError while it starts, BusyLoadingError while it loads
            pass
        if time.monotonic() > deadline:
            raise OpsError("Redis did not finish loading %s in %ss" % (what, timeout))
        time.sleep(0.02)


class ScratchServer:
    """A private redis-server on a free loopback port that loads an RDB file; Redis itself parses the data."""

    def __init__(self, directory, name="scratch", rdb_name="dump.rdb"):
        self.directory = directory
        self.name = name
        self.rdb_name = rdb_name
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.log = os.path.join(directory, name + ".log")
        self.proc = None

    def launch(self):
        binary = shutil.which("redis-server")
        if not binary:
            raise OpsError("redis-server is not installed on the host; live restores load the backup into a private "
                           "redis-server first: install the redis-server package")
        conf = os.path.join(self.directory, self.name + ".conf")
        with open(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write("port %d\nbind 127.0.0.1\nprotected-mode yes\ndir %s\ndbfilename %s\nappendonly no\nsave \"\"\n"
                         "daemonize no\nlogfile %s\nrequirepass %s\n"
                         % (self.port, self.directory, self.rdb_name, self.log, self.password))
        self.proc = subprocess.Popen([binary, conf], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.directory)

    def wait(self, timeout):
        """A client once the server has loaded the RDB; OpsError with Redis's own words when it cannot."""
        params = {"login_host": "127.0.0.1", "login_port": self.port, "login_password": self.password}
        try:
            return wait_loaded(params, timeout, "the backup", self.proc, self.log_tail)
        except OpsError:
            self.stop()
            raise

    def log_tail(self):
        try:
            with open(self.log, errors="replace") as handle:
                lines = [line.strip() for line in handle if line.strip()]
        except OSError:
            return "no log"
        warnings = [line.split(" # ", 1)[1] for line in lines if " # " in line]  # '#' marks Redis warnings
        return " / ".join((warnings or lines)[-3:])

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
