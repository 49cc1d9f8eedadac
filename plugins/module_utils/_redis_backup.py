# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: Redis backups (used by redis_backup and by redis_restore's safety backup). Not a public API."""

from __future__ import annotations

import os

from ansible_collections.runbook.ops.plugins.module_utils import _backup
from ansible_collections.runbook.ops.plugins.module_utils import _container
from ansible_collections.runbook.ops.plugins.module_utils import _process as proc
from ansible_collections.runbook.ops.plugins.module_utils import _redis as rd
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import codec
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line
from ansible_collections.runbook.ops.plugins.module_utils._module import merge_specs
from ansible_collections.runbook.ops.plugins.module_utils._retry import poll

KIND = "redis"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def argspec_ex():
    return merge_specs(rd.connection_argspec_ex(), _container.container_argspec_ex(), _backup.backup_argspec_ex(), {"argspec": dict(
        name=dict(type="str", default="redis"),
        method=dict(type="str", default="auto", choices=["auto", "replication", "bgsave"]),
        rdb_path=dict(type="path"),
        bgsave_timeout=dict(type="int", default=3600),
        idle_timeout=dict(type="int", default=60),
    )})


class RedisBackupJob(_backup.BackupJob):
    kind = KIND
    extension = ".rdb"
    result_keys = ("keys", "method", "rdb_version")
    subject_option = "name"

    def __init__(self, module, params, subject=None):
        super().__init__(module, params, subject or params["name"])
        self.conn = None
        self.method = None

    def validate(self):
        rd.validate_connection(self.params)
        if _container.wanted(self.params) and (self.params["method"] == "bgsave" or self.params["rdb_path"]):
            raise OpsError("method bgsave and rdb_path read the server's file from this host, which for a container "
                           "would follow links a process in it could make; use method replication (auto picks it)")
        for option in ("bgsave_timeout", "idle_timeout"):
            if self.params[option] < 1:
                raise OpsError("%s is %d: give at least 1 second" % (option, self.params[option]))

    def facts(self):
        container = rd.reach(self.params)
        self.conn = rd.client(self.params)
        found = rd.facts(self.conn)
        self.method = self.choose_method()
        facts = {"server": rd.where(self.params), "format": "rdb", "redis_version": found["redis_version"],
                 "used_memory": found["used_memory"], "keys": found["keys"], "method": self.method}
        if container is not None:
            facts["container"] = _container.describe(container)
        return facts

    def local_rdb(self):
        """Where the server writes its RDB when that is on this host, else None."""
        if _container.of(self.params) is not None:
            return None  # its files are the container's: reading them from here would follow links it made
        if self.params["rdb_path"]:
            return self.params["rdb_path"]
        if self.params["login_host"] not in LOCAL_HOSTS:
            return None
        directory, name = rd.config_get(self.conn, "dir"), rd.config_get(self.conn, "dbfilename")
        if directory and name and os.access(directory, os.R_OK | os.X_OK):
            return os.path.join(directory, name)
        return None

    def choose_method(self):
        method = self.params["method"]
        if method == "auto":
            return "bgsave" if self.local_rdb() else "replication"
        if method == "bgsave" and not self.local_rdb():
            raise OpsError("method bgsave needs the server's RDB file on this host, and CONFIG GET dir/dbfilename did not "
                           "find a readable one: give rdb_path, run the task on the Redis host, or use method: replication")
        return method

    def produce(self, sink):
        if self.method == "bgsave" and not self.bgsave():
            self.method = "replication"  # BGSAVE disabled or renamed on a hardened server
        check = rd.RdbCheck(sink, strip_mark=self.method == "replication")
        if self.method == "bgsave":
            path = self.local_rdb()
            self.check_fresh(path)
            for data in codec.read_chunks(path):
                check.write(data)
            what = "the RDB file %s" % path
        else:
            argv = rd.cli_argv(self.params) + ["--rdb", "-"]
            proc.stream_command(argv, rd.cli_env(self.params), check, "redis-cli --rdb (replication snapshot)",
                                idle_timeout=self.params["idle_timeout"], alive=self.server_answers,
                                max_silence=self.params["bgsave_timeout"])
            what = "the replication snapshot"
        return {"rdb_version": check.version(what), "method": self.method}

    def server_answers(self):
        """While the stream is silent: a server that still answers is preparing its snapshot; one that does not is gone."""
        redis = rd.library()
        try:
            return bool(rd.client(self.params, timeout=min(10, self.params["idle_timeout"])).ping())
        except (OpsError, redis.RedisError):
            return False

    def check_fresh(self, path):
        """The file must be the one BGSAVE just wrote, not a stale copy that happens to sit at the same path."""
        try:
            mtime = os.path.getmtime(path)
        except OSError as exc:
            raise OpsError("BGSAVE finished but %s cannot be read here (%s): run the task on the Redis host, give "
                           "rdb_path, or use method: replication" % (path, exc.strerror), exception=exc)
        lastsave = self.conn.lastsave().timestamp()
        if abs(mtime - lastsave) > 5:
            raise OpsError("%s was not written by the BGSAVE just made (modified %.0f s apart from LASTSAVE): it is not "
                           "this server's file; use method: replication or give rdb_path" % (path, abs(mtime - lastsave)))

    def bgsave(self):
        """BGSAVE and wait for it; False when the command is disabled (auto then falls back to replication)."""
        redis = rd.library()
        before = self.conn.lastsave()
        try:
            self.conn.bgsave()
        except redis.ResponseError as exc:
            text = str(exc)
            if "unknown command" in text.lower() and self.params["method"] == "auto":
                return False
            if "already in progress" not in text:
                raise OpsError("BGSAVE failed: %s%s" % (first_line(exc), "" if self.params["method"] == "auto" else
                                                        "; BGSAVE may be disabled: use method: replication"), exception=exc)

        def finished():
            persistence = self.conn.info("persistence")
            return not persistence.get("rdb_bgsave_in_progress") and self.conn.lastsave() != before and persistence

        def give_up():
            raise OpsError("BGSAVE did not finish in %ss: raise bgsave_timeout" % self.params["bgsave_timeout"])

        persistence = poll(finished, self.params["bgsave_timeout"], 0.1, on_timeout=give_up)
        if persistence.get("rdb_last_bgsave_status") != "ok":
            raise OpsError("BGSAVE failed on the server (rdb_last_bgsave_status=%s): check the Redis log, disk "
                           "space and vm.overcommit_memory" % persistence.get("rdb_last_bgsave_status"))
        return True

    def inspect(self, chunks, manifest):
        check = rd.RdbCheck(_Discard())
        for data in chunks:
            check.write(data)
        return {"rdb_version": check.version(manifest["file"])}


class _Discard:
    def write(self, data):
        pass
