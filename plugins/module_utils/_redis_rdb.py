# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: reading an RDB file key by key, so it can be streamed into a live server as RESTORE
commands with no intermediate server. Not a public API.

A key's value in an RDB is serialized exactly as a DUMP payload carries it; a payload is the type byte, that
serialization, the RDB version (2 bytes, little endian) and a CRC64 of all of it (Jones polynomial, as Redis
computes it). Values are never decoded here, only measured, so the parse costs a few steps a key. Anything
this reader does not know (module types, module aux data, pre-GA function records, newer types) raises
``Unsupported`` before anything is written; the caller then loads the file into a scratch server instead.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import signal
import struct
import time

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

RDB_EOF = 0xFF
OP_SELECTDB, OP_EXPIRETIME_MS, OP_EXPIRETIME, OP_RESIZEDB, OP_AUX = 0xFE, 0xFC, 0xFD, 0xFB, 0xFA
OP_FREQ, OP_IDLE, OP_MODULE_AUX, OP_FUNCTION_PRE_GA, OP_FUNCTION2, OP_SLOT_INFO = 0xF9, 0xF8, 0xF7, 0xF6, 0xF5, 0xF4

ONE_STRING = frozenset((0, 9, 10, 11, 12, 13, 16, 17, 20))  # a string, or a ziplist/listpack/intset blob
STRINGS = frozenset((1, 2, 14))  # a count, then that many strings
STREAMS = frozenset((15, 19, 21))
NAMES = {0: "string", 1: "list", 2: "set", 3: "zset", 4: "hash", 5: "zset", 9: "hash", 10: "list", 11: "set",
         12: "zset", 13: "hash", 14: "list", 15: "stream", 16: "hash", 17: "zset", 18: "list", 19: "stream",
         20: "set", 21: "stream"}
NO_EXPIRY = -1
EOF = -2  # _opcode's "db" at the end of the file
TYPE_BYTES = [bytes((kind,)) for kind in range(256)]
SPLIT_AT = 32 << 20  # files this big are checked on two cores
SYNC_SEARCH, SYNC_PROOF = 64 << 10, 64 << 10  # where the child looks for a record boundary, and how much must parse
MAX_VERSION = 12  # Redis 7.4; a newer file may hold types this reader does not know


def expired_by(expire_ms, now_ms):
    return expire_ms != NO_EXPIRY and expire_ms <= now_ms


def version_of_server(redis_version):
    """The newest RDB version a server of INFO's ``redis_version`` reads (DUMP payloads included); 0 below 5.0,
    where RESTORE has no ABSTTL."""
    try:
        major, minor = (int(part) for part in redis_version.split(".")[:2])
    except ValueError:
        return 0
    if major >= 8 or (major, minor) >= (7, 4):
        return 12
    if (major, minor) >= (7, 2):
        return 11
    if major == 7:
        return 10
    return 9 if major >= 5 else 0


class Unsupported(Exception):
    """The file holds something this reader does not stream; Redis itself has to load it."""


def crc64():
    """The CRC64 Redis puts on RDB files and DUMP payloads (anycrc's C implementation), or None without anycrc."""
    try:
        import anycrc
    except ImportError:
        return None
    return anycrc.Model("CRC64-REDIS").calc


