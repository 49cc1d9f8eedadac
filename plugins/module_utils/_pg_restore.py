# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: PostgreSQL restores that never lose the current data. Not a public API.

Order of work: resolve the source; refuse a non-empty target without force; read the whole source
once (checksum, decryption, decompression, pg_restore --list), materializing it when pg_restore
runs in parallel; take a safety backup; restore into a scratch database beside the target; check
it; then swap by rename in one transaction. Anything failing before the swap drops the scratch
database and leaves the target as it was.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time

from ansible_collections.runbook.ops.plugins.module_utils import _artifacts as art
from ansible_collections.runbook.ops.plugins.module_utils import _backup
from ansible_collections.runbook.ops.plugins.module_utils import _pg_backup
from ansible_collections.runbook.ops.plugins.module_utils import _postgres as pg
from ansible_collections.runbook.ops.plugins.module_utils import _process as proc
from ansible_collections.runbook.ops.plugins.module_utils import _sources
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line

KIND = _pg_backup.KIND
MAX_NAME = 63
USER_TABLES = ("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
               "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2")


def argument_spec():
    spec = dict(pg.CONNECTION_OPTIONS)
    spec.update(art.artifact_argument_spec(for_restore=True))
    spec.update(
        db=dict(type="str", required=True, aliases=["login_db"]),
        src=dict(type="str", required=True),
        backup_db=dict(type="str"),
        mode=dict(type="str", default="swap", choices=["swap", "in_place"]),
        validate_only=dict(type="bool", default=False),
        validate_level=dict(type="str", default="list", choices=["checksum", "list", "restore"]),
        safety_backup=dict(type="bool", default=True),
        force=dict(type="bool", default=False),
        keep_previous=dict(type="bool", default=True),
        jobs=dict(type="int", default=2),
        owner=dict(type="str"),
        session_role=dict(type="str"),
        verify_queries=dict(type="list", elements="dict", default=[], options=dict(
            query=dict(type="str", required=True),
            expected=dict(type="raw"),
        )),
        min_tables=dict(type="int", default=1),
        compare_with=dict(type="str"),
        analyze=dict(type="bool", default=True),
        maintenance_db=dict(type="str", default="postgres"),
        openssl_iterations=dict(type="int", default=10000),
        terminate_timeout=dict(type="int", default=30),
    )
    return spec


def quote_ident(name):
    return '"%s"' % name.replace('"', '""')


def derived_name(db, infix, stamp):
    suffix = "_%s_%s" % (infix, stamp)
    return db[:MAX_NAME - len(suffix)] + suffix


