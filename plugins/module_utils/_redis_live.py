# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: copying keys from private Redis servers into a live target. Not a public API.

Keys move from the scratch servers straight to the target with MIGRATE ... COPY KEYS in batches, several
servers at once, so Python stays out of the data path; DUMP/RESTORE through this process is the fallback
when MIGRATE cannot reach the target (e.g. over TLS).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.runbook.ops.plugins.module_utils import _container
from ansible_collections.runbook.ops.plugins.module_utils import _redis as rd
from ansible_collections.runbook.ops.plugins.module_utils import _redis_rdb as rdb_reader
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

SAMPLE = 200
MIGRATE_TIMEOUT_MS = 60000


SCAN_COUNT = 10000  # keys a SCAN call looks at: fewer round trips than one per batch, each call still short


def key_batches(conn, pattern, size):
    batch = []
    for key in conn.scan_iter(match=pattern or None, count=max(size, SCAN_COUNT)):
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def existing(conn, keys):
    """The keys of ``keys`` that exist on ``conn``."""
    pipe = conn.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return [key for key, hit in zip(keys, pipe.execute()) if hit]


def flush(conn, pattern=None):
    """Empty the db of ``conn`` (FLUSHDB, or SCAN + UNLINK where FLUSHDB is renamed away), or only the keys
    matching ``pattern``. Returns how many keys were removed."""
    redis = rd.library()
    if pattern:
        removed = 0
        for batch in key_batches(conn, pattern, 1000):
            removed += conn.unlink(*batch)
        return removed
    count = conn.dbsize()
    try:
        conn.flushdb()
    except redis.ResponseError:
        for batch in key_batches(conn, None, 1000):
            conn.unlink(*batch)
    return count


class Copier:
    """Copies batches of one db into a target db, counting what is written as it happens (so a failure half way
    reports exactly that)."""

    def __init__(self, params, replace):
        self.params = params
        self.replace = replace

    def copy_db(self, stats, sources, target, src_db, dst_db, batches, skip_existing):
        dest = rd.for_db(target, dst_db)
        if skip_existing:
            kept = []
            for batch in batches:
                present = set(existing(dest, batch))
                stats["skipped"] += len(present)
                kept.append([key for key in batch if key not in present])
            batches = kept
        batches = [keys for keys in batches if keys]
        transport = self.params["transport"]
        if transport == "auto":  # MIGRATE from this host's scratch servers cannot reach a server in a container
            transport = "dump" if self.params["tls"] or _container.wanted(self.params) else "migrate"
        sources = [rd.for_db(conn, src_db) for conn in sources]
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

    def migrate(self, source, dst_db, keys):
        redis = rd.library()
        params = self.params
        args = ["MIGRATE", params["login_host"], params["login_port"], "", dst_db, MIGRATE_TIMEOUT_MS, "COPY"]
        if self.replace:
            args.append("REPLACE")
        if params["login_password"]:
            args += (["AUTH2", params["login_user"], params["login_password"]] if params["login_user"]
                     else ["AUTH", params["login_password"]])
        try:
            source.execute_command(*args, "KEYS", *keys)
        except redis.RedisError as exc:
            raise OpsError("MIGRATE to the target failed: %s" % rd.explain(exc, params), exception=exc)

    def dump_restore(self, source, dest, keys):
        redis = rd.library()
        try:
            return self._dump_restore(source, dest, keys)
        except redis.ResponseError:
            raise
        except redis.RedisError as exc:
            raise OpsError("copying keys to the target failed: %s" % rd.explain(exc, self.params), exception=exc)

    def _dump_restore(self, source, dest, keys):
        redis = rd.library()
        pipe = source.pipeline(transaction=False)
        for key in keys:
            pipe.dump(key)
            pipe.pttl(key)
        replies = pipe.execute()
        pipe = dest.pipeline(transaction=False)
        for index, key in enumerate(keys):
            payload, ttl = replies[2 * index], replies[2 * index + 1]
            if payload is not None:
                pipe.restore(key, max(ttl, 0), payload, replace=self.replace)
        results = pipe.execute(raise_on_error=False)
        failed = sum(1 for r in results if isinstance(r, redis.ResponseError))
        return len(results) - failed, failed