class RdbFile:
    """An RDB held in memory (bytes or mmap): ``check()`` walks it once, ``records()`` yields its keys."""

    def __init__(self, data, what="the backup"):
        self.data = data
        self.what = what
        if bytes(data[:5]) != b"REDIS" or not bytes(data[5:9]).isdigit():
            raise OpsError("%s is not a Redis RDB file" % what)
        self.version = int(bytes(data[5:9]))
        if self.version > MAX_VERSION:
            raise Unsupported("RDB version %d is newer than this reader knows (%d)" % (self.version, MAX_VERSION))
        self.footer = struct.pack("<H", self.version)
        self.functions = 0  # function libraries seen (and not restored)
        self.checksummed = False  # whether check() compared the file's own CRC64
        self.halves = False  # whether check() counted the second half in a child process

    def check(self, crc):
        """Walk the whole file: keys per db (as its manifest counts them, expired or not) and the file's own
        CRC64. OpsError on damage, Unsupported on what only Redis can read."""
        counts = self._count_in_halves() if len(self.data) >= SPLIT_AT and hasattr(os, "fork") else self._count()[0]
        if self.version >= 5:
            stored = bytes(self.data[self.end:self.end + 8])
            if len(stored) != 8:
                raise OpsError("%s is truncated: its RDB checksum is missing" % self.what)
            self.checksummed = stored != b"\0" * 8  # zero: saved with rdbchecksum no
            if self.checksummed and crc(memoryview(self.data)[:self.end]).to_bytes(8, "little") != stored:
                raise OpsError("%s is damaged: its RDB checksum does not match its content" % self.what)
        return counts

    def _count(self, i=9, stop=None, db=0):
        """The structure walk of records() with nothing kept but a count a db (no key copied, nothing yielded), from
        offset ``i`` in ``db`` to the end, or to the first record that starts at or past ``stop``: (counts, that
        record's offset and its db, or None at the end)."""
        data, size, one_string = self.data, len(self.data), ONE_STRING
        stop = size + 1 if stop is None else stop
        count, counts = 0, {}
        try:
            while i < stop:
                op = data[i]
                i += 1
                if op >= OP_SLOT_INFO:
                    if op == RDB_EOF or op == OP_SELECTDB:
                        if count:
                            counts[db] = counts.get(db, 0) + count
                        count = 0
                    i, selected, _expire = self._opcode(op, data, i)
                    if selected is None:
                        continue
                    if selected is EOF:
                        return counts, None
                    db = selected
                    continue
                first = data[i]
                if first < 0x40:
                    i += 1 + first
                else:
                    i = _string(data, i)[1] if first == 0xC3 else _skip(data, i)  # an LZF key name must expand
                if op in one_string:
                    first = data[i]  # 6 and 14 bit lengths inline: most values
                    if first < 0x40:
                        i += 1 + first
                    elif first < 0x80:
                        i += 2 + (((first & 0x3F) << 8) | data[i + 1])
                    else:
                        i = _skip(data, i)
                else:
                    i = _skip_value(op, data, i)
                if i > size:
                    raise IndexError
                count += 1
        except (IndexError, ValueError):
            raise self._damaged(i)
        if count:
            counts[db] = counts.get(db, 0) + count
        return counts, (i, db)

    def _count_in_halves(self):
        """_count on two cores. A child process guesses a record boundary past the middle (a place from which 64 KiB
        parse as records) and walks from there to the end; this process walks from the start. Only when this walk
        lands exactly on the guess does the child's part count (the records from a true boundary are the file's,
        whatever the child found in them); otherwise this walk goes on alone. Keys the child saw before any SELECTDB
        are in the db this walk ended in."""
        middle = len(self.data) // 2
        reader, writer = os.pipe()
        signals = (signal.SIGTERM, signal.SIGINT)
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # no handler of ours may run in the child
        pid = os.fork()
        if pid == 0:  # the child: never returns, never runs the parent's cleanups
            status = 1
            try:
                for signum in signals:
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
                os.close(reader)
                with os.fdopen(writer, "wb") as pipe:
                    pickle.dump(self._second_half(middle, pipe), pipe)
                status = 0
            finally:
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        os.close(writer)
        theirs = None
        try:
            with os.fdopen(reader, "rb") as pipe:
                clock = time.monotonic()
                counts, where = self._count(stop=middle)
                if where is not None and self._child_started_at(pipe, max(1.0, time.monotonic() - clock)) == where[0]:
                    try:
                        theirs = pickle.load(pipe)
                    except (EOFError, pickle.UnpicklingError):
                        pass  # the child died: this walk does it all
        finally:
            if theirs is None:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if where is None:
            return counts
        offset, db = where
        if theirs is None:
            return _merged(counts, self._count(offset, db=db)[0])
        self.functions += theirs["functions"]
        self.halves = True
        if theirs["error"] is not None:
            kind, message = theirs["error"]
            raise (Unsupported if kind == "Unsupported" else OpsError)(message)
        self.end = theirs["end"]
        before_select = theirs["counts"].pop(None, 0)  # keys the child met before any SELECTDB: this walk's db
        return _merged(counts, {db: before_select}, theirs["counts"])

    @staticmethod
    def _child_started_at(pipe, patience):
        """The offset the child walks from, or None when it has not found one within ``patience`` seconds (as
        long as this walk took: a search that takes longer is lost in a value that looks like records)."""
        ready, _write, _error = select.select([pipe], [], [], patience)
        announced = pipe.read(8) if ready else b""
        return struct.unpack("<q", announced)[0] if len(announced) == 8 else None

    def _second_half(self, middle, pipe):
        """The child's walk: {counts, end, functions, error}, its start announced first (-1: none found)."""
        for start in range(middle, min(middle + SYNC_SEARCH, len(self.data))):
            try:
                self._count(start, stop=start + SYNC_PROOF, db=None)
            except (OpsError, Unsupported):
                continue
            pipe.write(struct.pack("<q", start))
            pipe.flush()
            outcome = {"counts": None, "end": None, "functions": 0, "error": None}
            self.functions = 0  # the child's own count, from this boundary on
            try:
                outcome["counts"] = self._count(start, db=None)[0]
            except (OpsError, Unsupported) as exc:
                outcome["error"] = (type(exc).__name__, str(exc))
            outcome.update(end=getattr(self, "end", None), functions=self.functions)
            return outcome
        pipe.write(struct.pack("<q", -1))
        return None

    def _damaged(self, i):
        return OpsError("%s is truncated or damaged: its RDB structure ends at byte %d of %d" % (self.what, i, len(self.data)))

    def _opcode(self, op, data, i):
        """An opcode's effect: (offset after it, db selected or None (EOF at the end), expiry in ms or None)."""
        if op == OP_EXPIRETIME_MS:
            return i + 8, None, int.from_bytes(data[i:i + 8], "little", signed=True)
        if op == OP_SELECTDB:
            db, i = _length(data, i)
            return i, db, None
        if op == RDB_EOF:
            self.end = i
            return i, EOF, None
        if op == OP_EXPIRETIME:
            return i + 4, None, int.from_bytes(data[i:i + 4], "little", signed=True) * 1000
        if op == OP_RESIZEDB:
            return _length(data, _length(data, i)[1])[1], None, None
        if op == OP_AUX:
            return _skip(data, _skip(data, i)), None, None
        if op == OP_FREQ:
            return i + 1, None, None
        if op == OP_IDLE:
            return _length(data, i)[1], None, None
        if op == OP_FUNCTION2:
            self.functions += 1  # a function library: a live restore copies keys, not functions
            return _skip(data, i), None, None
        if op == OP_SLOT_INFO:
            return _length(data, _length(data, _length(data, i)[1])[1])[1], None, None
        raise Unsupported("the file holds %s" % ("module data" if op == OP_MODULE_AUX else "opcode %d" % op))

    def records(self):
        """(db, key, expiry in ms or NO_EXPIRY, RDB type, value start, value end) for every key, in file order."""
        data = self.data
        size = len(data)
        i, db, expire = 9, 0, NO_EXPIRY
        try:
            while True:
                op = data[i]
                i += 1
                if op >= OP_SLOT_INFO:
                    i, selected, expiry = self._opcode(op, data, i)
                    if selected is EOF:
                        return
                    if selected is not None:
                        db = selected
                    if expiry is not None:
                        expire = expiry
                    continue
                first = data[i]  # the key: a short plain string is by far the most common
                if first < 0x40:
                    j = i + 1 + first
                    key = data[i + 1:j]
                else:
                    key, j = _string(data, i)
                if op in ONE_STRING:  # the value: one string, mostly of a 6 or 14 bit length
                    first = data[j]
                    if first < 0x40:
                        end = j + 1 + first
                    elif first < 0x80:
                        end = j + 2 + (((first & 0x3F) << 8) | data[j + 1])
                    else:
                        end = _skip(data, j)
                else:
                    end = _skip_value(op, data, j)
                if end > size:
                    raise IndexError
                yield db, key, expire, op, j, end
                i, expire = end, NO_EXPIRY
        except (IndexError, ValueError):
            raise self._damaged(i)