class PgRestore:
    def __init__(self, module, params):
        self.module = module
        self.params = params
        self.db = params["db"]
        self.store = params["store"] or {}
        self.secrets = _sources.Secrets(params["encryption"], params["openssl_iterations"])
        _backup.hide_passphrase(module, params)
        self.stamp = art.utc_now().strftime("%Y%m%d_%H%M%S")
        self.scratch_root = None
        self.version_num = None
        self.report = {}

    # --- entry point ------------------------------------------------------------------------------

    def run(self):
        clock = time.monotonic()
        self.scratch_root = tempfile.mkdtemp(prefix=".restore-", dir=_backup.work_dir(self.store))
        try:
            source = _sources.resolve(self.params["src"], self.store, KIND, self.params["backup_db"] or self.db,
                                      self.scratch_root)
            self.report.update(src=source.location, id=source.id, path=source.path,
                               manifest=(source.manifest or {}).get("manifest_path"), checksum=source.checksum_origin)
            maintenance = pg.connect(self.params, self.params["maintenance_db"])
            try:
                self.version_num = maintenance.server_version
                if self.params["validate_only"]:
                    result = self.validate(source, maintenance)
                else:
                    result = self.restore(source, maintenance)
            finally:
                maintenance.close()
        finally:
            shutil.rmtree(self.scratch_root, ignore_errors=True)
        result["restore"]["duration"] = round(time.monotonic() - clock, 3)
        return result

    # --- validation ---------------------------------------------------------------------------------

    def validate(self, source, maintenance):
        level = self.params["validate_level"]
        if level == "checksum" and source.expected:
            self.report["sha256"] = source.check_checksum()
            self.report.update(level="checksum", valid=True)
            return dict(changed=False, restore=self.report)
        prepared = self.read_source(source, materialize=level == "restore" and not self.module.check_mode)
        self.report.update(level=level, valid=True)
        if level == "restore" and not self.module.check_mode:
            scratch = derived_name(self.db, "verify", self.stamp)
            self.create_database(maintenance, scratch, self.target_facts(maintenance))
            try:
                self.load(prepared, scratch, clean=False)
                self.check(scratch)
            finally:
                self.drop_database(maintenance, scratch)
            self.report["test_database"] = scratch
        return dict(changed=False, restore=self.report)

    def read_source(self, source, materialize):
        """One pass over the whole source: checksum, layers, format checks; a file or directory to restore from."""
        clock = time.monotonic()
        prepared = {"source": source, "file": None, "directory": None}
        if source.is_directory:
            prepared.update(format="directory", directory=source.path)
            self.report["toc_entries"] = pg.count_toc(proc.run_tool([self.tool("pg_restore"), "--list", source.path],
                                                                    self.env(), "pg_restore --list rejects %s:" % source.location))
        else:
            chunks = source.plaintext(self.secrets)
            head_stream = _sources.Peekable(chunks)
            kind = _sources.content_kind(head_stream.peek(_sources.PEEK))
            if kind in ("custom", "tar"):
                prepared["format"] = "custom" if kind == "custom" else "directory"
            elif kind == "text":
                prepared["format"] = "plain"
            else:
                self.fail_unreadable(source, head_stream)
            if prepared["format"] == "custom":
                self.read_custom(source, head_stream, prepared, materialize)
            elif kind == "tar":
                self.read_tar(head_stream, prepared, materialize)
            else:
                self.read_plain(head_stream)
            self.report.update(layers=list(source.layers), sha256=source.sha256, plain_size=source.plain_bytes)
        self.report.update(format=prepared["format"], read_duration=round(time.monotonic() - clock, 3))
        return prepared

    def fail_unreadable(self, source, stream):
        for _data in stream:  # a checksum mismatch explains more than "not a backup"
            pass
        raise OpsError("%s is not a PostgreSQL backup runbook.ops can read (after %s it is neither a pg_dump archive, "
                       "a tar of a directory-format dump, nor SQL text); refusing to restore it"
                       % (source.location, ", ".join(source.layers) or "no decoding"))

    def read_custom(self, source, stream, prepared, materialize):
        pg_restore = self.tool("pg_restore")
        if not source.layers:
            # A bare archive file is restorable as it is: one read checks its checksum and table of contents.
            self.report["toc_entries"] = pg.list_archive(pg_restore, stream, self.env())
            prepared["file"] = source.path
        elif materialize:
            self.check_space(source)
            prepared["file"] = os.path.join(self.scratch_root, "archive.dump")
            writer = art.AtomicWriter(prepared["file"], durable=False)
            try:
                for data in stream:
                    writer.write(data)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
            self.report["toc_entries"] = pg.count_toc(proc.run_tool([pg_restore, "--list", prepared["file"]], self.env(),
                                                                    "pg_restore --list rejects the archive:"))
        else:
            self.report["toc_entries"] = pg.list_archive(pg_restore, stream, self.env())

    def read_tar(self, stream, prepared, materialize):
        reader = art.ChunkReader(stream)
        target = os.path.join(self.scratch_root, "directory")
        os.mkdir(target, 0o700)
        names = []
        try:
            with tarfile.open(fileobj=reader, mode="r|") as archive:
                for member in archive:
                    if not member.isfile() or "/" in member.name or member.name.startswith("."):
                        raise OpsError("unexpected entry %r in the tar archive: a pg_dump tar or directory archive "
                                       "holds plain files only" % member.name)
                    names.append(member.name)
                    handle = archive.extractfile(member)
                    if materialize:
                        with open(os.path.join(target, member.name), "wb") as out:
                            shutil.copyfileobj(handle, out, art.CHUNK)
                    else:
                        while handle.read(art.CHUNK):
                            pass
        except tarfile.TarError as exc:
            raise OpsError("the tar archive is damaged: %s" % exc, exception=exc)
        reader.drain()
        if "toc.dat" not in names:
            raise OpsError("the tar archive has no toc.dat: it is not a pg_dump tar or directory-format dump")
        if materialize:
            prepared["directory"] = target
            self.report["toc_entries"] = pg.count_toc(proc.run_tool([self.tool("pg_restore"), "--list", target],
                                                                    self.env(), "pg_restore --list rejects the archive:"))
        else:
            self.report["toc_entries"] = len(names) - 1

    def read_plain(self, stream):
        tail = b""
        for data in stream:
            window = tail + data
            for marker in (b"\n\\connect ", b"\nCREATE DATABASE "):
                if marker in window:
                    raise OpsError("the SQL dump creates or connects to databases itself (made with pg_dump --create "
                                   "or pg_dumpall); restore it with psql by hand or dump without --create")
            tail = window[-4096:]
        if b"dump complete" not in tail:
            raise OpsError("the SQL dump does not end with pg_dump's completion line: it is truncated; refusing to restore it")

    def check_space(self, source):
        needed = (source.manifest or {}).get("raw_size")
        if not needed:
            return
        stat = os.statvfs(self.scratch_root)
        free = stat.f_bavail * stat.f_frsize
        if free < needed * 1.05:
            raise OpsError("restoring in parallel needs %d MB of scratch space in %s for the decoded archive, %d MB are "
                           "free: free space, point store.work_dir elsewhere, or use jobs: 1 (streams, needs no space)"
                           % (needed // 10 ** 6, self.scratch_root, free // 10 ** 6))

    # --- restore ------------------------------------------------------------------------------------

    def restore(self, source, maintenance):
        params = self.params
        target = self.target_facts(maintenance)
        self.report.update(database=self.db, mode=params["mode"], target_existed=target["exists"])
        if target["exists"] and target["tables"] and not params["force"]:
            raise OpsError("database %r exists and has %d tables: set force: true to replace it (mode swap keeps the "
                           "old one as %s unless keep_previous: false)" % (
                               self.db, target["tables"], derived_name(self.db, "pre_restore", self.stamp)))
        in_place = params["mode"] == "in_place"
        prepared = self.read_source(source, materialize=not self.module.check_mode and not in_place and params["jobs"] > 1)
        before = "database %s: %s\n" % (self.db, "%d tables, %d bytes" % (target["tables"], target["size"])
                                        if target["exists"] else "absent")
        after = "database %s: restored from %s (sha256 %s)\n" % (self.db, source.id, self.report.get("sha256") or "n/a")
        if self.module.check_mode:
            self.report.update(previous=None if in_place or not target["exists"] or not params["keep_previous"]
                               else derived_name(self.db, "pre_restore", self.stamp),
                               safety_backup="would be taken" if self.needs_safety_backup(target) else None)
            return dict(changed=True, restore=self.report, diff={"before": before, "after": after})
        self.report["safety_backup"] = self.safety_backup() if self.needs_safety_backup(target) else None
        clock = time.monotonic()
        lock_dir = _backup.work_dir(self.store) if self.store else self.scratch_root
        with art.StoreLock(lock_dir, "postgres-restore", self.db, 0):
            if in_place:
                self.restore_in_place(maintenance, prepared, target)
            else:
                self.restore_swap(maintenance, prepared, target)
        self.report["load_duration"] = round(time.monotonic() - clock, 3)
        if self.report.get("plain_size") and self.report["load_duration"]:
            self.report["throughput_mb_s"] = round(self.report["plain_size"] / 1e6 / self.report["load_duration"], 1)
        if params["compare_with"]:
            self.report["comparison"] = self.compare(self.db, params["compare_with"])
        return dict(changed=True, restore=self.report, diff={"before": before, "after": after})

    def needs_safety_backup(self, target):
        return self.params["safety_backup"] and target["exists"] and target["tables"] > 0

    def safety_backup(self):
        return _backup.safety_backup(_pg_backup.PgBackupJob, self.module, self.params, self.db, self.report.get("id"),
                                     format="custom", globals=False)

    def restore_swap(self, maintenance, prepared, target):
        scratch = derived_name(self.db, "restore", self.stamp)
        self.report["scratch"] = scratch
        self.create_database(maintenance, scratch, target)
        try:
            self.load(prepared, scratch, clean=False)
            self.check(scratch)
        except BaseException as exc:
            self.drop_database(maintenance, scratch)
            if isinstance(exc, OpsError):
                raise OpsError("%s; the target database %r is untouched and the scratch database %s was dropped"
                               % (exc.message, self.db, scratch), exception=exc.exception)
            raise
        self.swap(maintenance, scratch, target)

    def restore_in_place(self, maintenance, prepared, target):
        if not target["exists"]:
            self.create_database(maintenance, self.db, target)
        try:
            self.load(prepared, self.db, clean=True)
        except OpsError as exc:
            if not target["exists"]:
                self.drop_database(maintenance, self.db)
            raise OpsError("%s; the restore ran in one transaction, which was rolled back: database %r is as it was"
                           % (exc.message, self.db), exception=exc.exception)
        self.check(self.db)
        self.report["previous"] = None

    def load(self, prepared, database, clean):
        """pg_restore (parallel from a file or directory, else streamed) or psql, stopping at the first error."""
        env = self.env(database)
        role = self.params["owner"] or self.params["session_role"]
        if prepared["format"] == "plain":
            stream = prepared["source"].plaintext(self.secrets)
            if role:
                stream = _prepend(b"SET ROLE %s;\n" % quote_ident(role).encode(), stream)
            argv = [self.tool("psql"), "--no-password", "--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1",
                    "--single-transaction", "--dbname", database, "--file", "-"]
            proc.feed_command(argv, env, stream, "psql restoring into %s" % database)
            self.report["jobs"] = 1
            return
        argv = [self.tool("pg_restore"), "--no-password", "--exit-on-error", "--dbname", database]
        if self.params["owner"]:
            argv += ["--no-owner", "--role", self.params["owner"]]
        elif self.params["session_role"]:
            argv += ["--role", self.params["session_role"]]
        if clean:
            argv += ["--clean", "--if-exists", "--single-transaction"]
        location = prepared["directory"] or prepared["file"]
        jobs = self.params["jobs"] if location and not clean else 1
        if jobs > 1:
            argv += ["--jobs", str(jobs)]
        self.report["jobs"] = jobs
        what = "pg_restore into %s" % database
        if location:
            proc.run_tool(argv + [location], env, what)
        else:
            proc.feed_command(argv, env, prepared["source"].plaintext(self.secrets), what)

    def check(self, database):
        conn = pg.connect(self.params, database)
        try:
            with conn.cursor() as cur:
                cur.execute(USER_TABLES)
                tables = len(cur.fetchall())
                if tables < self.params["min_tables"]:
                    raise OpsError("the restored database has %d tables, fewer than min_tables (%d): the backup is "
                                   "empty or was not restored" % (tables, self.params["min_tables"]))
                self.report["verify_queries"] = [self.run_check(cur, item) for item in self.params["verify_queries"]]
                if self.params["analyze"]:
                    cur.execute("ANALYZE")
                cur.execute("SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint, pg_database_size(current_database()) "
                            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
                            "AND n.nspname NOT IN ('pg_catalog', 'information_schema')")
                rows, size = cur.fetchone()
        finally:
            conn.close()
        self.report.update(tables=tables, rows_estimate=rows, size=size)

    @staticmethod
    def run_check(cur, item):
        import psycopg2

        try:
            cur.execute(item["query"])
            row = cur.fetchone() if cur.description else None
        except psycopg2.Error as exc:
            raise OpsError("verify query %r failed on the restored data: %s" % (item["query"], first_line(exc)), exception=exc)
        if row is None:
            raise OpsError("verify query %r returned no row on the restored data" % item["query"])
        value = row[0]
        if item.get("expected") is not None and str(value) != str(item["expected"]):
            raise OpsError("verify query %r returned %r, expected %r" % (item["query"], value, item["expected"]))
        return {"query": item["query"], "result": str(value)}

    # --- databases ----------------------------------------------------------------------------------

    def target_facts(self, maintenance):
        with maintenance.cursor() as cur:
            cur.execute("SELECT pg_encoding_to_char(encoding), datcollate, datctype, pg_get_userbyid(datdba), "
                        "pg_database_size(oid) FROM pg_database WHERE datname = %s", (self.db,))
            row = cur.fetchone()
        if not row:
            return {"exists": False, "tables": 0, "size": 0, "owner": None}
        facts = {"exists": True, "encoding": row[0], "collate": row[1], "ctype": row[2], "owner": row[3], "size": row[4]}
        conn = pg.connect(self.params, self.db)
        try:
            with conn.cursor() as cur:
                cur.execute(USER_TABLES)
                facts["tables"] = len(cur.fetchall())
        finally:
            conn.close()
        return facts

    def create_database(self, maintenance, name, target):
        sql = "CREATE DATABASE %s TEMPLATE template0" % quote_ident(name)
        owner = self.params["owner"] or target.get("owner")
        if owner:
            sql += " OWNER %s" % quote_ident(owner)
        if target.get("encoding"):
            sql += " ENCODING '%s' LC_COLLATE '%s' LC_CTYPE '%s'" % tuple(
                value.replace("'", "''") for value in (target["encoding"], target["collate"], target["ctype"]))
        self.execute(maintenance, sql, "cannot create database %s" % name)

    def drop_database(self, maintenance, name):
        self.execute(maintenance, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % quote_ident(name),
                     "cannot drop database %s" % name)

    @staticmethod
    def execute(conn, sql, what, args=None):
        import psycopg2

        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else None
        except psycopg2.Error as exc:
            raise OpsError("%s: %s" % (what, first_line(exc)), exception=exc)

    def swap(self, maintenance, scratch, target):
        """Rename target -> previous and scratch -> target in one transaction, after closing the target's sessions."""
        import psycopg2

        previous = derived_name(self.db, "pre_restore", self.stamp)
        if not target["exists"]:
            self.execute(maintenance, "ALTER DATABASE %s RENAME TO %s" % (quote_ident(scratch), quote_ident(self.db)),
                         "cannot rename %s to %s" % (scratch, self.db))
            self.report["previous"] = None
            return
        self.copy_database_properties(maintenance, self.db, scratch)
        self.execute(maintenance, "ALTER DATABASE %s ALLOW_CONNECTIONS false" % quote_ident(self.db),
                     "cannot stop new connections to %s" % self.db)
        deadline = time.monotonic() + self.params["terminate_timeout"]
        terminated = 0
        try:
            while True:
                rows = self.execute(maintenance, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                    "WHERE datname = %s AND pid <> pg_backend_pid()", "cannot terminate sessions",
                                    (self.db,))
                terminated += rows[0][0]
                try:
                    maintenance.autocommit = False
                    with maintenance.cursor() as cur:
                        cur.execute("ALTER DATABASE %s RENAME TO %s" % (quote_ident(self.db), quote_ident(previous)))
                        cur.execute("ALTER DATABASE %s RENAME TO %s" % (quote_ident(scratch), quote_ident(self.db)))
                    maintenance.commit()
                    break
                except psycopg2.errors.ObjectInUse as exc:
                    maintenance.rollback()
                    if time.monotonic() > deadline:
                        raise OpsError("sessions kept reconnecting to %s for %ss: %s" % (
                            self.db, self.params["terminate_timeout"], first_line(exc)), exception=exc)
                    time.sleep(0.2)
                finally:
                    maintenance.autocommit = True
        except BaseException as exc:
            self.execute(maintenance, "ALTER DATABASE %s ALLOW_CONNECTIONS true" % quote_ident(self.db),
                         "cannot allow connections to %s again" % self.db)
            self.drop_database(maintenance, scratch)
            if isinstance(exc, OpsError):
                raise OpsError("%s; the swap was not made: %r is untouched and accepts connections again, the scratch "
                               "database was dropped" % (exc.message, self.db), exception=exc.exception)
            raise
        self.execute(maintenance, "ALTER DATABASE %s ALLOW_CONNECTIONS true" % quote_ident(previous),
                     "cannot allow connections to %s" % previous)
        self.report["sessions_terminated"] = terminated
        if self.params["keep_previous"]:
            self.report["previous"] = previous
        else:
            self.drop_database(maintenance, previous)
            self.report.update(previous=None, previous_dropped=previous)

    def copy_database_properties(self, maintenance, source, target):
        """Database-level settings and grants, which pg_dump without --create does not carry."""
        settings = self.execute(maintenance, "SELECT unnest(setconfig) FROM pg_db_role_setting s JOIN pg_database d "
                                "ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
                                "cannot read settings of %s" % source, (source,))
        for (setting,) in settings:
            name, _sep, value = setting.partition("=")
            self.execute(maintenance, "ALTER DATABASE %s SET %s TO %%s" % (quote_ident(target), quote_ident(name)),
                         "cannot copy setting %s" % name, (value,))
        grants = self.execute(maintenance, "SELECT a.grantee, a.privilege_type FROM pg_database d, "
                              "aclexplode(d.datacl) a WHERE d.datname = %s AND d.datacl IS NOT NULL",
                              "cannot read grants of %s" % source, (source,))
        has_acl = self.execute(maintenance, "SELECT datacl IS NOT NULL FROM pg_database WHERE datname = %s",
                               "cannot read grants of %s" % source, (source,))[0][0]
        if has_acl:
            self.execute(maintenance, "REVOKE ALL ON DATABASE %s FROM PUBLIC" % quote_ident(target), "cannot copy grants")
        for grantee, privilege in grants:
            who = "PUBLIC" if grantee == 0 else quote_ident(self.execute(
                maintenance, "SELECT rolname FROM pg_roles WHERE oid = %s", "cannot read role", (grantee,))[0][0])
            self.execute(maintenance, "GRANT %s ON DATABASE %s TO %s" % (privilege, quote_ident(target), who),
                         "cannot copy grant %s to %s" % (privilege, who))
        self.report["copied_properties"] = {"settings": len(settings), "grants": len(grants)}

    def compare(self, left, right):
        """Exact row counts of every table in both databases."""
        counts = {}
        for name in (left, right):
            conn = pg.connect(self.params, name)
            try:
                with conn.cursor() as cur:
                    cur.execute(USER_TABLES)
                    tables = cur.fetchall()
                    counts[name] = {}
                    for schema, table in tables:
                        cur.execute("SELECT count(*) FROM %s.%s" % (quote_ident(schema), quote_ident(table)))
                        counts[name]["%s.%s" % (schema, table)] = cur.fetchone()[0]
            finally:
                conn.close()
        names = sorted(set(counts[left]) | set(counts[right]))
        mismatches = [{"table": n, left: counts[left].get(n), right: counts[right].get(n)}
                      for n in names if counts[left].get(n) != counts[right].get(n)]
        return {"with": right, "tables": len(names), "rows": sum(counts[left].values()), "match": not mismatches,
                "mismatches": mismatches}

    # --- helpers ------------------------------------------------------------------------------------

    def env(self, database=None):
        return pg.libpq_env(self.params, database or self.params["maintenance_db"])

    def tool(self, name):
        return pg.tool(name, self.version_num)


def _prepend(first, chunks):
    yield first
    yield from chunks
