"""Watches every process's argv (/proc/*/cmdline, world-readable) while a test runs, for secrets."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class ArgvScanner:
    """``with ArgvScanner(secrets, interesting) as scan:`` — afterwards ``scan.leaks`` lists argvs holding a secret
    and ``scan.seen`` the argvs that contained one of the ``interesting`` byte strings (proof the scan saw the tools)."""

    def __init__(self, secrets, interesting):
        self.secrets = [s.encode() for s in secrets]
        self.interesting = interesting
        self.seen = []
        self.leaks = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.scan, daemon=True)

    def scan(self):
        while not self.done.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmdline = Path("/proc/%s/cmdline" % pid).read_bytes()
                except OSError:
                    continue
                if any(word in cmdline for word in self.interesting):
                    self.seen.append(cmdline)
                if any(secret in cmdline for secret in self.secrets):
                    self.leaks.append(cmdline)
            time.sleep(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
