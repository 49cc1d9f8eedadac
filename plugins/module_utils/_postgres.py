# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: PostgreSQL connections and dumps. Not a public API.

The password reaches libpq tools only through PGPASSWORD in their environment, never argv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError
from ansible_collections.runbook.ops.plugins.module_utils import _artifacts

CONNECTION_OPTIONS = dict(
    login_host=dict(type="str", default="localhost", aliases=["host"]),
    login_port=dict(type="int", default=5432, aliases=["port"]),
    login_user=dict(type="str", default="postgres"),
    login_password=dict(type="str", no_log=True),
    login_unix_socket=dict(type="str"),
    ssl_mode=dict(type="str", default="prefer", choices=["allow", "disable", "prefer", "require", "verify-ca", "verify-full"]),
    ca_cert=dict(type="path", aliases=["ssl_rootcert"]),
)


def libpq_env(params, db=None):
    host = params.get("login_unix_socket") or params["login_host"]
    env = dict(os.environ, PGHOST=host, PGPORT=str(params["login_port"]), PGUSER=params["login_user"],
               PGSSLMODE=params["ssl_mode"], PGCONNECT_TIMEOUT="10", PGAPPNAME="runbook.ops")
    if params.get("login_password"):
        env["PGPASSWORD"] = params["login_password"]
    if params.get("ca_cert"):
        env["PGSSLROOTCERT"] = params["ca_cert"]
    if db:
        env["PGDATABASE"] = db
    return env


def connect(params, db):
    try:
        import psycopg2
    except ImportError as exc:
        raise OpsError("the Python library psycopg2 is needed on the host: pip install psycopg2-binary", exception=exc)
    kwargs = dict(host=params.get("login_unix_socket") or params["login_host"], port=params["login_port"],
                  user=params["login_user"], dbname=db, sslmode=params["ssl_mode"], connect_timeout=10,
                  application_name="runbook.ops")
    if params.get("login_password"):
        kwargs["password"] = params["login_password"]
    if params.get("ca_cert"):
        kwargs["sslrootcert"] = params["ca_cert"]
    try:
        conn = psycopg2.connect(**kwargs)
    except psycopg2.Error as exc:
        raise OpsError("cannot connect to PostgreSQL database %r on %s:%s: %s" % (
            db, kwargs["host"], params["login_port"], str(exc).strip().splitlines()[0]), exception=exc)
    conn.autocommit = True
    return conn


def database_facts(params, db):
    """Server version and the database's size and table count, or OpsError if it does not exist."""
    conn = connect(params, db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
                        "pg_database_size(current_database()), "
                        "(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema'))")
            version, version_num, size, tables = cur.fetchone()
    finally:
        conn.close()
    return {"server_version": version, "server_version_num": version_num, "size": size, "tables": tables}


def tool(name, server_version_num=None):
    """The libpq tool for the server's major version when installed (Debian layout), else the one on PATH."""
    if server_version_num:
        candidate = "/usr/lib/postgresql/%d/bin/%s" % (server_version_num // 10000, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if not found:
        raise OpsError("%s is not installed on the host: install the PostgreSQL client package (postgresql-client)" % name)
    return found


def tool_version(path):
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return None


def stream_command(argv, env, sink, what):
    """Run ``argv`` and feed its stdout to ``sink.write``; fail clearly unless it exits 0 with output."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/")
    except OSError as exc:
        raise OpsError("cannot run %s: %s" % (argv[0], exc.strerror), exception=exc)
    errors = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    produced = 0
    try:
        for data in iter(lambda: proc.stdout.read(_artifacts.CHUNK), b""):
            produced += len(data)
            sink.write(data)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    returncode = proc.wait()
    reader.join()
    stderr = b"".join(errors).decode("utf-8", errors="replace").strip()
    if returncode != 0:
        how = "was killed by signal %d" % -returncode if returncode < 0 else "exited with %d" % returncode
        raise OpsError("%s %s: %s; no backup was kept" % (what, how, stderr.splitlines()[-1] if stderr else "no message"))
    if produced == 0:
        raise OpsError("%s exited 0 but wrote nothing (%s); refusing to keep an empty backup" % (what, stderr or "no message"))
    return produced


def dump_argv(pg_dump, fmt, db):
    argv = [pg_dump, "--no-password", "--dbname", db]
    if fmt == "custom":
        argv += ["--format=custom", "--compress=0"]
    else:
        argv += ["--format=plain"]
    return argv


def list_archive(pg_restore, chunks, env):
    """Feed a custom-format archive to ``pg_restore --list``; returns the number of TOC entries."""
    proc = subprocess.Popen([pg_restore, "--list"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd="/")
    out = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    try:
        for data in chunks:
            proc.stdin.write(data)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    stderr = proc.stderr.read().decode("utf-8", errors="replace").strip()
    returncode = proc.wait()
    reader.join()
    if returncode != 0:
        raise OpsError("pg_restore --list rejects the archive: %s" % (stderr or "exit %d" % returncode))
    return sum(1 for line in b"".join(out).decode(errors="replace").splitlines() if line and not line.startswith(";"))
