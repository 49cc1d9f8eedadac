# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: reading PostgreSQL backups - pg_dump archives, tars of directory dumps, SQL text.
Not a public API.

``prepare`` reads the whole source once (checksum, layers, format checks) before anything on the server
changes, and leaves a file or directory for pg_restore to read in parallel when asked to.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import time

from ansible_collections.runbook.ops.plugins.module_utils import _postgres as pg
from ansible_collections.runbook.ops.plugins.module_utils import _process as proc
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import atomic, codec
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

SQL_END = b"PostgreSQL database dump complete"
DROP_START = ("DROP ", "ALTER ", "SELECT pg_catalog.lo_unlink")
DROP_CONSTRAINT = re.compile(r"^ALTER TABLE IF EXISTS ONLY (.+) DROP CONSTRAINT IF EXISTS (.+);$")
DROP_INDEX = re.compile(r"^DROP INDEX IF EXISTS (.+);$")


class Prepared:
    """What a restore reads from: a file or directory pg_restore takes, or the source streamed again."""

    def __init__(self, source):
        self.source = source
        self.format = None
        self.file = None
        self.directory = None
        self.toc_entries = None
        self.read_duration = None

    @property
    def location(self):
        return self.directory or self.file


def count_tar_members(chunks):
    """Read a tar stream to its end; the number of data files besides toc.dat."""
    reader = codec.ChunkReader(chunks)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            names = [member.name for member in tar]
    except tarfile.TarError as exc:
        raise OpsError("the directory-format archive is damaged: %s" % exc, exception=exc)
    reader.drain()
    if "toc.dat" not in names:
        raise OpsError("the directory-format archive has no toc.dat: it is not a pg_dump directory")
    return len(names) - 1


def check_sql_end(chunks, what):
    tail = b""
    for data in chunks:
        tail = (tail + data)[-4096:]
    if SQL_END not in tail:
        raise OpsError("verification failed: the SQL dump in %s does not end with pg_dump's completion line" % what)


COPY_START = re.compile(rb"^COPY .+ FROM stdin;\s*$")
RESTRICT = re.compile(rb"^\\(un)?restrict [A-Za-z0-9]+\s*$")


def sql_lines(chunks):
    """(line, in_copy_data) for every line of SQL text; COPY ... FROM stdin data rows are flagged, and ``\\.`` ends them."""
    pending = b""
    in_copy = False
    for data in chunks:
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if in_copy:
                if line == b"\\.":
                    in_copy = False
                    yield line, False
                    continue
                yield line, True
                continue
            yield line, False
            if COPY_START.match(line):
                in_copy = True
    if pending:
        yield pending, in_copy


def check_plain(chunks):
    """A plain SQL dump that restores into one database: complete, not made with --create or by pg_dumpall, and with no
    psql meta-command pg_dump does not write itself (``\\! rm -rf /`` in a backup would run on this host)."""
    tail = b""
    number = 0
    for line, in_copy in sql_lines(chunks):
        number += 1
        if not in_copy:
            stripped = line.lstrip()
            if stripped.startswith(b"\\connect ") or line.startswith(b"CREATE DATABASE "):
                raise OpsError("the SQL dump creates or connects to databases itself (made with pg_dump --create "
                               "or pg_dumpall); restore it with psql by hand or dump without --create")
            if stripped.startswith(b"\\") and not RESTRICT.match(stripped) and stripped != b"\\.":
                raise OpsError("the SQL dump holds the psql meta-command %r on line %d, which pg_dump never writes: it "
                               "would run on this host, not in the database; refusing to restore it"
                               % (stripped[:40].decode("utf-8", errors="replace"), number))
        tail = (tail + line + b"\n")[-4096:]
    if b"dump complete" not in tail:
        raise OpsError("the SQL dump does not end with pg_dump's completion line: it is truncated; refusing to restore it")


def restricted(chunks, key):
    """The SQL text with psql's ``\\restrict`` (no meta-command runs after it) first and the file's own
    ``\\restrict``/``\\unrestrict`` lines left out, so nothing in the file can leave restricted mode."""
    yield b"\\restrict %s\n" % key.encode()
    for line, in_copy in sql_lines(chunks):
        if not in_copy and RESTRICT.match(line):
            continue
        yield line + b"\n"


def psql_restricts(version_text):
    """Whether this psql knows \\restrict (13.22, 14.19, 15.14, 16.10, 17.6 and later)."""
    match = re.search(r"(\d+)\.(\d+)", version_text or "")
    if not match:
        return False
    major, minor = int(match.group(1)), int(match.group(2))
    return major >= 18 or minor >= {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}.get(major, 10 ** 6)


