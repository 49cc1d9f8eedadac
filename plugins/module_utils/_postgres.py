# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: PostgreSQL connections and client tools. Not a public API.

The password reaches libpq tools only through PGPASSWORD in their environment, never argv. A database name
reaches them only inside a quoted conninfo (``dbname='...'``), so a name holding ``=`` or a URI is never parsed
as connection parameters.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from ansible_collections.runbook.ops.plugins.module_utils import _container
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line
from ansible_collections.runbook.ops.plugins.module_utils._process import feed_command, run_tool

CONNECT_TIMEOUT = 10


def connection_argspec_ex():
    """The connection options every PostgreSQL module shares (doc fragment runbook.ops.postgres)."""
    return {"argspec": dict(
        login_host=dict(type="str", default="localhost", aliases=["host"]),
        login_port=dict(type="int", default=5432, aliases=["port"]),
        login_user=dict(type="str", default="postgres"),
        login_password=dict(type="str", no_log=True),
        login_unix_socket=dict(type="str"),
        ssl_mode=dict(type="str", default="prefer", choices=["allow", "disable", "prefer", "require", "verify-ca",
                                                             "verify-full"]),
        ca_cert=dict(type="path", aliases=["ssl_rootcert"]),
        connect_timeout=dict(type="int", default=CONNECT_TIMEOUT),
    )}


def validate_connection(params):
    if _container.wanted(params) and params.get("login_unix_socket"):
        raise OpsError("login_unix_socket with a container: the module reaches the server over TCP inside the "
                       "container's own network (login_host, default localhost, and login_port); leave it out")
    if not 0 < params["login_port"] < 65536:
        raise OpsError("login_port is %d: a port is 1-65535" % params["login_port"])
    if params.get("connect_timeout") is not None and params["connect_timeout"] < 1:
        raise OpsError("connect_timeout is %d: give at least 1 second (libpq waits at least 2)" % params["connect_timeout"])


def validate_db_name(name, option="db"):
    """PostgreSQL's own limits on a database name, checked before any connection."""
    if not name:
        raise OpsError("%s is empty: give a database name" % option)
    if "\x00" in name:
        raise OpsError("%s holds a NUL byte, which PostgreSQL names cannot hold" % option)
    if len(name.encode("utf-8")) > 63:
        raise OpsError("%s %r is %d bytes long; PostgreSQL names are at most 63 bytes (longer ones are cut, so they "
                       "would name another database)" % (option, name, len(name.encode("utf-8"))))
    return name


KEEPALIVES = " keepalives=1 keepalives_idle=30 keepalives_interval=10 keepalives_count=6"


def _quoted(value):
    return "'%s'" % str(value).replace("\\", "\\\\").replace("'", "\\'")


def conninfo(dbname, params=None):
    """``dbname='...'`` with libpq's quoting: the tools take it as a connection string, never as a bare name.

    TCP keepalives make a tool notice a dead network path in about 90 s instead of hanging. In a container, host,
    port and user are written into it too: a service file named by the container's own environment (PGSERVICE)
    would otherwise win over PGHOST and PGPORT and lead the tool to another server.
    """
    text = "dbname=%s" % _quoted(dbname) + KEEPALIVES
    if params is not None and _container.of(params) is not None:
        host, port = _inside(params)
        text += " host=%s port=%s user=%s" % (_quoted(host), _quoted(port), _quoted(params.get("login_user") or "postgres"))
    return text


def _timeout(params):
    return max(2, int(params.get("connect_timeout") or CONNECT_TIMEOUT))


def reach(params, tools=()):
    """The container the options name (None without one), with its ``tools`` checked.

    Called after the options are validated and before anything is written, so a container that is missing,
    stopped, on another host or without the tools fails first.
    """
    container = _container.resolve(params)
    if container is None:
        return None
    host, port = _inside(params)
    if ("tcp", host, port) not in container.cache:
        try:
            container.connect_tcp(host, port, _timeout(params)).close()
        except OSError as exc:
            raise OpsError("nothing answers on %s:%d inside container %s (%s): is PostgreSQL up there and listening on "
                           "TCP (listen_addresses)? login_host and login_port are as seen from inside the container"
                           % (host, port, container.name, exc.strerror or exc), exception=exc)
        container.cache[("tcp", host, port)] = True
    for name in tools:
        if name not in container.cache:
            container.cache[name] = tool_version(name, libpq_env(params), required=True)
    return container


def _inside(params):
    """Host and port of the server as seen from inside its container: localhost as 127.0.0.1, so the container's own
    /etc/hosts (its root can write it) cannot send the tools or the relay elsewhere."""
    host = params.get("login_host") or "localhost"
    return "127.0.0.1" if host == "localhost" else host, int(params.get("login_port") or 5432)


def where(params):
    """The server as the operator names it: host:port, socket:port, or the container."""
    container = _container.of(params)
    if container is not None:
        return "container %s" % container.name
    return "%s:%s" % (params.get("login_unix_socket") or params["login_host"], params["login_port"])


