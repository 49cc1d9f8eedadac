# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: PostgreSQL backups (used by pg_backup and by pg_restore's safety backup). Not a public API."""

from __future__ import annotations

import os
import shutil
import tarfile

from ansible_collections.runbook.ops.plugins.module_utils import _backup
from ansible_collections.runbook.ops.plugins.module_utils import _container
from ansible_collections.runbook.ops.plugins.module_utils import _pg_archive as archive
from ansible_collections.runbook.ops.plugins.module_utils import _postgres as pg
from ansible_collections.runbook.ops.plugins.module_utils import _process as proc
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import store as st
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError
from ansible_collections.runbook.ops.plugins.module_utils._module import merge_specs

KIND = "postgres"
# The directory format is kept as one tar stream so it has one checksum; tar extracts to a directory
# that pg_restore reads in parallel.
EXTENSIONS = {"custom": ".dump", "plain": ".sql", "directory": ".dir.tar"}
GLOBALS_SUFFIX = ".globals.sql"
MAX_JOBS = 64


def argspec_ex():
    return merge_specs(pg.connection_argspec_ex(), _container.container_argspec_ex(), _backup.backup_argspec_ex(), {"argspec": dict(
        db=dict(type="str", required=True, aliases=["login_db"]),
        format=dict(type="str", default="custom", choices=["custom", "directory", "plain"]),
        jobs=dict(type="int", default=2),
        globals=dict(type="bool", default=False),
        maintenance_db=dict(type="str", default="postgres"),
    )})


def validate_jobs(jobs):
    if not 1 <= jobs <= MAX_JOBS:
        raise OpsError("jobs is %d: use 1-%d parallel workers" % (jobs, MAX_JOBS))


class PgBackupJob(_backup.BackupJob):
    kind = KIND
    result_keys = ("db_size", "toc_entries", "globals_file")
    subject_option = "db"

    def __init__(self, module, params, subject=None):
        super().__init__(module, params, subject or params["db"])
        self.extension = EXTENSIONS[params["format"]]
        self.server = {}

    @property
    def env(self):
        return pg.libpq_env(self.params)

    def validate(self):
        pg.validate_connection(self.params)
        pg.validate_db_name(self.subject)
        validate_jobs(self.params["jobs"])
        if _container.wanted(self.params) and self.params["format"] == "directory":
            raise OpsError("format directory with a container: pg_dump would write its files inside the container, where "
                           "a process of the container could swap them; use format custom")

    def facts(self):
        tools = ["pg_dump", "pg_restore"] + (["pg_dumpall"] if self.params["globals"] else [])
        container = pg.reach(self.params, tools)
        self.server = pg.database_facts(self.params, self.subject)
        facts = {"server": pg.where(self.params), "server_version": self.server["server_version"],
                 "format": self.params["format"], "db_size": self.server["size"], "tables": self.server["tables"]}
        if container is not None:
            facts["container"] = _container.describe(container)
        return facts

    def tool(self, name):
        return pg.tool(name, self.server["server_version_num"], self.params)

    def produce(self, sink):
        pg_dump = self.tool("pg_dump")
        what = "pg_dump of %s" % self.subject
        if self.params["format"] == "directory":
            self.dump_directory(pg_dump, sink, what)
        else:
            proc.stream_command(pg.dump_argv(pg_dump, self.params["format"], self.subject, params=self.params), self.env,
                                sink, what)
        return {"tool_versions": {"pg_dump": pg.tool_version(pg_dump, self.env)}}

    def dump_directory(self, pg_dump, sink, what):
        """pg_dump -Fd -j N into a private scratch directory beside the store, then tar it into the sink."""
        with st.scratch(self.store, ".pgdump-") as scratch:
            target = os.path.join(scratch, "dump")
            proc.run_tool(pg.dump_argv(pg_dump, "directory", self.subject, self.params["jobs"], target), self.env,
                          what + " (directory format)")
            names = sorted(os.listdir(target))
            if "toc.dat" not in names:
                raise OpsError("%s wrote no toc.dat; refusing to keep an incomplete backup" % what)
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name in ["toc.dat"] + [n for n in names if n != "toc.dat"]:
                    tar.add(os.path.join(target, name), arcname=name, recursive=False)
                    os.unlink(os.path.join(target, name))  # free the scratch space as the tar grows
            shutil.rmtree(target, ignore_errors=True)

    def extras(self):
        if not self.params["globals"]:
            return []
        return [(GLOBALS_SUFFIX, self.produce_globals)]

    def produce_globals(self, sink):
        pg_dumpall = self.tool("pg_dumpall")
        role_passwords = bool(self.server.get("superuser"))
        proc.stream_command(pg.globals_argv(pg_dumpall, self.params["maintenance_db"], role_passwords, self.params),
                            self.env, sink, "pg_dumpall --globals-only")
        return {"globals_file": os.path.basename(sink.path), "globals_role_passwords": role_passwords}

    def inspect(self, chunks, manifest):
        fmt = manifest["format"]
        if fmt == "custom":
            return {"toc_entries": pg.list_archive(self.tool("pg_restore"), chunks, self.env)}
        if fmt == "directory":
            return {"toc_entries": archive.count_tar_members(chunks)}
        archive.check_sql_end(chunks, manifest["file"])
        return {}
