# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: one writer per (kind, database) in a store. Not a public API."""

from __future__ import annotations

import fcntl
import hashlib
import os

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError
from ansible_collections.runbook.ops.plugins.module_utils._retry import poll
from ansible_collections.runbook.ops.plugins.module_utils._artifacts.atomic import make_dirs
from ansible_collections.runbook.ops.plugins.module_utils._artifacts.manifest import format_time, utc_now


class StoreLock:
    """An flock per (kind, database) so two backups of one database never write at once."""

    def __init__(self, store_dir, kind, subject, timeout=0, what="backup"):
        lock_dir = os.path.join(store_dir, ".locks")
        make_dirs(lock_dir)
        # the name is hashed: a subject may hold characters (quotes, '=', multibyte) and bytes a file name should not
        digest = hashlib.sha256(subject.encode("utf-8")).hexdigest()[:24]
        self.path = os.path.join(lock_dir, "%s-%s.lock" % (kind, digest))
        self.subject = subject
        self.what = what
        self.timeout = timeout
        self.fd = None

    def _try(self):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _give_up(self):
        holder = _read_text(self.path)
        os.close(self.fd)
        raise OpsError("another %s of this database is running (%r: lock %s held by %s); waited %ss. Let it finish, "
                       "or raise lock_timeout" % (self.what, self.subject, self.path, holder or "another process",
                                                  self.timeout))

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        poll(self._try, self.timeout, 0.2, on_timeout=self._give_up)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, ("pid %d since %s" % (os.getpid(), format_time(utc_now()))).encode())
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _read_text(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""
