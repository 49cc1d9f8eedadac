# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: PostgreSQL backups (used by pg_backup and by pg_restore's safety backup). Not a public API."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile

from ansible_collections.runbook.ops.plugins.module_utils import _artifacts as art
from ansible_collections.runbook.ops.plugins.module_utils import _backup
from ansible_collections.runbook.ops.plugins.module_utils import _postgres as pg
from ansible_collections.runbook.ops.plugins.module_utils import _process as proc
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

KIND = "postgres"
# The directory format is kept as one tar stream so it has one checksum; tar extracts to a directory
# that pg_restore reads in parallel.
EXTENSIONS = {"custom": ".dump", "plain": ".sql", "directory": ".dir.tar"}
GLOBALS_SUFFIX = ".globals.sql"


def argument_spec():
    spec = dict(pg.CONNECTION_OPTIONS)
    spec.update(_backup.backup_argument_spec())
    spec.update(
        db=dict(type="str", required=True, aliases=["login_db"]),
        format=dict(type="str", default="custom", choices=["custom", "directory", "plain"]),
        jobs=dict(type="int", default=2),
        globals=dict(type="bool", default=False),
    )
    return spec


class PgBackupJob(_backup.BackupJob):
    kind = KIND
    result_keys = ("db_size", "toc_entries", "globals_file")

    def __init__(self, module, params, subject=None):
        super().__init__(module, params, subject or params["db"])
        self.extension = EXTENSIONS[params["format"]]
        self.env = pg.libpq_env(params, self.subject)
        self.server = {}

    def facts(self):
        self.server = pg.database_facts(self.params, self.subject)
        return {"server": "%s:%s" % (self.params.get("login_unix_socket") or self.params["login_host"], self.params["login_port"]),
                "server_version": self.server["server_version"], "format": self.params["format"],
                "db_size": self.server["size"], "tables": self.server["tables"]}

    def tool(self, name):
        return pg.tool(name, self.server["server_version_num"])

    def produce(self, sink):
        pg_dump = self.tool("pg_dump")
        what = "pg_dump of %s" % self.subject
        if self.params["format"] == "directory":
            self.dump_directory(pg_dump, sink, what)
        else:
            proc.stream_command(pg.dump_argv(pg_dump, self.params["format"], self.subject), self.env, sink, what)
        return {"tool_versions": {"pg_dump": pg.tool_version(pg_dump)}}

    def dump_directory(self, pg_dump, sink, what):
        """pg_dump -Fd -j N into a private scratch directory beside the store, then tar it into the sink."""
        scratch = tempfile.mkdtemp(prefix=".pgdump-", dir=_backup.work_dir(self.store))
        target = os.path.join(scratch, "dump")
        try:
            proc.run_tool(pg.dump_argv(pg_dump, "directory", self.subject, self.params["jobs"], target), self.env,
                          what + " (directory format)")
            names = sorted(os.listdir(target))
            if "toc.dat" not in names:
                raise OpsError("%s wrote no toc.dat; refusing to keep an incomplete backup" % what)
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                for name in ["toc.dat"] + [n for n in names if n != "toc.dat"]:
                    archive.add(os.path.join(target, name), arcname=name, recursive=False)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def extras(self):
        if not self.params["globals"]:
            return []
        return [(GLOBALS_SUFFIX, self.produce_globals)]

    def produce_globals(self, sink):
        pg_dumpall = self.tool("pg_dumpall")
        role_passwords = bool(self.server.get("superuser"))
        proc.stream_command(pg.globals_argv(pg_dumpall, role_passwords), pg.libpq_env(self.params, "postgres"), sink,
                            "pg_dumpall --globals-only")
        return {"globals_file": os.path.basename(sink.writer.path), "globals_role_passwords": role_passwords}

    def inspect(self, path, manifest):
        chunks = art.open_plain_reader(path, manifest["compression"], self.key)
        fmt = manifest["format"]
        if fmt == "custom":
            return {"toc_entries": pg.list_archive(self.tool("pg_restore"), chunks, self.env)}
        if fmt == "directory":
            return {"toc_entries": count_tar_members(chunks)}
        tail = b""
        for data in chunks:
            tail = (tail + data)[-4096:]
        if b"PostgreSQL database dump complete" not in tail:
            raise OpsError("verification failed: the SQL dump in %s does not end with pg_dump's completion line" % path)
        return {}


def count_tar_members(chunks):
    """Read a tar stream to its end; the number of data files besides toc.dat."""
    reader = art.ChunkReader(chunks)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            names = [member.name for member in archive]
    except tarfile.TarError as exc:
        raise OpsError("the directory-format archive is damaged: %s" % exc, exception=exc)
    reader.drain()
    if "toc.dat" not in names:
        raise OpsError("the directory-format archive has no toc.dat: it is not a pg_dump directory")
    return len(names) - 1