def compare_sample(loaded, target, plan, batches, skip_existing):
    """DUMP (or the value, where DUMP depends on internal order) and TTL of up to SAMPLE keys per db on both sides."""
    checked = mismatched = 0
    examples = []
    for src_db, dst_db in plan:
        keys = [key for batch in batches[src_db][:1] for key in batch][:SAMPLE]
        if not keys or skip_existing:  # a skipped key keeps the target's own value
            continue
        left, right = rd.for_db(loaded, src_db), rd.for_db(target, dst_db)
        a, b = _dump_ttl(left, keys), _dump_ttl(right, keys)
        for index, key in enumerate(keys):
            checked += 1
            same_value = a[2 * index] == b[2 * index] or _content(left, key) == _content(right, key)
            ttl_a, ttl_b = a[2 * index + 1], b[2 * index + 1]
            same_ttl = (ttl_a < 0 and ttl_b < 0) or (ttl_a >= 0 and ttl_b >= 0 and abs(ttl_a - ttl_b) <= 1500)
            if not (same_value and same_ttl):
                mismatched += 1
                examples.append("db%d:%s (%s)" % (dst_db, key.decode(errors="replace"),
                                                  "ttl %s vs %s" % (ttl_a, ttl_b) if same_value else "value"))
    return {"checked": checked, "mismatched": mismatched, "examples": examples[:5]}


def _dump_ttl(conn, keys):
    pipe = conn.pipeline(False)
    for key in keys:
        pipe.dump(key)
        pipe.pttl(key)
    return pipe.execute()


def _content(conn, key):
    """A key's type and value, comparable across servers (DUMP of a hash or set depends on its internal order)."""
    kind = conn.type(key)
    readers = {b"string": conn.get, b"hash": conn.hgetall, b"list": lambda k: conn.lrange(k, 0, -1),
               b"set": lambda k: sorted(conn.smembers(k)), b"zset": lambda k: conn.zrange(k, 0, -1, withscores=True),
               b"stream": conn.xrange}
    return kind, readers.get(kind, conn.dump)(key)


