# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: restoring Redis by swapping its files with the service stopped. Not a public API.

Stop the service, keep the old RDB/AOF aside, put the new RDB in place with AOF off for the load, start,
check the key counts, turn AOF back on; any failure puts the old files back and starts the server again.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import time

from ansible_collections.runbook.ops.plugins.module_utils import _redis as rd
from ansible_collections.runbook.ops.plugins.module_utils import _redis_rdb as rdb_reader
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import atomic
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError
from ansible_collections.runbook.ops.plugins.module_utils._retry import poll


class FileSwap:
    """Stop, move the old files aside, put the RDB in place with AOF off, start, check; undo on any failure."""

    def __init__(self, params, data_dir, dbfilename, aof_dir, config_file, aof_on, stamp):
        self.params = params
        self.rdb_path = os.path.join(data_dir, dbfilename)
        self.aof_dir = aof_dir
        self.config_file = config_file
        self.aof_on = aof_on
        self.suffix = ".pre_restore_" + stamp
        self.config_text = None
        self.moved = []
        self.placed = False

    def run(self, rdb, expected, report):
        self.stop_server()
        try:
            self.put_in_place(rdb)
            conn = self.start_server()
            found = rd.keyspace(conn)
            report["target_keys_after"] = {str(k): v for k, v in sorted(found.items())}
            if expected is not None and not rdb_reader.counts_match(rdb, expected, found, int(time.time() * 1000)):
                raise OpsError("after the restart the server holds keys per db %s, the backup's manifest says %s"
                               % (report["target_keys_after"], {str(k): v for k, v in expected.items()}))
            if self.aof_on:
                self.enable_aof(conn)
            report["restored"] = sum(found.values())
        except BaseException as exc:
            self.roll_back()
            if isinstance(exc, OpsError):
                raise OpsError("%s; the old files were put back and the server started again" % exc.message,
                               exception=exc.exception)
            raise
        report["previous_files"] = [new for _old, new in self.moved] if self.params["keep_previous"] else []
        if not self.params["keep_previous"]:
            for _old, new in self.moved:
                _remove(new)

    def stop_server(self):
        self.command("stop", self.params["stop_command"] or ["systemctl", "stop", self.params["service"]])

        def still_listening():
            raise OpsError("the Redis server still listens 60 s after the stop command")

        poll(lambda: not _port_open(self.params["login_host"], self.params["login_port"]), 60, 0.1,
             on_timeout=still_listening)

    def put_in_place(self, rdb):
        for path in (self.rdb_path, self.aof_dir):
            if os.path.exists(path):
                os.rename(path, path + self.suffix)
                self.moved.append((path, path + self.suffix))
        directory = os.path.dirname(self.rdb_path)
        staged = os.path.join(directory, ".%s.restore" % os.path.basename(self.rdb_path))
        old_rdb = dict(self.moved).get(self.rdb_path)
        like = os.stat(old_rdb if old_rdb and os.path.isfile(old_rdb) else directory)
        # the server's user must read it (it owns the data directory)
        _stage(rdb, staged, (like.st_mode & 0o666) if old_rdb else 0o640, like.st_uid, like.st_gid)
        os.rename(staged, self.rdb_path)
        self.placed = True
        atomic.fsync_dir(directory)
        if self.aof_on:
            with open(self.config_file) as handle:
                self.config_text = handle.read()
            lines = [line for line in self.config_text.splitlines() if not line.strip().lower().startswith("appendonly ")]
            _rewrite_keeping_owner(self.config_file, "\n".join(lines + ["appendonly no"]) + "\n")

    def start_server(self):
        self.command("start", self.params["start_command"] or ["systemctl", "start", self.params["service"]])
        return rd.wait_loaded(self.params, self.params["load_timeout"], "the restored RDB")

    def enable_aof(self, conn):
        conn.config_set("appendonly", "yes")

        def rewritten():
            persistence = conn.info("persistence")
            done = persistence.get("aof_enabled") and not persistence.get("aof_rewrite_in_progress") \
                and not persistence.get("aof_rewrite_scheduled")
            return persistence if done else None

        def too_slow():
            raise OpsError("the AOF rewrite after the restore did not finish in %ss" % self.params["load_timeout"])

        persistence = poll(rewritten, self.params["load_timeout"], 0.05, on_timeout=too_slow)
        if persistence.get("aof_last_bgrewrite_status") != "ok":
            raise OpsError("re-enabling AOF failed: aof_last_bgrewrite_status=%s" % persistence.get("aof_last_bgrewrite_status"))
        _rewrite_keeping_owner(self.config_file, self.config_text)  # appendonly yes again, as the operator wrote it

    def roll_back(self):
        try:
            self.command("stop", self.params["stop_command"] or ["systemctl", "stop", self.params["service"]])
        except OpsError:
            pass
        if self.placed and self.rdb_path not in dict(self.moved):
            _remove(self.rdb_path)  # there was no RDB before: the restored one must not stay
        for original, aside in self.moved:
            _remove(original)
            os.rename(aside, original)
        if self.config_text is not None:
            _rewrite_keeping_owner(self.config_file, self.config_text)
        self.command("start", self.params["start_command"] or ["systemctl", "start", self.params["service"]])

    @staticmethod
    def command(what, argv):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OpsError("cannot %s Redis with %s: %s" % (what, argv[0], exc), exception=exc)
        if proc.returncode != 0:
            raise OpsError("%s command %s exited with %d: %s" % (what, " ".join(argv), proc.returncode,
                                                                 (proc.stderr or proc.stdout).strip()[-300:]))


def _stage(rdb, staged, mode, uid, gid):
    """The decoded RDB at ``staged`` with the server's mode and owner. A hard link when the private scratch copy is on
    the same filesystem (no second copy of a large file while the server is down; the scratch file was fsynced); else
    a copy into a new file. Nothing here follows a link the server's user may have put in its data directory, and with
    SELinux on the file is copied so it takes the directory's label."""
    _remove(staged)
    if not os.path.exists("/sys/fs/selinux/enforce"):
        os.chmod(rdb, mode)  # the scratch file: its directory is private to this task
        os.chown(rdb, uid, gid)
        try:
            os.link(rdb, staged)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise OpsError("cannot put the RDB in place as %s: %s" % (staged, exc.strerror), exception=exc)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out, open(rdb, "rb") as source:
        shutil.copyfileobj(source, out, 4 * 1024 * 1024)
        out.flush()
        os.fchmod(fd, mode)
        os.fchown(fd, uid, gid)
        os.fsync(fd)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _rewrite_keeping_owner(path, text):
    """Replace a config file atomically with the same mode, owner and group (the server may not run as root)."""
    before = os.stat(path)
    writer = atomic.AtomicWriter(path)
    writer.write(text.encode())
    writer.commit()
    os.chown(path, before.st_uid, before.st_gid)
    os.chmod(path, before.st_mode & 0o7777)


def _port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
