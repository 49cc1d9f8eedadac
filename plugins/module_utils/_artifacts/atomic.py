# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: files that appear whole or not at all, and scratch space that is cleaned up. Not a public API.

A file is written to ``.<name>.partial`` in its directory, then fsynced and renamed, so a crash never leaves
something that looks finished. Scratch directories carry an owner marker (host, pid, process start time), so
the next run can prove a leftover's owner is dead before it removes it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, warn
from ansible_collections.runbook.ops.plugins.module_utils._artifacts.codec import CHUNK

PARTIAL = ".partial"
FLUSH_EVERY = 16 * 1024 * 1024
OWNER_FILE = ".runbook-owner"


class AtomicWriter:
    """Write to ``.<name>.partial`` in the same directory, then fsync and rename; 0600 throughout.

    ``durable=False`` skips the fsyncs, for scratch files that are thrown away after the task. A durable writer
    has the kernel write out what it was given every FLUSH_EVERY bytes, beside the writing, so the final fsync of a
    large file waits for its last few megabytes only.
    """

    def __init__(self, path, durable=True):
        self.path = path
        self.durable = durable
        directory, name = os.path.split(path)
        self.tmp = os.path.join(directory, ".%s%s" % (name, PARTIAL))
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise write_error(path, exc)
        self.handle = os.fdopen(fd, "wb", buffering=0)
        self.unflushed = 0
        self.flusher = None

    def write(self, data):
        try:
            view = memoryview(data)
            while view:
                written = self.handle.write(view)
                view = view[written:]
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc)
        if self.durable:
            self.unflushed += len(data)
            if self.unflushed >= FLUSH_EVERY and (self.flusher is None or self.flusher.done()):
                self._raise_flush_error()
                self.unflushed = 0
                self.flusher = _Flusher(self.handle.fileno())

    def _raise_flush_error(self):
        """A write-out error is reported once per open file: the flusher's is this writer's to raise."""
        error = self.flusher.error if self.flusher is not None else None
        if error is not None:
            self.abort()
            raise write_error(self.path, error)

    def commit(self):
        if self.flusher is not None:
            self.flusher.join()
            self._raise_flush_error()
        try:
            if self.durable:
                os.fsync(self.handle.fileno())
            self.handle.close()
            os.rename(self.tmp, self.path)
            if self.durable:
                fsync_dir(os.path.dirname(self.path))
        except OSError as exc:
            self.abort()
            raise write_error(self.path, exc)

    def abort(self):
        self.flusher = None  # it syncs its own descriptor and closes it: nothing to wait for
        try:
            self.handle.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class _Flusher:
    """fdatasync on a duplicate of the writer's descriptor, in a thread; keeps the error for the writer."""

    def __init__(self, fd):
        self.fd = os.dup(fd)
        self.error = None
        self.thread = threading.Thread(target=self._run, name="write-out", daemon=True)
        self.thread.start()

    def _run(self):
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            self.error = exc
        finally:
            os.close(self.fd)

    def done(self):
        return not self.thread.is_alive()

    def join(self):
        self.thread.join()


def write_error(path, exc):
    if exc.errno == errno.ENOSPC:
        return OpsError("no space left on the device of %s; the partial file was removed and earlier backups "
                        "are untouched: free space or point store.dir elsewhere" % path, exception=exc)
    return OpsError("cannot write %s: %s" % (path, exc.strerror or exc), exception=exc)


def fsync_dir(path):
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_small_file(path, text, durable=True):
    writer = AtomicWriter(path, durable)
    writer.write(text.encode("utf-8"))
    writer.commit()


def file_digests(path, md5=False):
    sha = hashlib.sha256()
    other = hashlib.md5() if md5 else None
    with open(path, "rb") as handle:
        for data in iter(lambda: handle.read(CHUNK), b""):
            sha.update(data)
            if other:
                other.update(data)
    return sha.hexdigest(), (other.hexdigest() if other else None)


def make_dirs(path, what="store.dir"):
    """mkdir -p with mode 0700; OpsError naming the option when a part of the path is a file."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError as exc:
        raise OpsError("%s %s is not a directory (a file is in the way): give a directory" % (what, path), exception=exc)
    except NotADirectoryError as exc:
        raise OpsError("%s %s has a file where a directory should be: give a directory" % (what, path), exception=exc)
    except OSError as exc:
        raise OpsError("cannot create %s %s: %s" % (what, path, exc.strerror), exception=exc)


def sweep_partials(directory, name_pattern):
    """Remove ``.<name>.partial`` files in ``directory`` (recursively) whose name matches ``name_pattern``.

    Only call this while holding the lock of the writer that makes those names: then no live writer owns them.
    """
    removed = []
    pattern = re.compile(r"^\.(%s)%s$" % (name_pattern, re.escape(PARTIAL)))
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            if pattern.match(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed.append(os.path.join(dirpath, name))
                except OSError:
                    pass
    return removed


# --- scratch directories with an owner ------------------------------------------------------------

def _start_time(pid):
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_marker():
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def owner_is_dead(marker):
    """True only when the owner is provably gone: same host, and its pid is free or now another process."""
    if not isinstance(marker, dict) or marker.get("host") != socket.gethostname():
        return False
    try:
        pid = int(marker["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    started = _start_time(pid)
    return started is None or started != marker.get("start")


def scratch_dir(base, prefix):
    """A private directory under ``base`` with an owner marker (so a later run can remove it if this one dies)."""
    make_dirs(base, "scratch directory (store.work_dir)")
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    with open(os.open(os.path.join(path, OWNER_FILE), os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        json.dump(owner_marker(), handle)
    return path


def sweep_scratch(base, prefixes):
    """Remove scratch directories under ``base`` named with one of ``prefixes`` whose owner is provably dead."""
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(base, name)
        if not name.startswith(tuple(prefixes)) or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            with open(os.path.join(path, OWNER_FILE)) as handle:
                marker = json.load(handle)
        except (OSError, ValueError):
            continue  # no marker: not provably ours
        if owner_is_dead(marker):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        warn("removed %d scratch director%s left by an earlier run that was killed: %s"
             % (len(removed), "y" if len(removed) == 1 else "ies", ", ".join(removed)))
    return removed
