"""Finding and signalling the processes a running playbook started (module processes, client tools)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def argvs():
    """(pid, argv as a list of bytes) of every process."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                yield int(pid), Path("/proc/%s/cmdline" % pid).read_bytes().split(b"\0")
            except OSError:
                continue


def wait_for_process(predicate, timeout=60):
    """The pid of the first process whose argv satisfies ``predicate``; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, argv in argvs():
            if predicate(argv):
                return pid
        time.sleep(0.01)
    raise AssertionError("no such process appeared in %ss" % timeout)


def module_process(name, ansible):
    """The pid of the running AnsiballZ process of module ``name`` started by this test's ``ansible`` runner."""
    marker = ("AnsiballZ_%s.py" % name).encode()
    home = str(ansible.workdir).encode()
    # not the /bin/sh -c wrapper Ansible starts it with: the Python process itself
    return wait_for_process(lambda argv: os.path.basename(argv[0]).startswith(b"python")
                            and any(arg.endswith(marker) and arg.startswith(home) for arg in argv))


def signal_process(pid, sig=signal.SIGTERM):
    os.kill(pid, sig)


def parent_of(pid):
    """The parent pid of ``pid`` (/proc/<pid>/stat field 4): the module process that started a client tool."""
    return int(Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[1])