def _merged(*parts):
    counts = {}
    for part in parts:
        for db, count in part.items():
            counts[db] = counts.get(db, 0) + count
    return counts


def _length(data, i):
    first = data[i]
    kind = first >> 6
    if kind == 0:
        return first, i + 1
    if kind == 1:
        return ((first & 0x3F) << 8) | data[i + 1], i + 2
    if first == 0x80:
        return int.from_bytes(data[i + 1:i + 5], "big"), i + 5
    if first == 0x81:
        return int.from_bytes(data[i + 1:i + 9], "big"), i + 9
    raise ValueError("bad length byte %d" % first)


def _skip(data, i):
    """The offset after the string at ``i``."""
    first = data[i]
    if first < 0x40:
        return i + 1 + first
    if first < 0x80:
        return i + 2 + (((first & 0x3F) << 8) | data[i + 1])
    if first == 0xC0:
        return i + 2
    if first == 0xC1:
        return i + 3
    if first == 0xC2:
        return i + 5
    if first == 0xC3:  # LZF: compressed length, plain length, data
        compressed, i = _length(data, i + 1)
        return _length(data, i)[1] + compressed
    size, i = _length(data, i)
    return i + size


def _string(data, i):
    """The string at ``i`` as bytes (integers as Redis prints them, LZF expanded) and the offset after it."""
    first = data[i]
    if first < 0x40:
        return bytes(data[i + 1:i + 1 + first]), i + 1 + first
    if first == 0xC0:
        return b"%d" % struct.unpack_from("<b", data, i + 1)[0], i + 2
    if first == 0xC1:
        return b"%d" % struct.unpack_from("<h", data, i + 1)[0], i + 3
    if first == 0xC2:
        return b"%d" % struct.unpack_from("<i", data, i + 1)[0], i + 5
    if first == 0xC3:
        compressed, j = _length(data, i + 1)
        plain, j = _length(data, j)
        return lzf_decompress(bytes(data[j:j + compressed]), plain), j + compressed
    size, j = _length(data, i)
    if j + size > len(data):
        raise IndexError
    return bytes(data[j:j + size]), j + size


