"""A real multi-host fleet for the tests, molecule and ``make demo-fleet``: systemd hosts reached over SSH.

Each host is a container of a private Docker engine (``servers.DockerEngine``: its own socket, data root, exec root
and cgroup parent; overlay2; no default bridge; the host's iptables and IP forwarding untouched) on a user-defined
bridge network with a static IP. systemd runs as PID 1 without --privileged. The hosts have no route out: a private
apt-cacher-ng on the bridge gateway gives them the host's own Debian mirror. The base image is made without any
registry (debootstrap, then ``docker import``) and cached under ``.deps/fleet`` keyed by its recipe.

A fleet is declared as a list of hosts: ``{"name": "db1", "groups": ["db"], "dind": False}``; ``dind`` hosts run
their own Docker engine inside (app hosts). ``up()`` writes an inventory (real SSH, key auth); ``down()`` removes
everything by container id and PID, even after a failed test, and leaves nothing mounted.

Command line::

    python tests/harness/fleet.py up --state-dir .fleet                 # the demo fleet; prints the inventory path
    python tests/harness/fleet.py up --state-dir .deps/molecule --engine-only   # engine, network, proxy, image
    python tests/harness/fleet.py down --state-dir .fleet

Both write ``<state dir>/fleet.env`` (DOCKER_HOST, RUNBOOK_FLEET_NETWORK, RUNBOOK_FLEET_PROXY, RUNBOOK_FLEET_IMAGE,
RUNBOOK_FLEET_COMPOSE) for molecule's docker driver, which starts its own hosts on the same engine and network.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import (DockerEngine, ServerError, alive, compose_binary, release_mounts, remove_links,  # noqa: E402
                     remove_cgroups, stop_pid)

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("RUNBOOK_FLEET_CACHE", REPO / ".deps" / "fleet"))
SUITE = "bookworm"
PACKAGES = ["python3", "python3-apt", "systemd", "systemd-sysv", "openssh-server", "sudo", "dbus", "iproute2", "procps",
            "ca-certificates", "cron"]
IMAGE = "runbook-fleet-base:%s" % SUITE
HOST_FLAGS = ["--cap-add", "SYS_ADMIN", "--cgroupns=private", "--tmpfs", "/run", "--tmpfs", "/run/lock",
              "--stop-signal", "SIGRTMIN+3", "--restart", "unless-stopped"]
DIND_FLAGS = ["--cap-add", "NET_ADMIN", "--security-opt", "seccomp=unconfined", "--sysctl", "net.ipv4.ip_forward=1"]
BOOT_TIME_COMMAND = "cut -d' ' -f22 /proc/1/stat"  # PID 1's start time: the boot id and uptime are the host's
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=2"]

DEMO = [{"name": "db1", "groups": ["db"]}, {"name": "cache1", "groups": ["cache"]},
        {"name": "app1", "groups": ["app"], "dind": True}, {"name": "app2", "groups": ["app"], "dind": True}]

# What the image gets besides debootstrap's packages: the ansible user (sudo, key), per-host SSH keys and
# machine-id at first boot, and two container fixes (see the README of the fleet in docs/fleet.md).
CUSTOMIZE = r"""
set -eu
R=$1; PUB=$2; MIRROR=$3; SECURITY=$4
cat > $R/etc/apt/sources.list <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
chroot $R useradd -m -s /bin/bash -G sudo ansible
chroot $R usermod -p '*' ansible
echo 'ansible ALL=(ALL) NOPASSWD:ALL' > $R/etc/sudoers.d/ansible; chmod 0440 $R/etc/sudoers.d/ansible
install -d -m 700 $R/home/ansible/.ssh
install -m 600 $PUB $R/home/ansible/.ssh/authorized_keys
chroot $R chown -R ansible:ansible /home/ansible/.ssh
rm -f $R/etc/ssh/ssh_host_*
cat > $R/etc/systemd/system/ssh-hostkeys.service <<EOF
[Unit]
Description=Generate SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/ssh-hostkeys.service $R/etc/systemd/system/multi-user.target.wants/ssh-hostkeys.service
# systemd #29656: PrivateUsers= with ProtectProc=invisible fails in containers (217/USER), e.g. redis-server
mkdir -p $R/etc/systemd/system/service.d
printf '[Service]\nProtectProc=default\n' > $R/etc/systemd/system/service.d/10-container-protectproc.conf
# a nested Docker engine needs the cgroup v1 hierarchies writable: remount them (bind, rw) before containerd/docker
cat > $R/usr/local/sbin/cgroups-rw <<'EOF'
#!/bin/sh
awk '$3 == "cgroup" {print $2}' /proc/self/mounts | while read -r m; do mount -o remount,bind,rw "$m"; done
EOF
chmod 755 $R/usr/local/sbin/cgroups-rw
cat > $R/etc/systemd/system/cgroups-rw.service <<'EOF'
[Unit]
Description=Make cgroup v1 hierarchies writable for a nested container engine
DefaultDependencies=no
Before=containerd.service docker.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/cgroups-rw
EOF
for u in containerd docker; do
  mkdir -p $R/etc/systemd/system/$u.service.requires
  ln -sf /etc/systemd/system/cgroups-rw.service $R/etc/systemd/system/$u.service.requires/
