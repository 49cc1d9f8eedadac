# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: PostgreSQL restores that never lose the current data. Not a public API.

Order of work: validate every option; resolve the source; refuse a non-empty target without force; read
the whole source once (``_pg_archive.prepare``); take a safety backup; restore into a scratch database
beside the target; check it; then swap by rename in one transaction (``_pg_ddl.swap``). Anything failing
before the swap drops the scratch database and leaves the target as it was. ``in_place`` loads in one
transaction that is rolled back on any error.
"""

from __future__ import annotations

import itertools
import secrets
import time

from ansible_collections.runbook.ops.plugins.module_utils import _backup
from ansible_collections.runbook.ops.plugins.module_utils import _container
from ansible_collections.runbook.ops.plugins.module_utils import _pg_archive as archive
from ansible_collections.runbook.ops.plugins.module_utils import _pg_backup
from ansible_collections.runbook.ops.plugins.module_utils import _pg_ddl as ddl
from ansible_collections.runbook.ops.plugins.module_utils import _postgres as pg
from ansible_collections.runbook.ops.plugins.module_utils import _process as proc
from ansible_collections.runbook.ops.plugins.module_utils import _report
from ansible_collections.runbook.ops.plugins.module_utils import _sources
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import codec, lock, manifest as mf, store as st
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, Terminated, first_line, warn
from ansible_collections.runbook.ops.plugins.module_utils._module import merge_specs

KIND = _pg_backup.KIND


def argspec_ex():
    return merge_specs(pg.connection_argspec_ex(), _container.container_argspec_ex(), st.store_argspec_ex(for_restore=True), {
        "argspec": dict(
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
        ),
        "mutually_exclusive": [("owner", "session_role")],
    })


def validate(params):
    """Every check that needs no server, before anything is read or written."""
    pg.validate_connection(params)
    for option in ("db", "backup_db", "maintenance_db", "compare_with"):
        if params[option] is not None:
            pg.validate_db_name(params[option], option)
    mf.validate_subject(params["backup_db"] or params["db"], "backup_db" if params["backup_db"] else "db")
    if _container.wanted(params) and params["mode"] == "in_place" and not params["validate_only"]:
        raise OpsError("mode in_place with a container: use mode swap (the default), which restores beside the database "
                       "and checks the result before the old one is set aside; nothing was changed")
    for option in ("owner", "session_role"):
        if params[option] is not None and not params[option].strip():
            raise OpsError("%s is empty: give a role name or leave it out" % option)
    _pg_backup.validate_jobs(params["jobs"])
    for option, low in (("min_tables", 0), ("terminate_timeout", 0), ("openssl_iterations", 1)):
        if params[option] < low:
            raise OpsError("%s is %d: it must be at least %d" % (option, params[option], low))
    if not params["src"].strip():
        raise OpsError("src is empty: give a path, an s3:// uri or latest")
    st.validate(params["store"])


def in_one_transaction(chunks):
    """BEGIN, the script, COMMIT: psql sees COMMIT only when the whole input arrived."""
    yield b"BEGIN;\n"
    yield from chunks
    yield b"\nCOMMIT;\n"


class Report(_report.Report):
    """The one result builder of a PostgreSQL restore or validation."""

    def source(self, source):
        self.update(src=source.location, id=source.id, path=source.path, checksum=source.checksum_origin,
                    manifest=(source.manifest or {}).get("manifest_path"))

    def prepared(self, prepared):
        source = prepared.source
        self.update(format=prepared.format, toc_entries=prepared.toc_entries, read_duration=prepared.read_duration)
        if not source.is_directory:
            self.update(layers=list(source.layers), sha256=source.sha256, plain_size=source.plain_bytes)

    def loaded(self, load_duration):
        self.update(load_duration=round(load_duration, 3))
        if self.data.get("plain_size") and load_duration:
            self.update(throughput_mb_s=round(self.data["plain_size"] / 1e6 / load_duration, 1))


class PgRestore:
    def __init__(self, module, params):
        self.module = module
        self.params = params
        self.db = params["db"]
        self.store = params["store"] or {}
        self.secrets = codec.Secrets(params["encryption"], params["openssl_iterations"])
        self.stamp = mf.utc_now().strftime("%Y%m%d_%H%M%S")
        self.version_num = None
        self.report = Report(KIND)
        self.wrote = False
        self.container = None

    # --- entry point ------------------------------------------------------------------------------

    def run(self):
        validate(self.params)
        _backup.hide_passphrase(self.module, self.params)
        clock = time.monotonic()
        self.container = pg.reach(self.params, ("pg_restore", "psql"))
        if self.container is not None:
            self.report.update(container=_container.describe(self.container))
        maintenance = pg.connect(self.params, self.params["maintenance_db"])
        try:
            self.version_num = maintenance.server_version
            if not self.module.check_mode:
                ddl.drop_stale_scratch(maintenance, self.db)
            with st.scratch(self.store, ".restore-", self.module.check_mode) as scratch_root:
                source = _sources.resolve(self.params["src"], self.store, KIND, self.params["backup_db"] or self.db,
                                          scratch_root)
                self.report.source(source)
                try:
                    if self.params["validate_only"]:
                        result = self.validate(source, maintenance, scratch_root)
                    else:
                        result = self.restore(source, maintenance, scratch_root)
                except OpsError as exc:
                    raise exc.extend("", changed=self.wrote, restore=self.report.data) if self.wrote else exc
                except Terminated:
                    raise Terminated(changed=self.wrote, restore=self.report.data)
        finally:
            maintenance.close()
        result["restore"]["duration"] = round(time.monotonic() - clock, 3)
        return result

    # --- validation ---------------------------------------------------------------------------------

    def validate(self, source, maintenance, scratch_root):
        level = self.params["validate_level"]
        if level == "checksum" and source.expected:
            self.report.update(sha256=source.check_checksum(), level="checksum", valid=True)
            return self.report.result(False)
        test_restore = level == "restore" and not self.module.check_mode
        prepared = self.prepare(source, scratch_root, materialize=test_restore)
        self.report.update(level=level, valid=True)
        if test_restore:
            scratch = ddl.derived_name(self.db, "verify", self.stamp, ddl.database_names(maintenance))
            ddl.create_database(maintenance, scratch, ddl.database_facts(maintenance, self.params, self.db),
                                self.params["owner"], scratch_for=self.db)
            try:
                self.load(prepared, scratch)
                self.check(scratch)
            finally:
                ddl.drop_quietly(self.params, self.params["maintenance_db"], scratch)
            self.report.update(test_database=scratch)
        return self.report.result(False)

    def prepare(self, source, scratch_root, materialize):
        if self.container is not None:
            if source.is_directory:
                raise OpsError("a directory-format backup cannot be restored into a container: pg_restore would have to "
                               "read its files inside the container; restore a custom-format backup; nothing was changed")
            materialize = False  # the container's tools read the archive from their stdin, never from files here
        prepared = archive.prepare(source, self.secrets, scratch_root, materialize, self.tool("pg_restore"), self.env())
        self.report.prepared(prepared)
        if self.container is not None and prepared.format == "directory":
            raise OpsError("%s is a directory-format backup, which cannot be restored into a container (pg_restore would "
                           "have to read its files inside the container); restore a custom-format backup; nothing was "
                           "changed" % source.location)
        return prepared

    # --- restore ------------------------------------------------------------------------------------

    def restore(self, source, maintenance, scratch_root):
        params = self.params
        if self.db == params["maintenance_db"]:
            raise OpsError("db %r is the maintenance database the restore connects to: restore into another database, or "
                           "give another maintenance_db" % self.db)
        target = ddl.database_facts(maintenance, params, self.db)
        if target["template"]:
            raise OpsError("%r is a template database (new databases are copied from it): refusing to replace it; "
                           "restore into an ordinary database" % self.db)
        taken = ddl.database_names(maintenance)
        previous = ddl.derived_name(self.db, "pre_restore", self.stamp, taken)
        self.report.update(database=self.db, mode=params["mode"], target_existed=target["exists"])
        if target["exists"] and target["tables"] and not params["force"]:
            raise OpsError("database %r exists and has %d tables: set force: true to replace it (mode swap keeps the "
                           "old one as %s unless keep_previous: false)" % (self.db, target["tables"], previous))
        in_place = params["mode"] == "in_place"
        prepared = self.prepare(source, scratch_root,
                                materialize=not self.module.check_mode and (in_place or params["jobs"] > 1))
        before = "database %s: %s\n" % (self.db, "%d tables, %d bytes" % (target["tables"], target["size"])
                                        if target["exists"] else "absent")
        after = "database %s: restored from %s (sha256 %s)\n" % (self.db, source.id, self.report.data.get("sha256") or "n/a")
        diff = {"before": before, "after": after}
        wants_safety = params["safety_backup"] and target["exists"] and target["tables"] > 0
        if self.module.check_mode:
            self.report.update(previous=None if in_place or not target["exists"] or not params["keep_previous"] else previous,
                               safety_backup="would be taken" if wants_safety else None)
            return self.report.result(True, diff)
        self.report.update(safety_backup=None)
        with lock.StoreLock(st.work_base(self.store) if self.store else scratch_root, "postgres-restore", self.db, 0,
                            what="restore"):
            if wants_safety:
                self.report.update(safety_backup=_backup.safety_backup(
                    _pg_backup.PgBackupJob, self.module, params, self.db, source.id, format="custom", globals=False))
                self.wrote = True
            clock = time.monotonic()
            if in_place:
                self.restore_in_place(maintenance, prepared, target)
            else:
                self.restore_swap(maintenance, prepared, target, previous)
            self.report.loaded(time.monotonic() - clock)
        if params["compare_with"]:
            self.report.update(comparison=self.compare(self.db, params["compare_with"]))
        return self.report.result(True, diff)

    def restore_swap(self, maintenance, prepared, target, previous):
        scratch = ddl.derived_name(self.db, "restore", self.stamp, ddl.database_names(maintenance) | {previous})
        self.report.update(scratch=scratch)
        ddl.create_database(maintenance, scratch, target, self.params["owner"], scratch_for=self.db)
        try:
            self.load(prepared, scratch)
            self.check(scratch)
            if target["exists"]:
                self.report.update(copied_properties=ddl.copy_database_properties(maintenance, self.db, scratch))
                terminated = ddl.swap(self.params, self.params["maintenance_db"], self.db, scratch, previous,
                                      self.params["terminate_timeout"], target.get("comment"))
                self.report.update(sessions_terminated=terminated)
            else:
                ddl.execute(maintenance, "ALTER DATABASE %s RENAME TO %s; COMMENT ON DATABASE %s IS NULL"
                            % (ddl.quote_ident(scratch), ddl.quote_ident(self.db), ddl.quote_ident(self.db)),
                            "cannot rename %s to %s" % (scratch, self.db))
        except BaseException as exc:
            ddl.drop_quietly(self.params, self.params["maintenance_db"], scratch)
            if isinstance(exc, OpsError):
                raise exc.extend("the target database %r is untouched and the scratch database %s was dropped"
                                 % (self.db, scratch))
            raise
        self.wrote = True
        if not target["exists"]:
            self.report.update(previous=None)
        elif self.params["keep_previous"]:
            self.report.update(previous=previous)
        else:
            ddl.drop_database(maintenance, previous)
            self.report.update(previous=None, previous_dropped=previous)

    def restore_in_place(self, maintenance, prepared, target):
        if not target["exists"]:
            ddl.create_database(maintenance, self.db, target, self.params["owner"])
        try:
            self.load(prepared, self.db, clean=True)
        except BaseException as exc:
            if not target["exists"]:
                ddl.drop_quietly(self.params, self.params["maintenance_db"], self.db)
            if isinstance(exc, OpsError):
                raise exc.extend("the restore ran in one transaction, which was rolled back: database %r is as it was"
                                 % self.db)
            raise
        self.wrote = True
        self.check(self.db)
        self.report.update(previous=None)

    def load(self, prepared, database, clean=False):
        """pg_restore (parallel from a file or directory, else streamed) or psql, stopping at the first error."""
        env = self.env()
        role = self.params["owner"] or self.params["session_role"]
        # no --single-transaction: at the end of its input psql commits that one, even when the input was cut (a killed
        # task closes the pipe); the BEGIN and COMMIT we send make a cut input end with the transaction still open
        psql = [self.tool("psql"), "--no-password", "--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1",
                "--dbname", pg.conninfo(database, self.params), "--file", "-"]
        if prepared.format == "plain":
            stream = prepared.source.plaintext(self.secrets)
            if role:
                stream = itertools.chain([b"SET ROLE %s;\n" % ddl.quote_ident(role).encode()], stream)
            if archive.psql_restricts(pg.tool_version(psql[0], env)):
                stream = archive.restricted(stream, secrets.token_hex(16))
            else:
                warn("%s cannot turn off psql meta-commands (\\restrict needs psql 13.22, 14.19, 15.14, 16.10, 17.6 or "
                     "later); the SQL file was checked line by line instead: upgrade the PostgreSQL client"
                     % pg.tool_version(psql[0], env))
            proc.feed_command(psql, env, in_one_transaction(stream), "psql restoring into %s" % database)
            self.report.update(jobs=1)
            return
        argv = [self.tool("pg_restore"), "--no-password", "--exit-on-error"]
        if self.params["owner"]:
            argv += ["--no-owner", "--role", self.params["owner"]]
        elif self.params["session_role"]:
            argv += ["--role", self.params["session_role"]]
        what = "pg_restore into %s" % database
        if clean:
            self.load_clean(prepared, database, argv, psql, env, what)
            return
        location = prepared.location if self.container is None else None  # a container's tools read their stdin
        jobs = self.params["jobs"] if location else 1
        argv += ["--dbname", pg.conninfo(database, self.params)] + (["--jobs", str(jobs)] if jobs > 1 else [])
        self.report.update(jobs=jobs)
        if location:
            proc.run_tool(argv + [location], env, what)
        else:
            proc.feed_command(argv, env, prepared.source.plaintext(self.secrets), what)

    def load_clean(self, prepared, database, argv, psql, env, what):
        """The drops of --clean --if-exists, then the restore, in one psql transaction.

        Drops of what partitions inherit are left out: PostgreSQL refuses them and drops them with the parent's.
        """
        location = prepared.location
        clean_script = proc.command_output(argv + ["--clean", "--if-exists", "--file", "-", location], env,
                                           "pg_restore --clean")
        try:
            drops = archive.drop_statements(clean_script)
        finally:
            clean_script.close()  # stops pg_restore: only the clean phase at the top was needed
        conn = pg.connect(self.params, database)
        try:
            constraints, indexes = ddl.inherited_objects(conn)
        finally:
            conn.close()
        kept, skipped = archive.without_inherited(drops, constraints, indexes)
        clean = "".join(line + "\n" for line in kept).encode("utf-8")
        script = proc.command_output(argv + ["--file", "-", location], env, what)
        proc.feed_command(psql, env, in_one_transaction(itertools.chain([clean], script)), "psql restoring into %s" % database)
        self.report.update(jobs=1, dropped_first=len(kept), inherited_drops_skipped=len(skipped))

    def check(self, database):
        conn = pg.connect(self.params, database)
        try:
            with conn.cursor() as cur:
                cur.execute(ddl.USER_TABLES)
                tables = len(cur.fetchall())
                if tables < self.params["min_tables"]:
                    raise OpsError("the restored database has %d tables, fewer than min_tables (%d): the backup is "
                                   "empty or was not restored" % (tables, self.params["min_tables"]))
                self.report.update(verify_queries=[self.run_check(cur, item) for item in self.params["verify_queries"]])
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
        psycopg2 = pg.psycopg2_library()
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

    def compare(self, left, right):
        """Exact row counts of every table in both databases."""
        counts = {}
        for name in (left, right):
            conn = pg.connect(self.params, name)
            try:
                counts[name] = {}
                for schema, table in ddl.execute(conn, ddl.USER_TABLES, "cannot list the tables of %s" % name):
                    counts[name]["%s.%s" % (schema, table)] = ddl.execute(
                        conn, "SELECT count(*) FROM %s.%s" % (ddl.quote_ident(schema), ddl.quote_ident(table)),
                        "cannot count %s.%s" % (schema, table))[0][0]
            finally:
                conn.close()
        names = sorted(set(counts[left]) | set(counts[right]))
        mismatches = [{"table": n, left: counts[left].get(n), right: counts[right].get(n)}
                      for n in names if counts[left].get(n) != counts[right].get(n)]
        return {"with": right, "tables": len(names), "rows": sum(counts[left].values()), "match": not mismatches,
                "mismatches": mismatches}

    # --- helpers ------------------------------------------------------------------------------------

    def env(self):
        return pg.libpq_env(self.params)

    def tool(self, name):
        return pg.tool(name, self.version_num, self.params)