def _skip_value(kind, data, i):
    if kind in ONE_STRING:
        return _skip(data, i)
    if kind in STRINGS:
        count, i = _length(data, i)
        for _item in range(count):
            first = data[i]
            i = i + 1 + first if first < 0x40 else _skip(data, i)  # short plain strings inline: most members
        return i
    if kind == 4:
        count, i = _length(data, i)
        for _item in range(2 * count):
            i = _skip(data, i)
        return i
    if kind == 18:
        count, i = _length(data, i)
        for _item in range(count):
            i = _skip(data, i + 1 if data[i] < 0x40 else _length(data, i)[1])  # container kind, then the node
        return i
    if kind == 5:
        count, i = _length(data, i)
        for _item in range(count):
            i = _skip(data, i) + 8
        return i
    if kind == 3:
        count, i = _length(data, i)
        for _item in range(count):
            i = _skip(data, i)
            i += 1 + (data[i] if data[i] < 253 else 0)  # a score as text; 253-255 are nan, inf, -inf
        return i
    if kind in STREAMS:
        return _skip_stream(kind, data, i)
    raise Unsupported("the file holds a key of RDB type %d (%s)" % (kind, "a module type" if kind in (6, 7) else "unknown"))


def _skip_lengths(data, i, count):
    for _item in range(count):
        i = _length(data, i)[1]
    return i


def _skip_stream(kind, data, i):
    nodes, i = _length(data, i)
    for _item in range(nodes):
        i = _skip(data, _skip(data, i))  # node key, listpack
    i = _skip_lengths(data, i, 3 if kind == 15 else 8)  # length, last id (, first id, max deleted id, entries added)
    groups, i = _length(data, i)
    for _item in range(groups):
        i = _skip_lengths(data, _skip(data, i), 2 if kind == 15 else 3)  # name, last id (, entries read)
        pending, i = _length(data, i)
        for _item in range(pending):
            i = _length(data, i + 16 + 8)[1]  # id, delivery time, delivery count
        consumers, i = _length(data, i)
        for _item in range(consumers):
            i = _skip(data, i) + (16 if kind == 21 else 8)  # name, seen time (, active time)
            owned, i = _length(data, i)
            i += 16 * owned
    return i


def lzf_decompress(data, size):
    """LZF as Redis writes it (for key names only: values are passed through as they are)."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            out += data[i:i + ctrl + 1]
            i += ctrl + 1
        else:
            length = ctrl >> 5
            if length == 7:
                length += data[i]
                i += 1
            ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
            i += 1
            if ref < 0:
                raise ValueError("bad LZF back reference")
            for _item in range(length + 2):
                out.append(out[ref])
                ref += 1
    if len(out) != size:
        raise ValueError("LZF length mismatch")
    return bytes(out)


def mapped(handle):
    """A read-only mapping of an open file, its pages read in at once where the OS can (Linux's MAP_POPULATE:
    much faster than a page fault every few kilobytes of a walk)."""
    size = os.fstat(handle.fileno()).st_size
    if not hasattr(mmap, "MAP_POPULATE") or size > os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # a file this big is paged in as it is walked
    return mmap.mmap(handle.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)


def counts_match(path, expected, found, now_ms):
    """True when the keys per db a server ``found`` after loading the RDB at ``path`` are the ``expected`` ones
    (the manifest's), but for keys that expired since the backup: a load skips those, as it should."""
    expected = {db: count for db, count in expected.items() if count}
    if found == expected:
        return True
    expired = {}
    try:
        with open(path, "rb") as handle:
            with mapped(handle) as data:
                for db, _key, expire_ms, _kind, _start, _end in RdbFile(data, path).records():
                    if expired_by(expire_ms, now_ms):
                        expired[db] = expired.get(db, 0) + 1
    except (Unsupported, OpsError, OSError, ValueError):
        return False
    return all(expected.get(db, 0) - expired.get(db, 0) <= found.get(db, 0) <= expected.get(db, 0)
               for db in set(expected) | set(found))
