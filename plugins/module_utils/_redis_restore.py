# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: Redis restores, live (the target stays online) or by file swap. Not a public API.

Everything is checked before the first write: the options, the target (reachable, not a replica), the
backup (checksum, decryption, decompression, RDB structure, a load into a private redis-server, key counts
against the manifest), every target db, the memory the data needs and the keys already there. Then a
safety backup, then the copy (``_redis_live``) or the file swap (``_redis_file_swap``). A failure after any
write reports ``changed: true`` and the safety backup that holds the previous data.
"""

from __future__ import annotations

import os
import time

from ansible_collections.runbook.ops.plugins.module_utils import _backup
from ansible_collections.runbook.ops.plugins.module_utils import _container
from ansible_collections.runbook.ops.plugins.module_utils import _redis as rd
from ansible_collections.runbook.ops.plugins.module_utils import _redis_backup
from ansible_collections.runbook.ops.plugins.module_utils import _redis_live as live
from ansible_collections.runbook.ops.plugins.module_utils import _redis_rdb as rdb_reader
from ansible_collections.runbook.ops.plugins.module_utils import _report
from ansible_collections.runbook.ops.plugins.module_utils import _sources
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import atomic, codec, manifest as mf, store as st
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, Terminated
from ansible_collections.runbook.ops.plugins.module_utils._module import merge_specs
from ansible_collections.runbook.ops.plugins.module_utils._redis_file_swap import FileSwap

KIND = _redis_backup.KIND
MEMORY_HEADROOM = 1.05


def argspec_ex():
    return merge_specs(rd.connection_argspec_ex(), _container.container_argspec_ex(), st.store_argspec_ex(for_restore=True), {
        "argspec": dict(
            src=dict(type="str", required=True),
            name=dict(type="str", default="redis"),
            mode=dict(type="str", default="live", choices=["live", "file"]),
            validate_only=dict(type="bool", default=False),
            safety_backup=dict(type="bool", default=True),
            force=dict(type="bool", default=False),
            flush_first=dict(type="bool", default=False),
            existing_keys=dict(type="str", choices=["fail", "replace", "skip"]),
            replace=dict(type="bool", removed_in_version="2.0.0", removed_from_collection="runbook.ops"),
            key_pattern=dict(type="str", no_log=False),
            db_map=dict(type="dict", default={}),
            batch_size=dict(type="int", default=1000),
            transport=dict(type="str", default="auto", choices=["auto", "stream", "migrate", "dump"]),
            scratch_servers=dict(type="int", default=2),
            load_timeout=dict(type="int", default=600),
            service=dict(type="str"),
            stop_command=dict(type="list", elements="str"),
            start_command=dict(type="list", elements="str"),
            data_dir=dict(type="path"),
            dbfilename=dict(type="str"),
            config_file=dict(type="path"),
            keep_previous=dict(type="bool", default=True),
        ),
        "mutually_exclusive": [("replace", "existing_keys"), ("service", "stop_command"), ("service", "start_command")],
        "required_together": [("stop_command", "start_command")],
    })


def parse_db_map(db_map):
    """{source db: target db} as integers; OpsError naming the entry that is not a db number."""
    parsed = {}
    for key, value in (db_map or {}).items():
        try:
            source, target = int(str(key)), int(str(value))
        except ValueError:
            raise OpsError("db_map entry %r: %r is not a pair of db numbers: write it as {0: 8}" % (key, value))
        if source < 0 or target < 0:
            raise OpsError("db_map entry %r: %r names a negative db" % (key, value))
        if source in parsed:
            raise OpsError("db_map names source db %d twice (%r): give each db once" % (source, key))
        parsed[source] = target
    return parsed


def check_plan(plan):
    """Refuse two source dbs restored into one target db: their keys could collide half way."""
    seen = {}
    for source, target in plan:
        if target in seen:
            raise OpsError("db %d and db %d of the backup would both be restored into db %d of the target: map them to "
                           "different dbs with db_map; nothing was changed" % (seen[target], source, target))
        seen[target] = source


def validate(params):
    """Every check that needs no server, before anything is read or written."""
    rd.validate_connection(params)
    mf.validate_subject(params["name"], "name")
    parse_db_map(params["db_map"])
    if params["key_pattern"] is not None and not params["key_pattern"]:
        raise OpsError("key_pattern is empty: give a glob such as 'session:*', or leave it out to restore every key")
    for option, low, high in (("batch_size", 1, 100000), ("scratch_servers", 1, 8), ("load_timeout", 1, 86400)):
        if not low <= params[option] <= high:
            raise OpsError("%s is %d: use %d-%d" % (option, params[option], low, high))
    if not params["src"].strip():
        raise OpsError("src is empty: give a path, an s3:// uri or latest")
    if params["mode"] == "file" and not params["validate_only"]:
        if not (params["service"] or params["stop_command"]):
            raise OpsError("mode file needs service (a systemd unit) or both stop_command and start_command")
        if params["key_pattern"] or params["db_map"] or params["flush_first"]:
            raise OpsError("mode file replaces the whole dataset: key_pattern, db_map and flush_first apply to mode live")
        if _container.wanted(params):
            raise OpsError("mode file swaps a server's files on this host and restarts its service; for a server in a "
                           "container use mode live (the default), which restores into it while it stays online")
    if _container.wanted(params) and params["transport"] == "migrate":
        raise OpsError("transport migrate: the scratch servers on this host cannot reach a server inside a container; "
                       "use transport dump (auto picks it)")
    st.validate(params["store"])


class Report(_report.Report):
    """The one result builder of a Redis restore or validation."""

    def keys(self, name, counts):
        self.data[name] = {str(db): count for db, count in sorted(counts.items())}


class RedisRestore:
    def __init__(self, module, params):
        self.module = module
        self.params = params
        self.store = params["store"] or {}
        self.secrets = codec.Secrets(params["encryption"])
        self.policy = "replace" if params["replace"] else (params["existing_keys"] or "fail")
        self.stamp = mf.utc_now().strftime("%Y%m%d_%H%M%S")
        self.report = Report(KIND)
        self.wrote = False
        self.target = None

    def run(self):
        validate(self.params)
        _backup.hide_passphrase(self.module, self.params)
        self.db_map = parse_db_map(self.params["db_map"])
        clock = time.monotonic()
        target = None
        if not self.params["validate_only"]:
            container = rd.reach(self.params, tools=())
            if container is not None:
                self.report.update(container=_container.describe(container))
            target = rd.client(self.params)  # a target that is down fails first
            self.target = target
            master = rd.replica_of(target)
            if master:
                raise OpsError("the target %s is a read-only replica of %s: a restore must go to the master (the "
                               "replica then copies it); nothing was changed" % (rd.where(self.params), master))
        redis = rd.library()
        try:
            try:
                with st.scratch(self.store, ".redis-restore-", self.module.check_mode) as scratch_dir:
                    result = self.restore(target, scratch_dir)
            except redis.RedisError as exc:  # a server that stops answering half way
                raise OpsError("Redis failed during the restore: %s" % rd.explain(exc, self.params), exception=exc)
        except OpsError as exc:
            if self.wrote:
                raise exc.extend("the safety backup %s holds the previous data"
                                 % (self.report.data.get("safety_backup") or {}).get("id"),
                                 changed=True, restore=self.report.data)
            raise
        except Terminated:
            raise Terminated(changed=self.wrote, restore=self.report.data)
        result["restore"]["duration"] = round(time.monotonic() - clock, 3)
        return result

    def restore(self, target, scratch_dir):
        source = _sources.resolve(self.params["src"], self.store, KIND, self.params["name"], scratch_dir)
        if source.is_directory:
            raise OpsError("%s is a directory, not an RDB backup" % source.location)
        self.report.update(src=source.location, id=source.id, path=source.path, checksum=source.checksum_origin)
        live_mode = self.params["mode"] == "live" and not self.params["validate_only"]
        file_mode = not live_mode and not self.params["validate_only"]
        rdb = self.decode(source, scratch_dir, durable=file_mode)  # in file mode it may become the server's RDB as is
        expected = self.expected_keys(source)
        if file_mode:
            # mode file: Redis itself loads the file after the swap and the key counts are checked then
            needed = (source.manifest or {}).get("used_memory") or self.report.data["rdb_size"]
            return self.restore_file(target, rdb, expected, needed)
        if live_mode:
            streamed = self.restore_stream(rdb, source, target, expected, scratch_dir)
            if streamed is not None:
                return streamed
        scratches = [rd.ScratchServer(scratch_dir, "scratch%d" % i)
                     for i in range(self.params["scratch_servers"] if live_mode else 1)]
        try:
            clock = time.monotonic()
            for server in scratches:
                server.launch()
            loaded = [server.wait(self.params["load_timeout"]) for server in scratches]
            self.report.update(scratch_load_duration=round(time.monotonic() - clock, 3))
            self.check_loaded(loaded[0], expected, rdb)
            if self.params["validate_only"]:
                self.report.update(valid=True)
                return self.report.result(False)
            return self.restore_live(loaded, target)
        finally:
            for server in scratches:
                server.stop()

    # --- reading the backup -------------------------------------------------------------------------

    def decode(self, source, scratch_dir, durable=False):
        """Checksum, decrypt and decompress into a private dump.rdb; refuse anything that is not a whole RDB."""
        clock = time.monotonic()
        path = os.path.join(scratch_dir, "dump.rdb")
        writer = atomic.AtomicWriter(path, durable=durable)
        check = rd.RdbCheck(writer)
        try:
            chunks = codec.Peekable(source.plaintext(self.secrets))
            if codec.content_kind(chunks.peek(16)) != "rdb":
                for _data in chunks:  # a checksum mismatch explains more than "not an RDB"
                    pass
                raise OpsError("%s is not a Redis RDB backup (after %s it does not start with REDIS); refusing to restore it"
                               % (source.location, ", ".join(source.layers) or "no decoding"))
            for data in chunks:
                check.write(data)
            self.report.update(rdb_version=check.version(source.location))
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        self.report.update(layers=list(source.layers), sha256=source.sha256, rdb_size=source.plain_bytes,
                           read_duration=round(time.monotonic() - clock, 3))
        return path

    @staticmethod
    def expected_keys(source):
        keys = (source.manifest or {}).get("keys")
        return {int(db): int(count) for db, count in keys.items()} if keys is not None else None

    def check_loaded(self, loaded, expected, path):
        found = rd.keyspace(loaded)
        self.report.keys("backup_keys", found)
        if expected is not None and not rdb_reader.counts_match(path, expected, found, int(time.time() * 1000)):
            raise OpsError("the backup loads with keys per db %s but its manifest says %s; refusing to restore it"
                           % (self.report.data["backup_keys"], {str(k): v for k, v in expected.items()}))

    @staticmethod
    def dataset_memory(loaded):
        found = rd.memory(loaded)
        return max(0, found["used"] - found["startup"])

    def check_memory(self, target, needed, freed=0):
        """Refuse when the data would not fit under the target's maxmemory (it would be refused or evict keys)."""
        found = rd.memory(target)
        self.report.update(memory={"needed": needed, "target_used": found["used"], "target_maxmemory": found["max"],
                                   "policy": found["policy"]})
        if not found["max"]:
            return
        available = found["max"] - found["used"] + freed
        if needed * MEMORY_HEADROOM > available:
            consequence = ("writes would fail half way (OOM)" if found["policy"] == "noeviction"
                           else "Redis would evict keys (%s) to make room" % found["policy"])
            raise OpsError("the backup needs about %d bytes of memory but the target has %d bytes free under maxmemory "
                           "%d (used %d%s): %s. Raise maxmemory or free memory first; nothing was changed"
                           % (needed, available, found["max"], found["used"],
                              ", %d freed by the flush" % freed if freed else "", consequence))

    # --- live ---------------------------------------------------------------------------------------

    def live_plan(self, source_dbs, target):
        """(source db, target db) pairs, the target's keys per db, the target dbs touched and the keys already in
        them; refuses a plan that cannot work, and keys in the way without a policy for them."""
        params = self.params
        plan = [(db, self.db_map.get(db, db)) for db in source_dbs]
        check_plan(plan)
        missing = sorted({dst for _src, dst in plan if not rd.db_exists(target, dst)})
        if missing:
            raise OpsError("the target has no db %s (the backup holds dbs %s%s): map them to existing dbs with db_map or "
                           "raise 'databases' on the target; nothing was changed"
                           % (", ".join(map(str, missing)), source_dbs, ", db_map %s" % self.db_map if self.db_map else ""))
        before = rd.keyspace(target)
        touched = sorted({dst for _src, dst in plan})
        present = sum(before.get(dst, 0) for dst in touched)
        self.report.update(mode="live", policy=self.policy)
        self.report.keys("target_keys_before", before)
        if present and not (params["flush_first"] or params["force"] or self.policy in ("replace", "skip")):
            raise OpsError("the target has %d keys in db %s: set flush_first: true, existing_keys: replace or skip, or "
                           "force: true (then a key that exists fails the restore before anything is written)"
                           % (present, ", ".join(map(str, touched))))
        return plan, before, touched, present

    def freed_by_flush(self, target, before, touched):
        if not self.params["flush_first"] or self.params["key_pattern"]:
            return 0
        used = rd.memory(target)
        return max(0, used["used"] - used["startup"]) * sum(before.get(dst, 0) for dst in touched) // max(1, sum(before.values()))

    def live_diff(self):
        before = self.report.data["target_keys_before"]
        return {"before": "".join("db%s: %s keys\n" % item for item in before.items()),
                "after": "restored from %s with policy %s%s\n" % (self.report.data["id"], self.policy,
                                                                  ", flushed first" if self.params["flush_first"] else "")}

    def begin_writes(self, before, touched):
        """The safety backup, then the flush: the first writes. False in check mode (nothing is written)."""
        params = self.params
        wants_safety = params["safety_backup"] and sum(before.values())
        if self.module.check_mode:
            self.report.update(safety_backup="would be taken" if wants_safety else None)
            return False
        self.report.update(safety_backup=self.safety_backup() if wants_safety else None)
        self.wrote = bool(wants_safety)
        if params["flush_first"]:
            self.wrote = True
            self.report.update(flushed={str(dst): live.flush(rd.for_db(self.target, dst), params["key_pattern"])
                                        for dst in touched})
        return True

    def stopped_half_way(self, exc, per_db):
        self.wrote = True
        try:
            self.report.keys("target_keys_after", rd.keyspace(self.target))
        except rd.library().RedisError:
            self.report.update(target_keys_after="unknown: the target does not answer")
        return exc.extend("the restore stopped after %d keys were written in whole batches (per db: %s); the target "
                          "now holds keys per db %s (before: %s)"
                          % (sum(d["restored"] for d in per_db.values()), per_db,
                             self.report.data["target_keys_after"], self.report.data["target_keys_before"]))

    def finish_live(self, restored, per_db, sample):
        self.report.update(restored=restored, skipped=sum(d["skipped"] for d in per_db.values()),
                           failed=sum(d["failed"] for d in per_db.values()),
                           keys_per_second=round(restored / self.report.data["load_duration"])
                           if self.report.data["load_duration"] else None, sample=sample)
        self.report.keys("target_keys_after", rd.keyspace(self.target))
        if self.report.data["failed"] or sample["mismatched"]:
            raise OpsError("the restore wrote %d keys but %d failed and %d sampled keys differ (%s); per db: %s"
                           % (restored, self.report.data["failed"], sample["mismatched"], ", ".join(sample["examples"]),
                              per_db))
        return self.report.result(restored > 0 or bool(self.params["flush_first"]), self.live_diff())

    def stream_refused(self):
        """Why this restore cannot stream the file straight into the target, or None."""
        params = self.params
        if params["transport"] in ("migrate", "dump"):
            return "transport %s was asked for" % params["transport"]
        if params["key_pattern"]:
            return "key_pattern selects keys by Redis's own glob, which a scratch server applies"
        if params["force"] or self.policy == "skip":
            return "existing_keys %s needs the backup's keys listed against the target's first" % (
                "skip" if self.policy == "skip" else "fail with force")
        if self.crc is None:
            return "the Python package anycrc (the CRC64 of RESTORE payloads) is not installed on this host"
        return None

    def restore_stream(self, path, source, target, expected, scratch_dir):
        """Mode live without a scratch server: the file is checked whole (structure, RDB checksum, key counts
        against the manifest), then streamed as RESTORE commands. None when this restore needs the scratch
        servers instead (the reason is reported as stream_fallback)."""
        self.crc = rdb_reader.crc64()
        reason = self.stream_refused()
        if reason is None:
            with open(path, "rb") as handle, rdb_reader.mapped(handle) as data:
                try:
                    return self.stream_checked(rdb_reader.RdbFile(data, source.location), source, target, expected,
                                               scratch_dir)
                except rdb_reader.Unsupported as exc:
                    reason = str(exc)
        if self.params["transport"] == "stream":
            raise OpsError("transport stream cannot restore this backup: %s. Use transport auto; nothing was "
                           "changed" % reason)
        self.report.update(stream_fallback=reason)
        return None

    def stream_checked(self, rdb, source, target, expected, scratch_dir):
        """Every check before the first write, then the stream; Unsupported (nothing written) where the scratch
        servers must do it."""
        checker = live.SampleCheck(scratch_dir)  # it starts while the file is checked
        try:
            plan, before, touched = self.stream_plan(rdb, source, target, expected)
            checker.ready(self.params["load_timeout"], rdb.version)
            clock = time.monotonic()
            if not self.begin_writes(before, touched):
                return self.report.result(True, self.live_diff())
            per_db = {str(src): {"target_db": dst, "restored": 0, "skipped": 0, "failed": 0, "expired": 0,
                                 "transport": "stream"} for src, dst in plan}
            self.report.update(per_db=per_db)
            sample, now_ms = {}, int(time.time() * 1000)  # keys expired by now are counted, not sent (a load skips them)
            streamer = live.Streamer(target, self.policy == "replace" or self.params["flush_first"], self.crc)
            try:
                streamer.run(rdb, dict(plan), per_db, sample, now_ms)
            except OpsError as exc:
                raise self.stopped_half_way(exc, per_db)
            finally:
                self.wrote = self.wrote or any(d["restored"] for d in per_db.values())
            self.report.update(load_duration=round(time.monotonic() - clock, 3), transport="stream",
                               errors=streamer.errors)
            restored = sum(d["restored"] for d in per_db.values())
            return self.finish_live(restored, per_db, checker.compare(sample, target, dict(plan)))
        finally:
            checker.stop()

    def stream_plan(self, rdb, source, target, expected):
        """The file checked whole, against its manifest and the target: (plan, keys before, dbs touched)."""
        clock = time.monotonic()
        counts = rdb.check(self.crc)
        self.report.update(scan_duration=round(time.monotonic() - clock, 3))
        if not rdb.checksummed and not source.checksum_origin:
            raise rdb_reader.Unsupported("the RDB carries no checksum of its own (rdbchecksum no, or RDB version %d) and "
                                         "the backup has no manifest or sidecar checksum" % rdb.version)
        target_version = target.info("server").get("redis_version", "")
        if rdb_reader.version_of_server(target_version) < rdb.version:
            raise rdb_reader.Unsupported("the target runs Redis %s, which cannot RESTORE payloads of RDB version %d "
                                         "(or has no RESTORE ABSTTL)" % (target_version, rdb.version))
        self.report.keys("backup_keys", {db: count for db, count in counts.items() if count})
        if expected is not None and {db: c for db, c in expected.items() if c} != {db: c for db, c in counts.items() if c}:
            raise OpsError("the backup holds keys per db %s but its manifest says %s; refusing to restore it"
                           % (self.report.data["backup_keys"], {str(k): v for k, v in expected.items()}))
        if rdb.functions:
            self.report.update(functions_skipped=rdb.functions)
        plan, before, touched, _present = self.live_plan(sorted(counts), target)  # keys in the way: flush or replace
        for dst in touched:
            rd.for_db(target, dst)  # SELECT works (a cluster-mode server refuses db > 0)
        needed = (source.manifest or {}).get("used_memory") or self.report.data["rdb_size"]
        self.check_memory(target, needed, self.freed_by_flush(target, before, touched))
        return plan, before, touched

    def restore_live(self, scratches, target):
        params = self.params
        loaded = scratches[0]
        source_dbs = sorted(rd.keyspace(loaded))
        plan, before, touched, present = self.live_plan(source_dbs, target)
        clock = time.monotonic()
        batches = {db: list(live.key_batches(rd.for_db(loaded, db), params["key_pattern"], params["batch_size"]))
                   for db in source_dbs}
        self.report.update(scan_duration=round(time.monotonic() - clock, 3))
        selected = sum(len(b) for db in source_dbs for b in batches[db])
        if params["key_pattern"] and not selected:
            raise OpsError("key_pattern %r matches no key in the backup (%s); nothing was restored"
                           % (params["key_pattern"], self.report.data["backup_keys"]))
        total = sum(rd.keyspace(loaded).values()) or 1
        needed = self.dataset_memory(loaded) * selected // total
        self.check_memory(target, needed, self.freed_by_flush(target, before, touched))
        skip_existing = self.policy == "skip" and not params["flush_first"]
        if self.policy == "fail" and present and not params["flush_first"]:
            self.refuse_collisions(target, plan, batches)
        clock = time.monotonic()
        if not self.begin_writes(before, touched):
            return self.report.result(True, self.live_diff())
        per_db = {}
        self.report.update(per_db=per_db)
        copier = live.Copier(params, replace=self.policy == "replace" or params["flush_first"])
        try:
            for src_db, dst_db in plan:
                per_db[str(src_db)] = {"target_db": dst_db, "restored": 0, "skipped": 0, "failed": 0}
                copier.copy_db(per_db[str(src_db)], scratches, target, src_db, dst_db, batches[src_db], skip_existing)
                self.wrote = self.wrote or per_db[str(src_db)]["restored"] > 0
        except OpsError as exc:
            raise self.stopped_half_way(exc, per_db)
        self.report.update(load_duration=round(time.monotonic() - clock, 3))
        restored = sum(d["restored"] for d in per_db.values())
        return self.finish_live(restored, per_db, live.compare_sample(loaded, target, plan, batches, skip_existing))

    def refuse_collisions(self, target, plan, batches):
        found = []
        for src_db, dst_db in plan:
            conn = rd.for_db(target, dst_db)
            for batch in batches[src_db]:
                found += ["db%d:%s" % (dst_db, key.decode(errors="replace")) for key in live.existing(conn, batch)]
        if found:
            raise OpsError("%d keys of the backup already exist in the target (%s%s) and existing_keys is fail: nothing "
                           "was written. Use existing_keys: replace or skip, or flush_first: true"
                           % (len(found), ", ".join(found[:5]), ", ..." if len(found) > 5 else ""))

    def safety_backup(self):
        return _backup.safety_backup(_redis_backup.RedisBackupJob, self.module, self.params, self.params["name"],
                                     self.report.data.get("id"), method="replication", rdb_path=None, bgsave_timeout=3600,
                                     idle_timeout=60)

    # --- file ---------------------------------------------------------------------------------------

    def restore_file(self, target, rdb, expected, needed):
        params = self.params
        info = target.info("server")
        data_dir = params["data_dir"] or rd.config_get(target, "dir")
        dbfilename = params["dbfilename"] or rd.config_get(target, "dbfilename") or "dump.rdb"
        config_file = params["config_file"] or info.get("config_file") or None
        aof = rd.config_get(target, "appendonly")
        if aof is None:
            aof = "yes" if target.info("persistence").get("aof_enabled") else "no"
        if not data_dir:
            raise OpsError("CONFIG is disabled on the target: give data_dir (and dbfilename, config_file)")
        if aof == "yes" and not config_file:
            raise OpsError("AOF is on and the server's config file is unknown: give config_file, so AOF can be turned "
                           "off for the load and back on afterwards")
        found = rd.memory(target)
        self.check_memory(target, needed, freed=max(0, found["used"] - found["startup"]))
        before = rd.keyspace(target)
        self.report.update(mode="file", data_dir=data_dir, aof=aof == "yes")
        self.report.keys("target_keys_before", before)
        diff = {"before": "%s: %d keys\n" % (os.path.join(data_dir, dbfilename), sum(before.values())),
                "after": "%s: restored from %s\n" % (os.path.join(data_dir, dbfilename), self.report.data["id"])}
        wants_safety = params["safety_backup"] and sum(before.values())
        if self.module.check_mode:
            self.report.update(safety_backup="would be taken" if wants_safety else None)
            return self.report.result(True, diff)
        self.report.update(safety_backup=self.safety_backup() if wants_safety else None)
        self.wrote = bool(wants_safety)
        aof_dir = os.path.join(data_dir, rd.config_get(target, "appenddirname") or "appendonlydir")
        target.close()
        clock = time.monotonic()
        swap = FileSwap(params, data_dir, dbfilename, aof_dir, config_file, aof == "yes", self.stamp)
        swap.run(rdb, expected, self.report.data)
        self.wrote = True
        self.report.update(load_duration=round(time.monotonic() - clock, 3))
        return self.report.result(True, diff)