done
: > $R/etc/machine-id
rm -f $R/var/lib/dbus/machine-id
echo localhost > $R/etc/hostname
rm -rf $R/var/cache/apt/archives/*.deb $R/var/lib/apt/lists/* $R/var/log/*.log
# empty package lists that look fresh would make apt's cache_valid_time skip the first update
touch -d @0 $R/var/lib/apt/lists
"""


def run(argv, check=True, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise ServerError("%s failed (%d): %s%s"
                          % (" ".join(map(str, argv[:4])), proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
    return proc


def host_mirrors():
    """The Debian mirror and security mirror this machine's apt uses (deb822 or one-line sources)."""
    mirror, security = "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"
    texts = []
    for path in [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*")):
        if path.suffix in (".list", ".sources") or path.name == "sources.list":
            try:
                texts.append(path.read_text())
            except OSError:
                continue
    for text in texts:
        for line in text.splitlines():
            words = line.replace("URIs:", "").split() if line.startswith("URIs:") else (
                line.split()[1:2] if line.startswith("deb ") else [])
            for uri in words:
                uri = uri.rstrip("/")
                if uri.endswith("debian-security"):
                    security = uri
                elif uri.endswith("/debian"):
                    mirror = uri
    return mirror, security


def free_subnet():
    """A /24 in 172.30-172.47 that no route of this machine uses."""
    used = run(["ip", "-4", "route"]).stdout
    networks = [ipaddress.ip_network(word, strict=False) for word in used.split() if "/" in word and word[0].isdigit()]
    for second in range(30, 48):
        for third in range(0, 256, 16):
            candidate = ipaddress.ip_network("172.%d.%d.0/24" % (second, third))
            if not any(candidate.overlaps(n) for n in networks):
                return candidate
    raise ServerError("no free 172.30-47.x.0/24 subnet for the fleet network")


def free_port(host, first=3142, last=3199):
    """A free port from a low range: apt-cacher-ng cannot bind ports above 32767 ("Error resolving address")."""
    for port in range(first, last + 1):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
                return port
            except OSError:
                continue
    raise ServerError("no free port in %d-%d on %s" % (first, last, host))


@contextlib.contextmanager
def cache_lock(name):
    """An exclusive lock on a file under the cache, across processes (two fleets may come up at once)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / (name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class AptProxy:
    """A private apt-cacher-ng on the bridge gateway, fetching from this machine's own mirror.

    Its cache under .deps/fleet persists across runs, owned by one apt-cacher-ng at a time: the shared cache's lock is
    held by the apt-cacher-ng process itself (inherited descriptor), and a proxy that finds it taken (another fleet
    running) uses a cache of its own in the state directory.
    """

    def __init__(self, state_dir, address, mirror, security):
        self.dir = Path(state_dir) / "apt-proxy"
        self.cache = CACHE / "apt-cache"
        self.lock = None
        self.address = address
        self.port = free_port(address)
        self.mirror, self.security = mirror, security
        self.pid = None

    @property
    def url(self):
        return "http://%s:%d" % (self.address, self.port)

    def start(self, on_started=lambda pid: None):
        binary = shutil.which("apt-cacher-ng") or "/usr/sbin/apt-cacher-ng"
        if not Path(binary).exists():
            raise ServerError("apt-cacher-ng is not installed: apt-get install apt-cacher-ng (make deps does it)")
        CACHE.mkdir(parents=True, exist_ok=True)
        self.lock = open(CACHE / "apt-cache.lock", "a")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.cache = self.dir / "cache"
        for path in (self.dir / "log", self.cache):
            path.mkdir(parents=True, exist_ok=True)
        try:
            shutil.chown(self.cache, "apt-cacher-ng", "apt-cacher-ng")
        except (LookupError, PermissionError):
            pass
        (self.dir / "acng.conf").write_text("\n".join([
            "CacheDir: %s" % self.cache, "LogDir: %s" % (self.dir / "log"), "SupportDir: /usr/lib/apt-cacher-ng",
            "Port: %d" % self.port, "BindAddress: %s" % self.address, "SocketPath: %s" % (self.dir / "sock"),
            "PidFile: %s" % (self.dir / "pid"), "ForeGround: 1", "ReportPage: acng-report.html", "ExThreshold: 4",
            "Remap-debrep: file:deb_mirror*.gz /debian ; %s/" % self.mirror,
            "Remap-secdeb: security.debian.org deb.debian.org/debian-security /debian-security ; %s/" % self.security,
        ]) + "\n")
        with open(self.dir / "stdout.log", "ab") as log:
            proc = subprocess.Popen([binary, "-c", str(self.dir)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=[self.lock.fileno()])
        self.lock.close()  # apt-cacher-ng holds it now, for as long as it runs
        self.pid = proc.pid
        on_started(proc.pid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerError("apt-cacher-ng exited with %s: %s" % (proc.returncode, (self.dir / "stdout.log").read_text()))
            try:
                socket.create_connection((self.address, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise ServerError("apt-cacher-ng does not listen on %s" % self.url)

    def mirror_url(self):
        """deb.debian.org/debian as debootstrap reaches it through the proxy (remapped to this machine's mirror)."""
        return "%s/deb.debian.org/debian" % self.url


def recipe_key(public_key):
    text = json.dumps([SUITE, PACKAGES, CUSTOMIZE, public_key])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Fleet:
    def __init__(self, state_dir, hosts=None):
        self.state_dir = Path(state_dir).resolve()
        self.hosts = [dict(h) for h in (DEMO if hosts is None else hosts)]
        self.state_file = self.state_dir / "fleet.json"
        self.key = CACHE / "id_ed25519"
        self.inventory = self.state_dir / "inventory.yml"
        self.engine = None
        self.network = None
        self.subnet = None
        self.proxy = None
        self.state = {"containers": {}, "volumes": []}

    @classmethod
    def attach(cls, state_dir):
        """A fleet another process brought up (``up --state-dir``), to run commands on; it stays up."""
        state_file = Path(state_dir).resolve() / "fleet.json"
        if not state_file.exists():
            raise ServerError("no fleet in %s: python tests/harness/fleet.py up --state-dir %s" % (state_dir, state_dir))
        state = json.loads(state_file.read_text())
        fleet = cls(state_dir, state["hosts"])
        fleet.state = state
        return fleet

    # --- bring-up -----------------------------------------------------------------------------------

    def up(self):
        started = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        short = Path(tempfile.mkdtemp(prefix="rbf-", dir="/tmp"))  # socket and exec paths must stay short
        self.engine = DockerEngine(short, data_root=self.state_dir / "engine")
        self.engine.log = self.state_dir / "dockerd.log"  # kept after teardown, for a failed run
        self.network = "runbook-fleet-%s" % short.name[4:]
        self.state.update(engine_dir=str(short), data_root=str(self.engine.data_root),
                          cgroup_parent=self.engine.cgroup_parent, network=self.network)
        self.save()
        try:
            self.engine.start()
            self.state["engine_pid"] = self.engine.proc.pid
            self.save()
            self.subnet = free_subnet()
            gateway = str(next(self.subnet.hosts()))
            self.state["bridge"] = "rbf%s" % self.network[-6:]
            self.save()
            self.docker("network", "create", "--driver", "bridge", "--subnet", str(self.subnet), "--gateway", gateway,
                        "-o", "com.docker.network.bridge.name=%s" % self.state["bridge"], self.network)
            self.proxy = AptProxy(self.state_dir, gateway, *host_mirrors())
            self.state.update(subnet=str(self.subnet), gateway=gateway, proxy=self.proxy.url)
            self.proxy.start(on_started=self.record_proxy)
            with cache_lock("image"):
                self.ensure_key()
                self.ensure_image()
            addresses = list(self.subnet.hosts())[10:]
            for index, host in enumerate(self.hosts):
                host.setdefault("ip", str(addresses[index]))
                host.setdefault("groups", [])
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(self.start_host, self.hosts))
            for host in self.hosts:  # one at a time: apt-cacher-ng races on index files fetched at the same instant
                self.apt_update(host)
            self.write_inventory()
            self.write_env()
        except BaseException:
            self.down()
            raise
        self.state["bring_up_seconds"] = round(time.monotonic() - started, 1)
        self.save()
        return self

    def record_proxy(self, pid):
        self.state["proxy_pid"] = pid
        self.save()

    def docker(self, *args, **kwargs):
        return self.engine.docker(*args, **kwargs)

    def save(self):
        self.state["hosts"] = self.hosts
        self.state_file.write_text(json.dumps(self.state, indent=2))

    def ensure_key(self):
        CACHE.mkdir(parents=True, exist_ok=True)
        if not self.key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "runbook-fleet", "-f", str(self.key)])
        os.chmod(self.key, 0o600)

    def ensure_image(self):
        """Import the cached base image, or build it (debootstrap through the proxy) and cache its rootfs tar."""
        public = self.key.with_suffix(".pub").read_text()
        tarball = CACHE / ("%s-%s.tar" % (SUITE, recipe_key(public)))
        if not tarball.exists():
            self.build_rootfs(tarball, public)
        with open(tarball, "rb") as handle:
            run(["docker", "import", "-c", 'CMD ["/sbin/init"]', "-c", "ENV container=docker", "-", IMAGE],
                stdin=handle, env=dict(os.environ, **self.engine.env))

    def build_rootfs(self, tarball, public):
        if not shutil.which("debootstrap"):
            raise ServerError("debootstrap is not installed: apt-get install debootstrap (make deps does it)")
        work = Path(tempfile.mkdtemp(prefix="rbf-rootfs-", dir=str(CACHE)))
        root = work / "rootfs"
        try:
            run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(root),
                 self.proxy.mirror_url()], timeout=1800)
            (work / "pub").write_text(public)
            # the hosts ask for deb.debian.org through the proxy, which remaps it to this machine's mirror
            run(["sh", "-c", CUSTOMIZE.replace("$SUITE", SUITE), "customize", str(root), str(work / "pub"),
                 "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"])
            partial = work / "rootfs.tar"
            run(["tar", "-C", str(root), "-cf", str(partial), "."])
            partial.rename(tarball)
        finally:
            release_mounts(work)
            shutil.rmtree(work, ignore_errors=True)

    def start_host(self, host):
        argv = ["run", "-d", "--name", "%s-%s" % (self.network, host["name"]), "--hostname", host["name"],
                "--network", self.network, "--ip", host["ip"]] + HOST_FLAGS
        if host.get("dind"):
            volume = "%s-%s-docker" % (self.network, host["name"])
            self.state["volumes"].append(volume)
            argv += DIND_FLAGS + ["-v", "%s:/var/lib/docker" % volume]
        host["id"] = self.docker(*argv, IMAGE, "/sbin/init").stdout.strip()
        self.state["containers"][host["name"]] = host["id"]
        proxy = 'Acquire::http::Proxy "%s";\nAcquire::http::Timeout "30";\nAcquire::Retries "3";\n' % self.proxy.url
        self.docker("exec", "-i", host["id"], "sh", "-c", "cat > /etc/apt/apt.conf.d/01proxy", input=proxy)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.ssh(host, "true", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise ServerError("host %s does not accept SSH on %s after 60 s" % (host["name"], host["ip"]))

    def apt_update(self, host, attempts=3):
        """apt-get update that fails on any index it could not fetch (apt's default only warns), retried."""
        for attempt in range(1, attempts + 1):
            done = self.ssh(host, "sudo apt-get update -qq --error-on=any", check=attempt == attempts, timeout=300)
            if done.returncode == 0:
                return
            time.sleep(2 * attempt)

    def ssh(self, host, command, check=True, timeout=120):
        host = host if isinstance(host, dict) else self.host(host)
        argv = ["ssh", "-i", str(self.key)] + SSH_OPTIONS + ["ansible@%s" % host["ip"], command]
        return run(argv, check=check, timeout=timeout)

    def host(self, name):
        return next(h for h in self.hosts if h["name"] == name)

    def write_env(self):
        values = {"DOCKER_HOST": self.engine.host, "RUNBOOK_FLEET_NETWORK": self.network, "RUNBOOK_FLEET_PROXY": self.proxy.url,
                  "RUNBOOK_FLEET_IMAGE": IMAGE, "RUNBOOK_FLEET_COMPOSE": str(compose_binary()),
                  "RUNBOOK_FLEET_SUBNET": str(self.subnet)}
        (self.state_dir / "fleet.env").write_text("".join("export %s=%s\n" % item for item in values.items()))

    def write_inventory(self):
        groups = {}
        for host in self.hosts:
            for group in host["groups"] or ["ungrouped"]:
                groups.setdefault(group, {"hosts": {}})["hosts"][host["name"]] = {"ansible_host": host["ip"]}
        inventory = {"all": {"vars": {
            "ansible_user": "ansible",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": " ".join(SSH_OPTIONS[:6]),
            "ansible_become": True,
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_pipelining": True,
            # each user's own temp (the tests point ANSIBLE_REMOTE_TEMP at a controller path: a module run as root
            # after a reboot emptied /tmp would create it root-only, and the next file copy as ansible would fail)
            "ansible_remote_tmp": "~/.ansible/tmp",
            # test-inventory facts about these container hosts, never role defaults for real hosts
            "fleet_reboot_boot_time_command": BOOT_TIME_COMMAND,
            "fleet_apt_proxy": self.proxy.url,
            "fleet_subnet": str(self.subnet),
            "fleet_compose_binary": str(compose_binary()),
        }, "children": groups}}
        self.inventory.write_text(json.dumps(inventory, indent=2) + "\n")

    # --- teardown ------------------------------------------------------------------------------------

    def down(self):
        """Remove everything this fleet started, by container id and PID; safe to call twice or after a failure."""
        state = self.state
        if self.state_file.exists():
            state = dict(json.loads(self.state_file.read_text()), **{k: v for k, v in state.items() if v})
        if not state.get("engine_dir"):
            return
        engine_dir = Path(state["engine_dir"])
        running = self.engine is not None and self.engine.proc is not None and self.engine.proc.poll() is None
        if not running and state.get("engine_pid") and alive(state["engine_pid"]):
            env = dict(os.environ, DOCKER_HOST="unix://%s/docker.sock" % engine_dir)
            ids = list((state.get("containers") or {}).values())
            if ids:
                run(["docker", "rm", "-f", "-v"] + ids, check=False, env=env)
            run(["docker", "network", "rm", state.get("network") or self.network], check=False, env=env)
            left = DockerEngine(engine_dir)  # networks others made on this engine (molecule's) go too
            bridges = left.bridges()
            left.docker("network", "prune", "-f", check=False)
            stop_pid(state["engine_pid"], 30)
            remove_links(bridges)
        elif running:
            self.engine.docker("network", "rm", self.network, check=False)
            self.engine.stop()
        if state.get("proxy_pid"):
            stop_pid(state["proxy_pid"], 30)
        if state.get("bridge") and Path("/sys/class/net", state["bridge"]).exists():
            run(["ip", "link", "delete", state["bridge"]], check=False)
        release_mounts(engine_dir, state["data_root"])
        remove_cgroups(state["cgroup_parent"])
        shutil.rmtree(state["data_root"], ignore_errors=True)
        shutil.rmtree(engine_dir, ignore_errors=True)
        if self.state_file.exists():
            self.state_file.unlink()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--state-dir", default=".fleet")
    parser.add_argument("--engine-only", action="store_true", help="no hosts: the engine, network, proxy and image")
    args = parser.parse_args(argv)
    fleet = Fleet(args.state_dir)
    try:
        if args.action == "up":
            Fleet(args.state_dir).down()  # a fleet left by an earlier run
            fleet = Fleet(args.state_dir, [] if args.engine_only else None).up()
            print("fleet up in %ss: %s" % (fleet.state["bring_up_seconds"], fleet.inventory))
        else:
            fleet.down()
            print("fleet in %s is down" % args.state_dir)
    except ServerError as exc:
        sys.exit("error: %s" % exc)


if __name__ == "__main__":
    main()
