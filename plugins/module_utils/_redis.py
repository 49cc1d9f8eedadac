# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: Redis connections, facts, RDB files and scratch servers. Not a public API.

The password reaches redis-cli only through REDISCLI_AUTH in its environment, and a scratch
redis-server gets its settings from a 0600 file, never from argv. Every client is bounded by its
timeout and never retries on its own: a server that does not answer fails in ``connect_timeout``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess

from ansible_collections.runbook.ops.plugins.module_utils import _container
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line
from ansible_collections.runbook.ops.plugins.module_utils._process import run_tool
from ansible_collections.runbook.ops.plugins.module_utils._retry import poll

CONNECT_TIMEOUT = 10
RDB_MAGIC = b"REDIS"
RDB_EOF = 0xFF


def connection_argspec_ex():
    """The connection options every Redis module shares (doc fragment runbook.ops.redis)."""
    return {"argspec": dict(
        login_host=dict(type="str", default="localhost", aliases=["host"]),
        login_port=dict(type="int", default=6379, aliases=["port"]),
        login_user=dict(type="str"),
        login_password=dict(type="str", no_log=True),
        tls=dict(type="bool", default=False),
        ca_cert=dict(type="path"),
        validate_certs=dict(type="bool", default=True),
        connect_timeout=dict(type="float", default=CONNECT_TIMEOUT),
    )}


def validate_connection(params):
    if not 0 < params["login_port"] < 65536:
        raise OpsError("login_port is %d: a port is 1-65535" % params["login_port"])
    if params.get("connect_timeout") is not None and params["connect_timeout"] <= 0:
        raise OpsError("connect_timeout must be more than 0 seconds")


def library():
    try:
        import redis
    except ImportError as exc:
        raise OpsError("the Python library redis is needed on the host: pip install redis (or apt install python3-redis)",
                       exception=exc)
    return redis


def client_kwargs(params, db=0, timeout=None):
    """redis-py arguments: bounded by ``timeout`` and with redis-py's own retries turned off."""
    library()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeout = timeout or params.get("connect_timeout") or CONNECT_TIMEOUT
    kwargs = dict(host=params.get("login_host") or "localhost", port=int(params.get("login_port") or 6379), db=db,
                  username=params.get("login_user"), password=params.get("login_password"), socket_timeout=timeout,
                  socket_connect_timeout=timeout, client_name="runbook.ops", retry=Retry(NoBackoff(), 0),
                  retry_on_timeout=False)
    if params.get("tls"):
        kwargs.update(ssl=True, ssl_ca_certs=params.get("ca_cert"),
                      ssl_cert_reqs="required" if params.get("validate_certs", True) else "none")
    return kwargs


def explain(exc, params):
    """An operator's reading of a redis-py error."""
    redis = library()
    text = first_line(exc)
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "HELLO must be called" in text:
        if not params.get("login_password"):
            return "the server needs a password: give login_password (and login_user for an ACL user)"
        return "the server refused the login: check login_user and login_password (%s)" % text
    if isinstance(exc, redis.TimeoutError):
        return "no answer within %ss (connect_timeout): the server is frozen, overloaded or behind a dead network path" \
            % (params.get("connect_timeout") or CONNECT_TIMEOUT)
    return text


def reach(params, tools=("redis-cli",)):
    """The container the options name (None without one), with its ``tools`` checked, before anything is written."""
    container = _container.resolve(params)
    if container is None:
        return None
    if params.get("tls"):
        raise OpsError("tls with a container: the module connects from inside the container's own network, where the "
                       "server's plain port is used; set tls: false")
    for name in tools:
        if name not in container.cache:
            try:
                container.cache[name] = run_tool([name, "--version"], cli_env(params), "%s --version" % name,
                                                 timeout=30).decode(errors="replace").strip()
            except OpsError as exc:
                raise _container.explain_exec(exc, container, name)
    return container


def where(params):
    container = _container.of(params)
    if container is not None:
        return "container %s" % container.name
    return "%s:%s" % (params.get("login_host") or "localhost", params.get("login_port") or 6379)


def make_client(params, db=0, timeout=None):
    """An unconnected redis-py client; in a container, its connections start inside the container's network."""
    redis = library()
    kwargs = client_kwargs(params, db, timeout)
    container = _container.of(params)
    if container is None:
        return redis.Redis(**kwargs)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=_container_connection(redis),
                                                            container=container, **kwargs))


