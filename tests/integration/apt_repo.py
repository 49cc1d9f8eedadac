"""A local apt repository for the patching tests: packages built with dpkg-deb, served over HTTP to the fleet.

Two suites as a distribution has them: ``fleet`` (ordinary updates) and ``fleet-security`` (its origin's label and
archive say security, as Debian-Security's do). Packages are ``Architecture: all`` shell-only packages whose
maintainer scripts do what a real upgrade may do (ask for a reboot, break a service).
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import http.server
import subprocess
import threading
from pathlib import Path

SUITES = {"fleet": "Runbook", "fleet-security": "Runbook-Security"}


class AptRepo:
    def __init__(self, root):
        self.root = Path(root)
        self.pool = self.root / "pool"
        self.pool.mkdir(parents=True, exist_ok=True)
        self.packages = {suite: [] for suite in SUITES}
        self.server = None

    def add(self, suite, name, version, postinst=""):
        """Build ``name`` at ``version`` into ``suite``; ``postinst`` runs on configure."""
        work = self.root / "build" / ("%s_%s" % (name, version))
        (work / "DEBIAN").mkdir(parents=True, exist_ok=True)
        (work / "usr" / "share" / "doc" / name).mkdir(parents=True, exist_ok=True)
        (work / "usr" / "share" / "doc" / name / "VERSION").write_text(version + "\n")
        (work / "DEBIAN" / "control").write_text(
            "Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: runbook.ops tests <tests@runbook.invalid>\n"
            "Description: runbook.ops patching test package\n" % (name, version))
        if postinst:
            script = work / "DEBIAN" / "postinst"
            script.write_text('#!/bin/sh\nset -e\nif [ "$1" = configure ]; then\n%s\nfi\n' % postinst)
            script.chmod(0o755)
        deb = self.pool / ("%s_%s_all.deb" % (name, version))
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(work), str(deb)], check=True,
                       capture_output=True)
        self.packages[suite].append(deb)
        self.index()
        return deb

    def index(self):
        for suite, label in SUITES.items():
            binary = self.root / "dists" / suite / "main" / "binary-amd64"
            binary.mkdir(parents=True, exist_ok=True)
            entries = []
            for deb in self.packages[suite]:
                control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True,
                                         text=True).stdout.strip()
                data = deb.read_bytes()
                entries.append("%s\nFilename: pool/%s\nSize: %d\nSHA256: %s\n"
                               % (control, deb.name, len(data), hashlib.sha256(data).hexdigest()))
            packages = "\n".join(entries).encode()
            (binary / "Packages").write_bytes(packages)
            release = ("Origin: Runbook\nLabel: %s\nSuite: %s\nCodename: %s\nDate: %s\nArchitectures: amd64\n"
                       "Components: main\nSHA256:\n %s %d main/binary-amd64/Packages\n"
                       % (label, suite, suite, email.utils.formatdate(usegmt=True),
                          hashlib.sha256(packages).hexdigest(), len(packages)))
            (self.root / "dists" / suite / "Release").write_text(release)

    def serve(self, address):
        handler = functools.partial(_Quiet, directory=str(self.root))
        self.server = http.server.ThreadingHTTPServer((address, 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return "http://%s:%d" % (address, self.server.server_address[1])

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
