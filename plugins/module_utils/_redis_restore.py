# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: Redis restores, live (the target stays online) or by file swap. Not a public API.

Live: the backup is decoded (checksum, decryption, decompression) and loaded by a private
redis-server, so Redis itself parses it; keys then move from that server straight to the target
with MIGRATE ... COPY KEYS in batches, so Python stays out of the data path (DUMP/RESTORE through
this process when MIGRATE cannot reach the target, e.g. over TLS).
File: stop the service, keep the old RDB/AOF aside, put the new RDB in place with AOF off for the
load, start, check the key counts, turn AOF back on; any failure puts the old files back.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from concurrent.futures import ThreadPoolExecutor

from ansible_collections.runbook.ops.plugins.module_utils import _artifacts as art
from ansible_collections.runbook.ops.plugins.module_utils import _backup
from ansible_collections.runbook.ops.plugins.module_utils import _redis as rd
from ansible_collections.runbook.ops.plugins.module_utils import _redis_backup
from ansible_collections.runbook.ops.plugins.module_utils import _sources
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line

KIND = _redis_backup.KIND
SAMPLE = 200


def argument_spec():
    spec = dict(rd.CONNECTION_OPTIONS)
    spec.update(art.artifact_argument_spec(for_restore=True))
    spec.update(
        src=dict(type="str", required=True),
        name=dict(type="str", default="redis"),
        mode=dict(type="str", default="live", choices=["live", "file"]),
        validate_only=dict(type="bool", default=False),
        safety_backup=dict(type="bool", default=True),
        force=dict(type="bool", default=False),
        flush_first=dict(type="bool", default=False),
        existing_keys=dict(type="str", choices=["fail", "replace", "skip"]),
        replace=dict(type="bool", default=False),
        key_pattern=dict(type="str", no_log=False),
        db_map=dict(type="dict", default={}),
        batch_size=dict(type="int", default=1000),
        transport=dict(type="str", default="auto", choices=["auto", "migrate", "dump"]),
        scratch_servers=dict(type="int", default=2),
        load_timeout=dict(type="int", default=600),
        service=dict(type="str"),
        stop_command=dict(type="list", elements="str"),
        start_command=dict(type="list", elements="str"),
        data_dir=dict(type="path"),
        dbfilename=dict(type="str"),
        config_file=dict(type="path"),
        keep_previous=dict(type="bool", default=True),
    )
    return spec