def libpq_env(params):
    container = _container.of(params)
    if container is not None:
        host, port = _inside(params)
        return container.env(dict(PGHOST=host, PGPORT=port, PGUSER=params.get("login_user") or "postgres",
                                  PGCONNECT_TIMEOUT=_timeout(params), PGAPPNAME="runbook.ops",
                                  PGPASSWORD=params.get("login_password") or None))
    host = params.get("login_unix_socket") or params["login_host"]
    env = dict(os.environ, PGHOST=host, PGPORT=str(params["login_port"]), PGUSER=params["login_user"],
               PGSSLMODE=params["ssl_mode"], PGCONNECT_TIMEOUT=str(_timeout(params)), PGAPPNAME="runbook.ops")
    for name in ("PGDATABASE", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGPASSWORD", "PGPASSFILE"):
        env.pop(name, None)  # what the caller's environment says must not change which server or database we reach
    if params.get("login_password"):
        env["PGPASSWORD"] = params["login_password"]
    if params.get("ca_cert"):
        env["PGSSLROOTCERT"] = params["ca_cert"]
    return env


def connect_kwargs(params, db, application_name="runbook.ops", connect_timeout=None):
    """psycopg2 connection arguments from the connection options shared by every module."""
    container = _container.of(params)
    host = params.get("login_unix_socket") or params.get("login_host") or "localhost"
    if container is not None:  # TCP inside the container's network, through a private relay socket here
        host = container.unix_relay(*_inside(params), timeout=connect_timeout or _timeout(params))
    kwargs = dict(host=host,
                  port=int(params.get("login_port") or 5432), user=params.get("login_user") or "postgres",
                  dbname=db, sslmode=params.get("ssl_mode") or "prefer",
                  connect_timeout=connect_timeout or _timeout(params), application_name=application_name)
    if params.get("login_password"):
        kwargs["password"] = params["login_password"]
    if params.get("ca_cert"):
        kwargs["sslrootcert"] = params["ca_cert"]
    return kwargs


def psycopg2_library():
    try:
        import psycopg2
    except ImportError as exc:
        raise OpsError("the Python library psycopg2 is needed on the host: pip install psycopg2-binary (or apt install "
                       "python3-psycopg2)", exception=exc)
    return psycopg2


def connect(params, db):
    psycopg2 = psycopg2_library()
    kwargs = connect_kwargs(params, db)
    try:
        conn = psycopg2.connect(**kwargs)
    except psycopg2.Error as exc:
        hint = ""
        if "password" in str(exc) and not params.get("login_password"):
            hint = "; the server wants a password: give login_password"
        raise OpsError("cannot connect to PostgreSQL database %r on %s:%s: %s%s" % (
            db, kwargs["host"], kwargs["port"], first_line(exc), hint), exception=exc)
    conn.autocommit = True
    return conn


def database_facts(params, db):
    """Server version and the database's size and table count, or OpsError if it does not exist."""
    conn = connect(params, db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
                        "pg_database_size(current_database()), current_setting('is_superuser') = 'on', "
                        "(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema'))")
            version, version_num, size, superuser, tables = cur.fetchone()
    finally:
        conn.close()
    return {"server_version": version, "server_version_num": version_num, "size": size, "tables": tables,
            "superuser": superuser}


def tool(name, server_version_num=None, params=None):
    """The libpq tool for the server's major version when installed (Debian layout), else the one on PATH.

    In a container, the container's own tool (on its PATH): it matches its server.
    """
    if params is not None and _container.of(params) is not None:
        return name
    if server_version_num:
        candidate = "/usr/lib/postgresql/%d/bin/%s" % (server_version_num // 10000, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if not found:
        raise OpsError("%s is not installed on the host: install the PostgreSQL client package (postgresql-client)" % name)
    return found


def tool_version(path, env=None, required=False):
    container = getattr(env, "container", None)
    if container is not None:
        try:
            return run_tool([path, "--version"], env, "%s --version" % path, timeout=30).decode(errors="replace").strip()
        except OpsError as exc:
            if required:
                raise _container.explain_exec(exc, container, path)
            return None
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, check=False, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def dump_argv(pg_dump, fmt, db, jobs=1, directory=None, params=None):
    argv = [pg_dump, "--no-password", "--dbname", conninfo(db, params)]
    if fmt == "custom":
        argv += ["--format=custom", "--compress=0"]
    elif fmt == "directory":
        argv += ["--format=directory", "--compress=0", "--jobs=%d" % max(1, jobs), "--file", directory]
    else:
        argv += ["--format=plain"]
    return argv


def globals_argv(pg_dumpall, maintenance_db="postgres", role_passwords=True, params=None):
    argv = [pg_dumpall, "--no-password", "--globals-only", "--dbname", conninfo(maintenance_db, params)]
    return argv if role_passwords else argv + ["--no-role-passwords"]


def count_toc(listing):
    return sum(1 for line in listing.decode(errors="replace").splitlines() if line and not line.startswith(";"))


def list_archive(pg_restore, chunks, env):
    """Feed a custom-format archive to ``pg_restore --list``; returns the number of TOC entries."""
    return count_toc(feed_command([pg_restore, "--list"], env, chunks, "pg_restore --list rejects the archive:", capture=True))
