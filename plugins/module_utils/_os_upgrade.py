# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: OS package upgrades with apt (Debian/Ubuntu) or dnf (RHEL family). Not a public API.

One pass: refresh the package indexes, plan (which upgrades are pending, which of them are security fixes, which
the operator excluded), download (bounded: the only phase that talks to the network), install, and compare the
installed packages before and after, so the packages that changed are facts read from the package database, not
parsed from the installer's chatter. Check mode plans against freshly fetched indexes kept in a private directory,
so it writes nothing, not even apt's lists.

The install phase is never killed: an interrupted dpkg leaves packages half configured. A SIGTERM that arrives
during it is held until the installer is done, then reported.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError
from ansible_collections.runbook.ops.plugins.module_utils._module import merge_specs
from ansible_collections.runbook.ops.plugins.module_utils._process import exit_text, last_line, run_tool

REBOOT_REQUIRED = "/var/run/reboot-required"
APT_LISTS = "/var/lib/apt/lists"
ENV = {"LC_ALL": "C", "LANG": "C", "DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none",
       "NEEDRESTART_MODE": "l", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

# Inst name [installed] (candidate origin:version/archive[, ...] [arch]) ...   (apt-get -s)
_INST = re.compile(r"^Inst (\S+) (?:\[([^\]]*)\] )?\((\S+) (.*) \[([^\]]*)\]\)")
_REMV = re.compile(r"^Remv (\S+)(?: \[([^\]]*)\])?")
# name.arch  version  repo   (dnf check-update)
_DNF_LINE = re.compile(r"^(\S+)\.(\S+)\s+(\S+)\s+(\S+)\s*$")


def argspec_ex():
    return merge_specs({"argspec": dict(
        manager=dict(type="str", default="auto", choices=["auto", "apt", "dnf"]),
        upgrade=dict(type="str", default="safe", choices=["safe", "full"]),
        security_only=dict(type="bool", default=False),
        exclude=dict(type="list", elements="str", default=[]),
        update_cache=dict(type="bool", default=True),
        network_timeout=dict(type="int", default=30),
        download_timeout=dict(type="int", default=1800),
        lock_timeout=dict(type="int", default=120),
    )})


def validate(params):
    """Every check that needs no package manager, before anything runs."""
    for option in ("network_timeout", "download_timeout", "lock_timeout"):
        if params[option] < 1:
            raise OpsError("%s is %d: give at least 1 second" % (option, params[option]))
    for pattern in params["exclude"]:
        if not pattern.strip() or any(c.isspace() for c in pattern) or pattern.startswith("-"):
            raise OpsError("exclude holds %r: give package names or shell patterns (nginx, linux-image-*), without "
                           "spaces and not starting with '-'" % pattern)


def is_security(origins):
    """True when one of the candidate's origins is a security archive (Debian-Security, jammy-security ...)."""
    for origin in origins:  # Label:Version/Archive (Debian-Security:12/stable-security) or Label:Archive
        label, _sep, rest = origin.partition(":")
        if rest.rsplit("/", 1)[-1].lower().endswith("-security") or "security" in label.lower():
            return True
    return False


def parse_apt_simulation(text):
    """``apt-get -s`` output -> (upgrades and installs, removals, kept back), each a list of dicts / names."""
    changes, removals, kept_back = [], [], []
    in_kept = False
    for line in text.splitlines():
        if in_kept:
            if line.startswith(" "):
                kept_back.extend(re.sub(r"\([^)]*\)", " ", line).split())  # -V adds "(old => new)"
                continue
            in_kept = False
        if line.startswith("The following packages have been kept back"):
            in_kept = True
            continue
        match = _INST.match(line)
        if match:
            name, installed, candidate, origins, arch = match.groups()
            origins = [o.strip() for o in origins.split(",") if o.strip()]
            changes.append({"name": name, "installed": installed, "candidate": candidate, "arch": arch,
                            "origins": origins, "security": is_security(origins)})
            continue
        match = _REMV.match(line)
        if match:
            removals.append({"name": match.group(1), "installed": match.group(2)})
    return changes, removals, kept_back


def parse_dnf_check_update(text, security_names=()):
    pending = []
    for line in text.splitlines():
        if line.startswith(("Obsoleting", "Last metadata", "Security:")):
            if line.startswith("Obsoleting"):
                break
            continue
        match = _DNF_LINE.match(line)
        if match:
            name, arch, version, repo = match.groups()
            pending.append({"name": name, "installed": None, "candidate": version, "arch": arch, "origins": [repo],
                            "security": name in security_names})
    return pending


def excluded_by(name, patterns):
    bare = name.split(":", 1)[0]
    return next((p for p in patterns if fnmatch.fnmatchcase(bare, p) or fnmatch.fnmatchcase(name, p)), None)


def compare(before, after):
    """Two package snapshots ({key: (name, arch, version)}) -> (upgraded/downgraded, installed, removed)."""
    changed, installed, removed = [], [], []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old and new and old[2] != new[2]:  # (name, arch, version[, dpkg state])
            changed.append({"name": new[0], "arch": new[1], "before": old[2], "after": new[2]})
        elif new and not old:
            installed.append({"name": new[0], "arch": new[1], "after": new[2]})
        elif old and not new:
            removed.append({"name": old[0], "arch": old[1], "before": old[2]})
    return changed, installed, removed


def _run(argv, what, timeout, env=None, both=False):
    """stdout of a tool (with its stderr when ``both``: apt warns there); OpsError unless it exits 0."""
    if both:
        argv = ["sh", "-c", 'exec "$@" 2>&1', "sh"] + list(argv)
    return run_tool(argv, dict(os.environ, **(env or ENV)), what, timeout=timeout).decode("utf-8", "replace")


def _run_locked(argv, what, timeout, lock_timeout, both=False):
    """``_run``, waiting up to ``lock_timeout`` for another apt (apt-daily) to release the lists or archives lock."""
    deadline = time.monotonic() + lock_timeout
    while True:
        try:
            return _run(argv, what, timeout, both=both)
        except OpsError as exc:
            if "Could not get lock" not in exc.message or time.monotonic() > deadline:
                raise
        time.sleep(3)


def _run_to_the_end(argv, what):
    """Run the installer to completion whatever happens to this process; (returncode, output, signalled).

    Its output goes to a file, not a pipe: if this module dies (SIGKILL, a dropped connection's SIGHUP), apt in its
    own session writes on and dpkg finishes. SIGTERM, SIGINT and SIGHUP meanwhile are noted, and reported after.
    """
    caught = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        with tempfile.TemporaryFile() as output:
            proc = subprocess.Popen(argv, env=dict(os.environ, **ENV), cwd="/", stdin=subprocess.DEVNULL,
                                    stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
            proc.wait()
            output.seek(0)
            text = output.read().decode("utf-8", "replace")
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return proc.returncode, text, bool(caught)


class Upgrade:
    def __init__(self, module, params):
        self.module = module
        self.params = params
        self.check_mode = module.check_mode
        self.durations = {}
        self.backend = None

    def timed(self, phase, func, *args):
        clock = time.monotonic()
        try:
            return func(*args)
        finally:
            self.durations[phase] = round(self.durations.get(phase, 0) + time.monotonic() - clock, 3)

    def run(self):
        validate(self.params)
        clock = time.monotonic()
        self.backend = self.pick_backend()
        with tempfile.TemporaryDirectory(prefix="runbook-upgrade-",
                                         dir="/var/tmp" if os.path.isdir("/var/tmp") else None) as scratch:
            result = self.backend.upgrade(self, scratch)
        self.durations["total"] = round(time.monotonic() - clock, 3)
        result.update(manager=self.backend.name, durations=self.durations, duration=self.durations["total"])
        return result

    def pick_backend(self):
        wanted = self.params["manager"]
        if wanted in ("auto", "apt") and shutil.which("apt-get", path=ENV["PATH"]):
            return Apt(self.params)
        if wanted in ("auto", "dnf") and shutil.which("dnf", path=ENV["PATH"]):
            return Dnf(self.params)
        raise OpsError("no %s on this host: os_upgrade handles apt (Debian, Ubuntu) and dnf (RHEL family); nothing "
                       "was changed" % ("apt-get or dnf" if wanted == "auto" else wanted))

    def select(self, pending):
        """Which pending upgrades this run applies, and which it leaves (excluded, or not a security fix)."""
        selected, excluded, not_security = [], [], []
        for change in pending:
            pattern = excluded_by(change["name"], self.params["exclude"])
            if pattern:
                excluded.append(dict(change, excluded_by=pattern))
            elif self.params["security_only"] and not change["security"]:
                not_security.append(change)
            else:
                selected.append(change)
        return selected, excluded, not_security

    def report(self, pending, selected, excluded, not_security, before, after, extra):
        changed_packages, installed, removed = compare(before, after) if after is not None else ([], [], [])
        changed = bool(changed_packages or installed or removed) if after is not None else bool(selected)
        result = {
            "changed": changed,
            "pending": pending,
            "selected": sorted(c["name"] for c in selected),
            "excluded": sorted(c["name"] for c in excluded),
            "skipped_not_security": sorted(c["name"] for c in not_security),
            "packages": changed_packages,
            "installed": installed,
            "removed": removed,
            "counts": {"pending": len(pending), "selected": len(selected), "excluded": len(excluded),
                       "changed": len(changed_packages), "installed": len(installed), "removed": len(removed)},
        }
        result.update(extra)
        if after is not None:
            lines = ["%s %s -> %s" % (p["name"], p["before"], p["after"]) for p in changed_packages]
            lines += ["%s (new) %s" % (p["name"], p["after"]) for p in installed]
            lines += ["%s %s (removed)" % (p["name"], p["before"]) for p in removed]
        else:
            lines = ["%s %s -> %s" % (c["name"], c["installed"] or "(new)", c["candidate"]) for c in selected]
        if self.module._diff:
            result["diff"] = {"before_header": "installed packages", "after_header": "after the upgrade",
                              "before": "".join("%s %s\n" % (c["name"], c["installed"] or "-") for c in selected),
                              "after": "".join(line + "\n" for line in lines)}
        verb = "would be applied" if after is None else "applied"
        shown = (": " + ", ".join(lines[:20]) + (" ..." if len(lines) > 20 else "")) if lines else ""
        result["msg"] = "%d of %d pending upgrades %s%s" % (len(selected), len(pending), verb, shown)
        return result


class Apt:
    name = "apt"

    def __init__(self, params):
        self.params = params
        self.options = ["-o", "Acquire::http::Timeout=%d" % params["network_timeout"],
                        "-o", "Acquire::https::Timeout=%d" % params["network_timeout"],
                        "-o", "DPkg::Lock::Timeout=%d" % params["lock_timeout"]]
        self.private = []

    def apt_get(self, *args):
        return ["apt-get", "-q"] + self.options + self.private + list(args)

    def use_private_lists(self, scratch):
        """Check mode: fresh indexes fetched into a copy of the lists; no lock, cache file, planner log or hook."""
        os.chmod(scratch, 0o755)  # apt's download user (_apt) must reach partial/
        lists = os.path.join(scratch, "lists")
        shutil.copytree(APT_LISTS, lists, ignore=shutil.ignore_patterns("lock", "partial", "auxfiles"))
        os.makedirs(os.path.join(lists, "partial"), exist_ok=True)
        config = os.path.join(scratch, "apt.conf")
        with open(config, "w") as handle:
            handle.write("#clear APT::Update::Pre-Invoke;\n#clear APT::Update::Post-Invoke;\n"
                         "#clear APT::Update::Post-Invoke-Success;\n#clear DPkg::Pre-Invoke;\n"
                         "#clear DPkg::Post-Invoke;\n")
        self.private = ["-c", config, "-o", "Dir::State::Lists=%s" % lists, "-o", "Debug::NoLocking=1",
                        "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
                        "-o", "Dir::Log::Planner=/dev/null"]

    def update(self):
        output = _run_locked(self.apt_get("update"), "apt-get update", self.params["download_timeout"],
                             self.params["lock_timeout"], both=True)
        bad = ("Err:", "E:", "W: Failed to fetch", "W: Some index files failed")
        failures = [line for line in output.splitlines() if line.startswith(bad)]
        if failures:
            raise OpsError("apt-get update could not fetch every package index (%s): fix the sources or the network "
                           "(proxy, mirror) and run again; nothing was upgraded" % "; ".join(failures[:3]))

    def audit(self):
        text = _run(["dpkg", "--audit"], "dpkg --audit", 60)
        if text.strip():
            raise OpsError("dpkg reports packages left half installed or unconfigured by an earlier run (%s): run "
                           "'dpkg --configure -a' on the host, check what it says, then run again; nothing was upgraded"
                           % last_line(text.encode()))

    def marks(self, which):
        return _run(["apt-mark"] + self.private + [which], "apt-mark " + which, 60).split()

    def snapshot(self):
        """Installed packages (any state but not-installed and config-files) -> (name, arch, version, state)."""
        text = _run(["dpkg-query", "-W", "-f", "${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\n"],
                    "dpkg-query", 120)
        packages = {}
        for line in text.splitlines():
            fields = line.split("\t")
            if len(fields) == 4 and len(fields[3]) > 1 and fields[3][1] not in "nc":
                packages["%s:%s" % (fields[0], fields[1])] = (fields[0], fields[1], fields[2], fields[3][1])
        return packages

    def command(self, selected, everything):
        """The apt-get arguments that apply exactly ``selected``; the whole upgrade when nothing is left out."""
        if everything:
            return ["dist-upgrade"] if self.params["upgrade"] == "full" else ["upgrade", "--with-new-pkgs"]
        names = [c["name"] for c in selected]
        return ["install", "--only-upgrade"] + ([] if self.params["upgrade"] == "full" else ["--no-remove"]) + names

    def simulate(self, args):
        return parse_apt_simulation(_run(self.apt_get("-s", "-V") + args, "apt-get -s %s" % args[0],
                                         self.params["download_timeout"]))

    def refuse_left_out(self, selected, planned, removals):
        """The final plan may touch nothing this run leaves out: not upgrade it along, not remove it."""
        params = self.params
        pulled = [c["name"] for c in planned if excluded_by(c["name"], params["exclude"])
                  or (params["security_only"] and c["installed"] and not c["security"])]
        removed = [r["name"] for r in removals if excluded_by(r["name"], params["exclude"])]
        if pulled or removed:
            raise OpsError("upgrading %s would also %s, which this run leaves out (exclude or security_only): exclude "
                           "the packages that need them too, or let them change; nothing was changed"
                           % (", ".join(c["name"] for c in selected) or "the packages",
                              " and ".join(filter(None, ["upgrade " + ", ".join(sorted(set(pulled))) if pulled else "",
                                                         "remove " + ", ".join(sorted(set(removed))) if removed else ""]))))

    def upgrade(self, task, scratch):
        params = self.params
        task.timed("audit", self.audit)
        if task.check_mode:
            self.use_private_lists(scratch)
        if params["update_cache"]:
            task.timed("update", self.update)
        held = self.marks("showhold")
        pending, removals, kept_back = task.timed("plan", self.simulate, self.command([], True))
        selected, excluded, not_security = task.select(pending)
        everything = not (excluded or not_security)
        args = self.command(selected, everything)
        if selected and not everything:
            planned, removals, _kept = task.timed("plan", self.simulate, args)
            self.refuse_left_out(selected, planned, removals)
        elif selected:
            self.refuse_left_out(selected, [], removals)
        extra = {"held": held, "kept_back": kept_back, "would_remove": [r["name"] for r in removals],
                 "reboot_required_before": os.path.exists(REBOOT_REQUIRED)}
        before = after = None
        if selected and not task.check_mode:
            before = task.timed("snapshot", self.snapshot)
            automatic = set(self.marks("showauto")) if not everything else set()
            task.timed("download", _run_locked, self.apt_get("-y", "--download-only") + args, "apt-get download",
                       params["download_timeout"], params["lock_timeout"])
            returncode, output, signalled = task.timed("install", _run_to_the_end, self.apt_get(
                "-y", "--no-download", "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold")
                + args, "apt-get install")
            after = task.timed("snapshot", self.snapshot)
            # apt-get install marks the packages it is given as manually installed: keep autoremove's view
            again = sorted(automatic & {c["name"] for c in selected} & {v[0] for v in after.values()})
            if again:
                _run(["apt-mark", "auto"] + again, "apt-mark auto", 120)
            if returncode != 0 or signalled:
                failed = task.report(pending, selected, excluded, not_security, before, after, extra)
                why = ("a signal arrived during the install, which was let finish" if signalled else
                       "apt-get %s %s: %s" % (args[0], exit_text(returncode), last_line(output.encode())))
                broken = sorted(v[0] for v in after.values() if v[3] != "i")
                raise OpsError("%s; the packages that did change are in 'packages'%s; check the host (dpkg --audit) and "
                               "run again" % (why, "; not configured: " + ", ".join(broken) if broken else ""),
                               changed=failed["changed"], packages=failed["packages"], installed=failed["installed"],
                               removed=failed["removed"], not_configured=broken)
        extra.update(reboot_status())
        return task.report(pending, selected, excluded, not_security, before, after, extra)


def _version_key(release):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", release) if part]


def kernel_reboot_reason(boot="/boot"):
    """Debian writes /var/run/reboot-required only with unattended-upgrades: a newer installed kernel says it too."""
    running = os.uname().release
    try:
        kernels = [name[len("vmlinuz-"):] for name in os.listdir(boot) if name.startswith("vmlinuz-")]
    except OSError:
        return None
    if running not in kernels:
        return None  # not a kernel this host's packages manage (a container, a custom boot)
    newest = max(kernels, key=_version_key)
    return None if newest == running else "kernel %s is installed, %s is running" % (newest, running)


def reboot_status():
    packages = []
    try:
        with open(REBOOT_REQUIRED + ".pkgs") as handle:
            packages = sorted({line.strip() for line in handle if line.strip()})
    except OSError:
        pass
    kernel = kernel_reboot_reason()
    status = {"reboot_required": os.path.exists(REBOOT_REQUIRED) or kernel is not None,
              "reboot_required_packages": packages}
    if kernel:
        status["reboot_reason"] = kernel
    return status


class Dnf:
    """RHEL family (untested here: no such host in the test fleet)."""
    name = "dnf"

    def __init__(self, params):
        self.params = params
        self.options = ["-q", "-y", "--setopt=timeout=%d" % params["network_timeout"]]
        self.options += ["--exclude=%s" % p for p in params["exclude"]]

    def check_update(self, extra=()):
        argv = ["dnf"] + self.options + list(extra) + ["check-update"]
        try:
            proc = subprocess.run(argv, env=dict(os.environ, **ENV), capture_output=True, check=False,
                                  timeout=self.params["download_timeout"])
        except subprocess.TimeoutExpired as exc:
            raise OpsError("dnf check-update did not finish in %ss and was stopped; nothing was upgraded"
                           % self.params["download_timeout"], exception=exc)
        if proc.returncode not in (0, 100):  # 100: updates are available
            why = last_line(proc.stderr or proc.stdout)
            raise OpsError("dnf check-update %s: %s; nothing was upgraded" % (exit_text(proc.returncode), why))
        return proc.stdout.decode("utf-8", "replace")

    def snapshot(self):
        text = _run(["rpm", "-qa", "--qf", "%{NAME}\t%{ARCH}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"], "rpm -qa", 120)
        return {"%s.%s" % tuple(line.split("\t")[:2]): tuple(line.split("\t")) for line in text.splitlines()
                if line.count("\t") == 2}

    def upgrade(self, task, scratch):
        if task.check_mode:
            self.options.append("--setopt=cachedir=%s" % scratch)
        elif not self.params["update_cache"]:
            self.options.append("--cacheonly")
        security = {c["name"] for c in parse_dnf_check_update(task.timed("plan", self.check_update, ["--security"]))}
        pending = parse_dnf_check_update(task.timed("plan", self.check_update), security)
        selected, excluded, not_security = task.select(pending)
        extra = {"held": [], "kept_back": [], "would_remove": [], "reboot_required_before": None}
        before = after = None
        if selected and not task.check_mode:
            before = task.timed("snapshot", self.snapshot)
            task.timed("download", _run, ["dnf"] + self.options + ["--downloadonly", "upgrade"]
                       + (["--security"] if self.params["security_only"] else []), "dnf download",
                       self.params["download_timeout"])
            returncode, output, signalled = task.timed("install", _run_to_the_end, ["dnf"] + self.options + [
                "--cacheonly", "upgrade"] + (["--security"] if self.params["security_only"] else []), "dnf upgrade")
            after = task.timed("snapshot", self.snapshot)
            if returncode != 0 or signalled:
                raise OpsError("dnf upgrade %s: %s; check the host and run again"
                               % (exit_text(returncode), last_line(output.encode())), changed=before != after)
        extra.update(self.reboot_status())
        return task.report(pending, selected, excluded, not_security, before, after, extra)

    def reboot_status(self):
        if not shutil.which("needs-restarting", path=ENV["PATH"]):
            return {"reboot_required": None, "reboot_required_packages": [],
                    "reboot_unknown": "needs-restarting is not installed (dnf-utils / yum-utils)"}
        try:
            proc = subprocess.run(["needs-restarting", "-r"], capture_output=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            return {"reboot_required": None, "reboot_required_packages": [],
                    "reboot_unknown": "needs-restarting -r did not answer in 120 s"}
        return {"reboot_required": proc.returncode == 1, "reboot_required_packages": []}