class RedisRestore:
    def __init__(self, module, params):
        self.module = module
        self.params = params
        self.store = params["store"] or {}
        self.secrets = _sources.Secrets(params["encryption"])
        _backup.hide_passphrase(module, params)
        self.policy = "replace" if params["replace"] else (params["existing_keys"] or "fail")
        self.db_map = {int(k): int(v) for k, v in params["db_map"].items()}
        self.stamp = art.utc_now().strftime("%Y%m%d_%H%M%S")
        self.report = {}

    def run(self):
        clock = time.monotonic()
        scratch_dir = tempfile.mkdtemp(prefix=".redis-restore-", dir=_backup.work_dir(self.store))
        try:
            target = None if self.params["validate_only"] else rd.client(self.params)  # a target that is down fails first
            source = _sources.resolve(self.params["src"], self.store, KIND, self.params["name"], scratch_dir)
            if source.is_directory:
                raise OpsError("%s is a directory, not an RDB backup" % source.location)
            self.report.update(src=source.location, id=source.id, path=source.path, checksum=source.checksum_origin)
            rdb = self.decode(source, scratch_dir)
            expected = self.expected_keys(source)
            live = self.params["mode"] == "live" and not self.params["validate_only"]
            count = max(1, self.params["scratch_servers"]) if live else 1
            scratches = [rd.ScratchServer(scratch_dir, "scratch%d" % i) for i in range(count)]
            try:
                loaded = []
                if live or self.params["validate_only"]:
                    for server in scratches:
                        server.launch()
                    loaded = [server.wait(self.params["load_timeout"]) for server in scratches]
                    self.check_loaded(loaded[0], expected)
                if self.params["validate_only"]:
                    self.report["valid"] = True
                    result = dict(changed=False, restore=self.report)
                elif live:
                    result = self.restore_live(loaded, target)
                else:
                    result = self.restore_file(target, rdb, expected)
            finally:
                for server in scratches:
                    server.stop()
        finally:
            shutil.rmtree(scratch_dir, ignore_errors=True)
        result["restore"]["duration"] = round(time.monotonic() - clock, 3)
        return result

    # --- reading the backup -------------------------------------------------------------------------

    def decode(self, source, scratch_dir):
        """Checksum, decrypt and decompress into a private dump.rdb; refuse anything that is not a whole RDB."""
        clock = time.monotonic()
        path = os.path.join(scratch_dir, "dump.rdb")
        writer = art.AtomicWriter(path, durable=False)
        check = rd.RdbCheck(writer)
        try:
            chunks = _sources.Peekable(source.plaintext(self.secrets))
            if _sources.content_kind(chunks.peek(16)) != "rdb":
                for _data in chunks:  # a checksum mismatch explains more than "not an RDB"
                    pass
                raise OpsError("%s is not a Redis RDB backup (after %s it does not start with REDIS); refusing to restore it"
                               % (source.location, ", ".join(source.layers) or "no decoding"))
            for data in chunks:
                check.write(data)
            self.report["rdb_version"] = check.version(source.location)
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

    def check_loaded(self, loaded, expected):
        found = rd.keyspace(loaded)
        self.report["backup_keys"] = {str(db): count for db, count in sorted(found.items())}
        if expected is not None and {db: c for db, c in expected.items() if c} != found:
            raise OpsError("the backup loads with keys per db %s but its manifest says %s; refusing to restore it"
                           % (self.report["backup_keys"], {str(k): v for k, v in expected.items()}))

    # --- live ---------------------------------------------------------------------------------------

    def restore_live(self, scratches, target):
        params = self.params
        loaded = scratches[0]
        source_dbs = sorted(rd.keyspace(loaded))
        plan = [(db, self.db_map.get(db, db)) for db in source_dbs]
        before = rd.keyspace(target)
        touched = sorted({dst for _src, dst in plan})
        existing = sum(before.get(dst, 0) for dst in touched)
        self.report.update(mode="live", policy=self.policy, target_keys_before={str(k): v for k, v in sorted(before.items())})
        if existing and not (params["flush_first"] or params["force"] or self.policy in ("replace", "skip")):
            raise OpsError("the target has %d keys in db %s: set flush_first: true, existing_keys: replace or skip, or "
                           "force: true (then a key that exists fails the restore before anything is written)"
                           % (existing, ", ".join(map(str, touched))))
        batches = {db: list(self.key_batches(loaded, db)) for db in source_dbs}
        if params["key_pattern"] and not any(batches.values()):
            raise OpsError("key_pattern %r matches no key in the backup (%s); nothing was restored"
                           % (params["key_pattern"], self.report["backup_keys"]))
        if self.policy == "fail" and existing and not params["flush_first"]:
            self.refuse_collisions(target, plan, batches)
        diff = {"before": "".join("db%s: %d keys\n" % item for item in sorted(before.items())),
                "after": "restored from %s with policy %s%s\n" % (self.report["id"], self.policy,
                                                                  ", flushed first" if params["flush_first"] else "")}
        if self.module.check_mode:
            self.report["safety_backup"] = "would be taken" if params["safety_backup"] and sum(before.values()) else None
            return dict(changed=True, restore=self.report, diff=diff)
        self.report["safety_backup"] = self.safety_backup() if params["safety_backup"] and sum(before.values()) else None
        clock = time.monotonic()
        if params["flush_first"]:
            self.report["flushed"] = {str(dst): self.flush(target, dst) for dst in touched}
        per_db = self.report["per_db"] = {}
        try:
            for src_db, dst_db in plan:
                per_db[str(src_db)] = {"target_db": dst_db, "restored": 0, "skipped": 0, "failed": 0}
                self.copy_db(per_db[str(src_db)], scratches, target, src_db, dst_db, batches[src_db])
        except OpsError as exc:
            after = {str(k): v for k, v in sorted(rd.keyspace(target).items())}
            self.report["target_keys_after"] = after
            raise OpsError("%s; the restore stopped after %d keys were written in whole batches (per db: %s); the target "
                           "now holds keys per db %s (before: %s). The safety backup %s holds the previous data"
                           % (exc.message, sum(d["restored"] for d in per_db.values()), per_db, after,
                              self.report["target_keys_before"], (self.report["safety_backup"] or {}).get("id")),
                           exception=exc.exception, restore=self.report)
        self.report["load_duration"] = round(time.monotonic() - clock, 3)
        restored = sum(d["restored"] for d in per_db.values())
        self.report.update(per_db=per_db, restored=restored, skipped=sum(d["skipped"] for d in per_db.values()),
                           failed=sum(d["failed"] for d in per_db.values()),
                           keys_per_second=round(restored / self.report["load_duration"]) if self.report["load_duration"] else None,
                           target_keys_after={str(k): v for k, v in sorted(rd.keyspace(target).items())})
        self.report["sample"] = self.compare_sample(loaded, target, plan, batches)
        if self.report["failed"] or self.report["sample"]["mismatched"]:
            raise OpsError("the restore wrote %d keys but %d failed and %d sampled keys differ (%s); per db: %s. The "
                           "safety backup %s holds the previous data" % (restored, self.report["failed"],
                                                                         self.report["sample"]["mismatched"],
                                                                         ", ".join(self.report["sample"]["examples"]), per_db,
                                                                         (self.report["safety_backup"] or {}).get("id")),
                           restore=self.report)
        return dict(changed=restored > 0 or bool(params["flush_first"]), restore=self.report, diff=diff)

    def key_batches(self, loaded, db):
        conn = loaded if db == 0 else _select(loaded, db)
        batch = []
        for key in conn.scan_iter(match=self.params["key_pattern"] or None, count=self.params["batch_size"]):
            batch.append(key)
            if len(batch) >= self.params["batch_size"]:
                yield batch
                batch = []
        if batch:
            yield batch

    def refuse_collisions(self, target, plan, batches):
        found = []
        for src_db, dst_db in plan:
            conn = _select(target, dst_db)
            for batch in batches[src_db]:
                pipe = conn.pipeline(transaction=False)
                for key in batch:
                    pipe.exists(key)
                found += ["db%d:%s" % (dst_db, key.decode(errors="replace")) for key, hit in zip(batch, pipe.execute()) if hit]
        if found:
            raise OpsError("%d keys of the backup already exist in the target (%s%s) and existing_keys is fail: nothing "
                           "was written. Use existing_keys: replace or skip, or flush_first: true"
                           % (len(found), ", ".join(found[:5]), ", ..." if len(found) > 5 else ""))

    def flush(self, target, db):
        """FLUSHDB, or SCAN + UNLINK where FLUSHDB is disabled or renamed."""
        redis = rd._redis_library()
        conn = _select(target, db)
        count = conn.dbsize()
        try:
            conn.flushdb()
        except redis.ResponseError:
            for batch in _chunks(conn.scan_iter(count=1000), 1000):
                conn.unlink(*batch)
        return count

    def copy_db(self, stats, scratches, target, src_db, dst_db, batches):
        """MIGRATE batches from several scratch servers at once: while one serializes, the target restores another's.

        ``stats`` counts what is written as it happens, so a failure half way reports exactly that.
        """
        dest = _select(target, dst_db)
        if self.policy == "skip" and not self.params["flush_first"]:
            batches = [self.without_existing(dest, batch, stats) for batch in batches]
        batches = [keys for keys in batches if keys]
        transport = self.params["transport"]
        if transport == "auto":
            transport = "dump" if self.params["tls"] else "migrate"
        sources = [_select(conn, src_db) for conn in scratches]
        if transport == "migrate":
            lock = threading.Lock()

            def work(index):
                for keys in batches[index::len(sources)]:
                    self.migrate(sources[index], dst_db, keys)
                    with lock:
                        stats["restored"] += len(keys)

            try:
                with ThreadPoolExecutor(max_workers=len(sources)) as pool:
                    list(pool.map(work, range(len(sources))))
                stats["transport"] = "migrate"
                return
            except OpsError:
                if self.params["transport"] == "migrate" or stats["restored"]:
                    raise
                transport = "dump"  # MIGRATE cannot reach the target from the scratch server (nothing was written)
        for keys in batches:
            done, failed = self.dump_restore(sources[0], dest, keys)
            stats["restored"] += done
            stats["failed"] += failed
        stats["transport"] = transport

    @staticmethod
    def without_existing(dest, batch, stats):
        pipe = dest.pipeline(transaction=False)
        for key in batch:
            pipe.exists(key)
        keys = [key for key, hit in zip(batch, pipe.execute()) if not hit]
        stats["skipped"] += len(batch) - len(keys)
        return keys

    def migrate(self, source, dst_db, keys):
        redis = rd._redis_library()
        args = ["MIGRATE", self.params["login_host"], self.params["login_port"], "", dst_db, 60000, "COPY"]
        if self.policy == "replace" or self.params["flush_first"]:
            args.append("REPLACE")
        if self.params["login_password"]:
            args += (["AUTH2", self.params["login_user"], self.params["login_password"]] if self.params["login_user"]
                     else ["AUTH", self.params["login_password"]])
        try:
            source.execute_command(*args, "KEYS", *keys)
        except redis.ResponseError as exc:
            raise OpsError("MIGRATE to the target failed: %s" % first_line(exc), exception=exc)

    def dump_restore(self, source, dest, keys):
        redis = rd._redis_library()
        pipe = source.pipeline(transaction=False)
        for key in keys:
            pipe.dump(key)
            pipe.pttl(key)
        replies = pipe.execute()
        pipe = dest.pipeline(transaction=False)
        replace = self.policy == "replace" or self.params["flush_first"]
        for index, key in enumerate(keys):
            payload, ttl = replies[2 * index], replies[2 * index + 1]
            if payload is not None:
                pipe.restore(key, max(ttl, 0), payload, replace=replace)
        results = pipe.execute(raise_on_error=False)
        failed = sum(1 for r in results if isinstance(r, redis.ResponseError))
        return len(results) - failed, failed

    def compare_sample(self, loaded, target, plan, batches):
        checked = mismatched = 0
        examples = []
        for src_db, dst_db in plan:
            keys = [key for batch in batches[src_db][:1] for key in batch][:SAMPLE]
            if not keys:
                continue
            left, right = _select(loaded, src_db).pipeline(False), _select(target, dst_db).pipeline(False)
            for pipe in (left, right):
                for key in keys:
                    pipe.dump(key)
                    pipe.pttl(key)
            a, b = left.execute(), right.execute()
            for index in range(len(keys)):
                checked += 1
                same_value = a[2 * index] == b[2 * index] or (
                    _content(_select(loaded, src_db), keys[index]) == _content(_select(target, dst_db), keys[index]))
                ttl_a, ttl_b = a[2 * index + 1], b[2 * index + 1]
                same_ttl = (ttl_a < 0 and ttl_b < 0) or (ttl_a >= 0 and ttl_b >= 0 and abs(ttl_a - ttl_b) <= 1500)
                if self.policy == "skip" and not self.params["flush_first"]:
                    continue  # a skipped key keeps the target's own value
                if not (same_value and same_ttl):
                    mismatched += 1
                    examples.append("db%d:%s (%s)" % (dst_db, keys[index].decode(errors="replace"),
                                                      "ttl %s vs %s" % (ttl_a, ttl_b) if same_value else "value"))
        return {"checked": checked, "mismatched": mismatched, "examples": examples[:5]}

    def safety_backup(self):
        return _backup.safety_backup(_redis_backup.RedisBackupJob, self.module, self.params, self.params["name"],
                                     self.report.get("id"), method="replication", rdb_path=None, bgsave_timeout=3600)

    # --- file ---------------------------------------------------------------------------------------

    def restore_file(self, target, rdb, expected):
        params = self.params
        if not (params["service"] or (params["stop_command"] and params["start_command"])):
            raise OpsError("mode file needs service (a systemd unit) or both stop_command and start_command")
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
        before = rd.keyspace(target)
        self.report.update(mode="file", data_dir=data_dir, aof=aof == "yes",
                           target_keys_before={str(k): v for k, v in sorted(before.items())})
        diff = {"before": "%s: %d keys\n" % (os.path.join(data_dir, dbfilename), sum(before.values())),
                "after": "%s: restored from %s\n" % (os.path.join(data_dir, dbfilename), self.report["id"])}
        if self.module.check_mode:
            return dict(changed=True, restore=self.report, diff=diff)
        self.report["safety_backup"] = self.safety_backup() if params["safety_backup"] and sum(before.values()) else None
        aof_dir = os.path.join(data_dir, rd.config_get(target, "appenddirname") or "appendonlydir")
        target.close()
        clock = time.monotonic()
        swap = FileSwap(params, data_dir, dbfilename, aof_dir, config_file, aof == "yes", self.stamp)
        swap.run(rdb, expected, self.report)
        self.report["load_duration"] = round(time.monotonic() - clock, 3)
        return dict(changed=True, restore=self.report, diff=diff)


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

    def run(self, rdb, expected, report):
        self.stop_server()
        try:
            self.put_in_place(rdb)
            conn = self.start_server()
            found = rd.keyspace(conn)
            report["target_keys_after"] = {str(k): v for k, v in sorted(found.items())}
            if expected is not None and found != {db: c for db, c in expected.items() if c}:
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
        deadline = time.monotonic() + 60
        while _port_open(self.params["login_host"], self.params["login_port"]):
            if time.monotonic() > deadline:
                raise OpsError("the Redis server still listens 60 s after the stop command")
            time.sleep(0.1)

    def put_in_place(self, rdb):
        for path in (self.rdb_path, self.aof_dir):
            if os.path.exists(path):
                os.rename(path, path + self.suffix)
                self.moved.append((path, path + self.suffix))
        staged = os.path.join(os.path.dirname(self.rdb_path), ".%s.restore" % os.path.basename(self.rdb_path))
        shutil.copyfile(rdb, staged)
        if self.moved and os.path.isfile(self.moved[0][1]):
            shutil.copystat(self.moved[0][1], staged)
            stat = os.stat(self.moved[0][1])
            os.chown(staged, stat.st_uid, stat.st_gid)
        os.rename(staged, self.rdb_path)
        art.fsync_dir(os.path.dirname(self.rdb_path))
        if self.aof_on:
            with open(self.config_file) as handle:
                self.config_text = handle.read()
            lines = [line for line in self.config_text.splitlines() if not line.strip().lower().startswith("appendonly ")]
            _write_keeping_mode(self.config_file, "\n".join(lines + ["appendonly no"]) + "\n")

    def start_server(self):
        self.command("start", self.params["start_command"] or ["systemctl", "start", self.params["service"]])
        return rd.wait_loaded(self.params, self.params["load_timeout"], "the restored RDB")

    def enable_aof(self, conn):
        conn.config_set("appendonly", "yes")
        deadline = time.monotonic() + self.params["load_timeout"]
        while True:
            persistence = conn.info("persistence")
            if persistence.get("aof_enabled") and not persistence.get("aof_rewrite_in_progress") \
                    and not persistence.get("aof_rewrite_scheduled"):
                if persistence.get("aof_last_bgrewrite_status") != "ok":
                    raise OpsError("re-enabling AOF failed: aof_last_bgrewrite_status=%s"
                                   % persistence.get("aof_last_bgrewrite_status"))
                break
            if time.monotonic() > deadline:
                raise OpsError("the AOF rewrite after the restore did not finish in %ss" % self.params["load_timeout"])
            time.sleep(0.05)
        _write_keeping_mode(self.config_file, self.config_text)  # appendonly yes again, as the operator wrote it

    def roll_back(self):
        try:
            self.command("stop", self.params["stop_command"] or ["systemctl", "stop", self.params["service"]])
        except OpsError:
            pass
        for original, aside in self.moved:
            _remove(original)
            os.rename(aside, original)
        if self.moved == [] and os.path.exists(self.rdb_path):
            _remove(self.rdb_path)
        if self.config_text is not None:
            _write_keeping_mode(self.config_file, self.config_text)
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


_CLIENTS = {}


def _select(conn, db):
    """A client on the same server as ``conn`` for another db, made once with the same settings."""
    if db == conn.connection_pool.connection_kwargs.get("db", 0):
        return conn
    key = (id(conn), db)
    if key not in _CLIENTS:
        _CLIENTS[key] = (conn, rd.client(conn.runbook_params, db=db))  # keep conn alive so its id stays unique
    return _CLIENTS[key][1]


def _content(conn, key):
    """A key's type and value, comparable across servers (DUMP of a hash or set depends on its internal order)."""
    kind = conn.type(key)
    readers = {b"string": conn.get, b"hash": conn.hgetall, b"list": lambda k: conn.lrange(k, 0, -1),
               b"set": lambda k: sorted(conn.smembers(k)), b"zset": lambda k: conn.zrange(k, 0, -1, withscores=True),
               b"stream": conn.xrange}
    return kind, readers.get(kind, conn.dump)(key)


def _chunks(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _write_keeping_mode(path, text):
    mode = os.stat(path).st_mode & 0o7777
    writer = art.AtomicWriter(path)
    writer.write(text.encode())
    writer.commit()
    os.chmod(path, mode)


def _port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