def _container_connection(redis):
    class ContainerConnection(redis.Connection):
        def __init__(self, container=None, **kwargs):
            self.runbook_container = container
            super().__init__(**kwargs)

        def _connect(self):
            sock = self.runbook_container.connect_tcp(self.host, self.port, self.socket_connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.socket_timeout)
            return sock

    return ContainerConnection


def client(params, db=0, timeout=None):
    """A connected client; OpsError that names the server when it is down or refuses the login."""
    redis = library()
    conn = make_client(params, db, timeout)
    kwargs = client_kwargs(params, db, timeout)
    conn.runbook_params = params
    try:
        conn.ping()
    except redis.RedisError as exc:
        raise OpsError("cannot reach Redis at %s%s: %s" % (
            "%s:%s" % (kwargs["host"], kwargs["port"]), " in " + where(params) if _container.of(params) else "",
            explain(exc, params)), exception=exc)
    return conn


_CLIENTS = {}


def for_db(conn, db):
    """A client on the same server as ``conn`` for another db, made once with the same settings."""
    if db == conn.connection_pool.connection_kwargs.get("db", 0):
        return conn
    key = (id(conn), db)
    if key not in _CLIENTS:
        _CLIENTS[key] = (conn, client(conn.runbook_params, db=db))  # keep conn alive so its id stays unique
    return _CLIENTS[key][1]


def db_exists(conn, db):
    """Whether the server has db number ``db`` (CONFIG GET databases, else a SELECT on a fresh connection)."""
    configured = config_get(conn, "databases")
    if configured is not None:
        return 0 <= db < int(configured)
    redis = library()
    try:
        for_db(conn, db)
        return True
    except OpsError as exc:
        if isinstance(exc.exception, redis.ResponseError):
            return False
        raise


def cli_argv(params, tool="redis-cli"):
    path = tool if _container.of(params) is not None else shutil.which(tool)  # in a container: its own
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
    container = _container.of(params)
    if container is not None:
        return container.env({"REDISCLI_AUTH": params.get("login_password") or None})
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


def replica_of(conn):
    """'host:port' of the master when the server is a replica, else None."""
    info = conn.info("replication")
    if info.get("role") in ("slave", "replica"):
        return "%s:%s" % (info.get("master_host"), info.get("master_port"))
    return None


def memory(conn):
    """used_memory, maxmemory (0 = no limit), the eviction policy and the memory of an empty server."""
    info = conn.info("memory")
    return {"used": int(info.get("used_memory", 0)), "max": int(info.get("maxmemory", 0)),
            "policy": info.get("maxmemory_policy", "noeviction"), "startup": int(info.get("used_memory_startup", 0))}


def config_get(conn, name):
    """CONFIG GET, or None when CONFIG is disabled or renamed on a hardened server."""
    redis = library()
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
    def ready():
        if proc is not None and proc.poll() is not None:
            raise OpsError("Redis could not load %s: %s" % (what, log_tail() if log_tail else "it exited"))
        try:
            conn = client(params, timeout=5)
            return conn if not conn.info("persistence").get("loading") else None
        except Exception:  # OpsError while it starts, BusyLoadingError while it loads
            return None

    def give_up():
        raise OpsError("Redis did not finish loading %s in %ss" % (what, timeout))

    return poll(ready, timeout, 0.02, on_timeout=give_up)


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
            raise OpsError("redis-server is not installed on the host; restores load the backup into a private "
                           "redis-server first: install the redis-server package")
        conf = os.path.join(self.directory, self.name + ".conf")
        with open(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write("port %d\nbind 127.0.0.1\nprotected-mode yes\ndir %s\ndbfilename %s\nappendonly no\nsave \"\"\n"
                         "daemonize no\nlogfile %s\nrequirepass %s\ndatabases 256\n"
                         % (self.port, self.directory, self.rdb_name, self.log, self.password))
        self.proc = subprocess.Popen([binary, conf], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.directory)

    def wait(self, timeout):
        """A client once the server has loaded the RDB; OpsError with Redis's own words when it cannot."""
        params = {"login_host": "127.0.0.1", "login_port": self.port, "login_password": self.password}
        try:
            return wait_loaded(params, timeout, "the backup", self.proc, self.log_tail)
        except BaseException:
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