class Streamer:
    """Writes an RDB's keys into the target as RESTORE commands on one connection, window after window: Python
    parses and sends the next window while the target restores the one before (as ``redis-cli --pipe`` does),
    and no scratch server loads the data first. Replies are counted as they come, so a failure half way reports
    exactly what was written."""

    WINDOW = 2000  # commands a write carries at most
    WINDOW_BYTES = 4 << 20  # and bytes: a write must go out within the socket timeout
    IN_FLIGHT = 2  # windows sent and not yet answered

    def __init__(self, target, replace, crc):
        self.target = target
        self.replace = replace
        self.crc = crc
        self.pending = []  # per window sent: (commands in it, [(index, src db)] of its SELECTs)
        self.settled_db = None  # the src db the last window answered ended on
        self.buffer = b""
        self.errors = []

    def run(self, rdb, plan, per_db, sample, now_ms):
        """Stream every key not yet expired at ``now_ms`` from src db to plan[src db]; ``sample`` collects up to
        SAMPLE (key, expire, payload) a db for the check afterwards."""
        redis = rd.library()
        pool = self.target.connection_pool
        try:
            conn = pool.get_connection()
        except TypeError:  # redis-py < 5.3 wants a command name
            conn = pool.get_connection("RESTORE")
        try:
            self.sock = conn._sock  # redis-py has no raw write/read pair; its connection is set up (TLS, AUTH)
            self._run(rdb, plan, per_db, sample, now_ms)
        except (OSError, redis.RedisError) as exc:
            seen = redis.TimeoutError(str(exc)) if isinstance(exc, TimeoutError) else exc  # the raw socket's timeout
            unconfirmed = sum(size for size, _selects in self.pending)
            raise OpsError("streaming keys to the target failed: %s%s" % (
                rd.explain(seen, self.target.runbook_params),
                " (%d more commands were sent and not confirmed: the target may hold some of them)" % unconfirmed
                if unconfirmed else ""), exception=exc)
        finally:
            conn.disconnect()  # it may have another db selected
            pool.release(conn)

    def _run(self, rdb, plan, per_db, sample, now_ms):
        """Once a key, so it does as little as it can: the payload is built in place (sampled keys keep theirs)
        and a window notes only where its SELECTs are."""
        suffix = b"\r\n$6\r\nABSTTL\r\n$7\r\nREPLACE\r\n" if self.replace else b"\r\n$6\r\nABSTTL\r\n"
        header = b"*%d\r\n$7\r\nRESTORE\r\n$" % (6 if self.replace else 5)
        data, footer, type_bytes, crc, no_expiry = rdb.data, rdb.footer, rdb_reader.TYPE_BYTES, self.crc, rdb_reader.NO_EXPIRY
        commands, selects, db, size, room = [], [], None, 0, 0
        append = commands.append
        for src_db, key, expire_ms, kind, start, end in rdb.records():
            if expire_ms == no_expiry:
                ttl = b"0"
            elif expire_ms <= now_ms:
                per_db[str(src_db)]["expired"] += 1
                continue
            else:
                ttl = b"%d" % expire_ms
            if src_db != db:
                db = src_db
                dst = b"%d" % plan[db]
                selects.append((len(commands), db))
                append(b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%s\r\n" % (len(dst), dst))
                kept = sample.setdefault(db, [])
                room = SAMPLE - len(kept)
            body = type_bytes[kind] + data[start:end] + footer
            check = crc(body).to_bytes(8, "little")
            append(b"%s%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s%s%s" % (
                header, len(key), key, len(ttl), ttl, len(body) + 8, body, check, suffix))
            if room:
                kept.append((key, expire_ms, body + check))
                room -= 1
            size += end - start
            if len(commands) >= self.WINDOW or size >= self.WINDOW_BYTES:
                self.send(commands, selects, per_db)
                commands, selects, size = [], [], 0
                append = commands.append
        if commands:
            self.send(commands, selects, per_db)
        while self.pending:
            self.settle(per_db)

    def send(self, commands, selects, per_db):
        """``selects``: (index, src db) of the window's SELECTs."""
        self.sock.sendall(b"".join(commands))
        self.pending.append((len(commands), selects))
        while len(self.pending) > self.IN_FLIGHT:
            self.settle(per_db)

    def settle(self, per_db):
        """Read the replies of the oldest window (a line each: +OK, or -ERROR) and count them per src db."""
        size, selects = self.pending[0]
        while self.buffer.count(b"\r\n") < size:
            data = self.sock.recv(1 << 20)
            if not data:
                raise OSError("the target closed the connection")
            self.buffer += data
        parts = self.buffer.split(b"\r\n", size)
        self.buffer = parts[size]
        self.pending.pop(0)
        db, first = self.settled_db, 0  # keys before the window's first SELECT: the db the window before ended on
        for index, next_db in selects + [(size, None)]:
            replies = parts[first:index]
            confirmed = replies.count(b"+OK")
            if replies:
                per_db[str(db)]["restored"] += confirmed
                per_db[str(db)]["failed"] += len(replies) - confirmed
            if confirmed != len(replies):
                self.errors.extend(line[1:].decode(errors="replace") for line in replies if line != b"+OK")
                del self.errors[5:]
            if next_db is None:
                break
            if parts[index] != b"+OK":
                raise OpsError("the target refused SELECT: %s" % parts[index].decode(errors="replace"))
            db, first = next_db, index + 1
        self.settled_db = db


class SampleCheck:
    """compare_sample for a streamed restore: the sampled payloads are restored into an empty private server and
    compared with the target there, so values whose DUMP depends on internal order are compared by content. The
    server starts before the first write (no load: at once), so a host that cannot run it fails nothing half way."""

    def __init__(self, scratch_dir):
        self.server = rd.ScratchServer(scratch_dir, "sample", rdb_name="sample-starts-empty.rdb")
        self.server.launch()  # it starts while the file is checked
        self.conn = None

    def ready(self, timeout, file_version):
        """Up, and new enough for the file's payloads; OpsError otherwise (before the first write)."""
        self.conn = self.server.wait(timeout)
        version = self.conn.info("server").get("redis_version", "")
        if rdb_reader.version_of_server(version) < file_version:
            raise OpsError("the redis-server on this host (%s) is older than the backup's RDB version %d and cannot "
                           "check the restored keys: install a newer redis-server here; nothing was changed"
                           % (version, file_version))

    def compare(self, sample, target, plan):
        """Target and sample server compared key by key, the expiries shifted by the two clocks' difference."""
        redis = rd.library()
        try:
            skew_ms = _clock_ms(target) - _clock_ms(self.conn)
            for db, entries in sample.items():
                pipe = rd.for_db(self.conn, db).pipeline(transaction=False)
                for key, expire_ms, payload in entries:
                    pipe.restore(key, expire_ms - skew_ms if expire_ms > 0 else 0, payload, absttl=True)
                pipe.execute()
        except redis.RedisError as exc:
            raise OpsError("the private server could not take the sampled keys to compare them: %s" % exc, exception=exc)
        batches = {db: [[key for key, _expire, _payload in entries]] for db, entries in sample.items()}
        return compare_sample(self.conn, target, [(db, plan[db]) for db in sorted(sample)], batches, False)

    def stop(self):
        self.server.stop()


def _clock_ms(conn):
    seconds, micros = conn.time()
    return int(seconds) * 1000 + int(micros) // 1000