def check_space(directory, needed):
    if not needed:
        return
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    if free < needed * 1.05:
        raise OpsError("restoring in parallel needs %d MB of scratch space in %s for the decoded archive, %d MB are "
                       "free: free space, point store.work_dir elsewhere, or use jobs: 1 (streams, needs no space)"
                       % (needed // 10 ** 6, directory, free // 10 ** 6))


def prepare(source, secrets, scratch_root, materialize, pg_restore, env):
    """One pass over the whole source; a Prepared to restore from. OpsError on anything that is not restorable."""
    clock = time.monotonic()
    prepared = Prepared(source)
    if source.is_directory:
        prepared.format, prepared.directory = "directory", source.path
        prepared.toc_entries = pg.count_toc(proc.run_tool([pg_restore, "--list", source.path], env,
                                                          "pg_restore --list rejects %s:" % source.location))
    else:
        stream = codec.Peekable(source.plaintext(secrets))
        kind = codec.content_kind(stream.peek(codec.PEEK))
        if kind == "custom":
            prepared.format = "custom"
            _read_custom(source, stream, prepared, materialize, scratch_root, pg_restore, env)
        elif kind == "tar":
            prepared.format = "directory"
            _read_tar(stream, prepared, materialize, scratch_root, pg_restore, env)
        elif kind == "text":
            prepared.format = "plain"
            check_plain(stream)
        else:
            for _data in stream:  # a checksum mismatch explains more than "not a backup"
                pass
            raise OpsError("%s is not a PostgreSQL backup runbook.ops can read (after %s it is neither a pg_dump archive, "
                           "a tar of a directory-format dump, nor SQL text); refusing to restore it"
                           % (source.location, ", ".join(source.layers) or "no decoding"))
    prepared.read_duration = round(time.monotonic() - clock, 3)
    return prepared


def _read_custom(source, stream, prepared, materialize, scratch_root, pg_restore, env):
    if not source.layers:
        # A bare archive file is restorable as it is: one read checks its checksum and table of contents.
        prepared.toc_entries = pg.list_archive(pg_restore, stream, env)
        prepared.file = source.path
    elif materialize:
        check_space(scratch_root, (source.manifest or {}).get("raw_size"))
        prepared.file = os.path.join(scratch_root, "archive.dump")
        writer = atomic.AtomicWriter(prepared.file, durable=False)
        try:
            for data in stream:
                writer.write(data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        prepared.toc_entries = pg.count_toc(proc.run_tool([pg_restore, "--list", prepared.file], env,
                                                          "pg_restore --list rejects the archive:"))
    else:
        prepared.toc_entries = pg.list_archive(pg_restore, stream, env)


def _read_tar(stream, prepared, materialize, scratch_root, pg_restore, env):
    reader = codec.ChunkReader(stream)
    target = os.path.join(scratch_root, "directory")
    os.mkdir(target, 0o700)
    names = []
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                if not member.isfile() or "/" in member.name or member.name.startswith("."):
                    raise OpsError("unexpected entry %r in the tar archive: a pg_dump tar or directory archive "
                                   "holds plain files only" % member.name)
                names.append(member.name)
                handle = tar.extractfile(member)
                if materialize:
                    with open(os.path.join(target, member.name), "wb") as out:
                        shutil.copyfileobj(handle, out, codec.CHUNK)
                else:
                    while handle.read(codec.CHUNK):
                        pass
    except tarfile.TarError as exc:
        raise OpsError("the tar archive is damaged: %s" % exc, exception=exc)
    reader.drain()
    if "toc.dat" not in names:
        raise OpsError("the tar archive has no toc.dat: it is not a pg_dump tar or directory-format dump")
    if materialize:
        prepared.directory = target
        prepared.toc_entries = pg.count_toc(proc.run_tool([pg_restore, "--list", target], env,
                                                          "pg_restore --list rejects the archive:"))
    else:
        prepared.toc_entries = len(names) - 1


def drop_statements(chunks):
    """The statements of the clean phase of a ``pg_restore --clean --if-exists`` script, one per line.

    pg_restore prints them after its header and before the first object's comment or ``SET``; reading stops
    there, so the (large) rest of the script is never read.
    """
    drops = []
    pending = b""
    for data in chunks:
        pending += data
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8")
            if not drops and not line.startswith(DROP_START):
                continue
            if line.startswith(("--", "SET ")):
                return drops
            if line:
                drops.append(line)
    return drops


def without_inherited(drops, inherited_constraints, partition_indexes):
    """Drops minus those of constraints and indexes a partition inherits from its parent: PostgreSQL refuses them
    ("cannot drop inherited constraint") and drops them itself with the parent's. Returns (kept, skipped)."""
    kept, skipped = [], []
    for line in drops:
        constraint, index = DROP_CONSTRAINT.match(line), DROP_INDEX.match(line)
        if (constraint and constraint.groups() in inherited_constraints) or (index and index.group(1) in partition_indexes):
            skipped.append(line)
        else:
            kept.append(line)
    return kept, skipped
