# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: backup artifacts. Not a public API.

An artifact is a data file, a JSON manifest (written last) and a ``<file>.sha256`` sidecar (plus an
optional ``.md5``), stored under ``<kind>/<YYYY>/<MM>/<DD>/`` in a local directory and/or S3.
Data streams through compress -> encrypt -> hash -> file in one pass; the file appears under its final
name only after fsync and rename, so a crash never leaves something that looks like a finished backup.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import struct
import time
import zlib
from datetime import datetime, timedelta, timezone

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

CHUNK = 1024 * 1024
COMPRESSION_SUFFIX = {"zstd": ".zst", "gzip": ".gz", "none": ""}
ENCRYPTED_SUFFIX = ".enc"
MANIFEST_SUFFIX = ".manifest.json"
FORMAT_VERSION = 1


# --- compression -------------------------------------------------------------------------------

def compressor(kind, level=None):
    """An object with compress(bytes) -> bytes and flush() -> bytes."""
    if kind == "zstd":
        zstd = _zstandard()
        params = zstd.ZstdCompressionParameters.from_level(level or 3, threads=-1)
        return zstd.ZstdCompressor(compression_params=params).compressobj()
    if kind == "gzip":
        return zlib.compressobj(level if level is not None else 6, zlib.DEFLATED, 31)
    if kind == "none":
        return _Identity()
    raise OpsError("unknown compression %r: use zstd, gzip or none" % kind)


def decompressor(kind):
    """An object with decompress(bytes) -> bytes; ``eof`` tells whether the stream ended cleanly."""
    if kind == "zstd":
        return _ZstdReader(_zstandard().ZstdDecompressor().decompressobj())
    if kind == "gzip":
        return _GzipReader()
    if kind == "none":
        return _Identity()
    raise OpsError("unknown compression %r" % kind)


def _zstandard():
    try:
        import zstandard
    except ImportError as exc:
        raise OpsError("the Python library zstandard is needed for zstd compression: pip install zstandard "
                       "on the host, or use compression: gzip", exception=exc)
    return zstandard


class _Identity:
    eof = True

    def compress(self, data):
        return data

    def decompress(self, data):
        return data

    def flush(self):
        return b""


class _ZstdReader:
    def __init__(self, obj):
        self.obj = obj

    @property
    def eof(self):
        return self.obj.eof

    def decompress(self, data):
        return self.obj.decompress(data)


class _GzipReader:
    """Concatenated gzip members, as pigz and `cat a.gz b.gz` write them."""

    def __init__(self):
        self.obj = zlib.decompressobj(31)

    @property
    def eof(self):
        return self.obj.eof and not self.obj.unused_data

    def decompress(self, data):
        out = []
        while data:
            out.append(self.obj.decompress(data))
            data = self.obj.unused_data
            if self.obj.eof and data:
                self.obj = zlib.decompressobj(31)
            else:
                break
        return b"".join(out)


# --- encryption: AES-256-GCM in authenticated chunks -----------------------------------------------
# File: MAGIC | version(1) | kdf(1) | salt(16) | nonce prefix(8) | chunks
# chunk: length(4, big endian, of ciphertext+tag) | ciphertext+tag; nonce = prefix | counter(4);
# the associated data binds header, chunk index and a final flag, so reordering, truncation or
# a changed byte anywhere is detected.

MAGIC = b"RBOPSENC"
KDF_RAW, KDF_SCRYPT = 1, 2
HEADER_LEN = len(MAGIC) + 2 + 16 + 8


def _aesgcm():
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise OpsError("encryption was asked for but the Python library cryptography is missing on the host: "
                       "pip install cryptography; refusing to write or upload cleartext", exception=exc)
    return AESGCM


class EncryptionKey:
    """Key material from a key file (raw 32 bytes, or any text which is then stretched) or a passphrase."""

    def __init__(self, key_file=None, passphrase=None):
        if bool(key_file) == bool(passphrase):
            raise OpsError("encryption needs exactly one of key_file or passphrase")
        if key_file:
            try:
                with open(key_file, "rb") as handle:
                    material = handle.read()
            except OSError as exc:
                raise OpsError("cannot read encryption key_file %s: %s; refusing to continue without encryption"
                               % (key_file, exc.strerror), exception=exc)
            if not material.strip(b" \t\r\n"):
                raise OpsError("encryption key_file %s is empty" % key_file)
            self.material = material if len(material) == 32 else material.strip()
            self.kdf = KDF_RAW if len(self.material) == 32 else KDF_SCRYPT
        else:
            self.material = passphrase.encode("utf-8")
            self.kdf = KDF_SCRYPT
        self.key_id = hashlib.sha256(self._derive(b"runbook.ops key id", self.kdf)).hexdigest()[:16]

    def _derive(self, salt, kdf):
        if kdf == KDF_RAW:
            return hashlib.sha256(salt + self.material).digest() if salt == b"runbook.ops key id" else self.material
        return hashlib.scrypt(self.material, salt=salt, n=2 ** 14, r=8, p=1, dklen=32)

    def key_for(self, salt, kdf):
        return self._derive(salt, kdf)


class Encryptor:
    def __init__(self, key):
        self.key = key
        self.salt = os.urandom(16)
        self.prefix = os.urandom(8)
        self.header = MAGIC + bytes([FORMAT_VERSION, key.kdf]) + self.salt + self.prefix
        self.aead = _aesgcm()(key.key_for(self.salt, key.kdf))
        self.index = 0
        self.pending = bytearray()
        self.started = False

    def _seal(self, data, final):
        nonce = self.prefix + struct.pack(">I", self.index)
        aad = self.header + struct.pack(">IB", self.index, 1 if final else 0)
        sealed = self.aead.encrypt(nonce, bytes(data), aad)
        self.index += 1
        return struct.pack(">I", len(sealed)) + sealed

    def update(self, data):
        out = []
        if not self.started:
            out.append(self.header)
            self.started = True
        self.pending += data
        while len(self.pending) > CHUNK:
            out.append(self._seal(self.pending[:CHUNK], False))
            del self.pending[:CHUNK]
        return b"".join(out)

    def finalize(self):
        out = b"" if self.started else self.header
        self.started = True
        return out + self._seal(self.pending, True)


class Decryptor:
    """Feed ciphertext with update(); raises OpsError on a wrong key, a changed byte or truncation."""

    def __init__(self, key):
        self.key = key
        self.buffer = bytearray()
        self.aead = None
        self.header = None
        self.index = 0
        self.done = False

    def update(self, data):
        self.buffer += data
        out = []
        if self.aead is None:
            if len(self.buffer) < HEADER_LEN:
                return b""
            header = bytes(self.buffer[:HEADER_LEN])
            if not header.startswith(MAGIC):
                raise OpsError("this file is not encrypted by runbook.ops (no %r header)" % MAGIC.decode())
            kdf, salt, self.prefix = header[len(MAGIC) + 1], header[len(MAGIC) + 2:len(MAGIC) + 18], header[len(MAGIC) + 18:]
            self.header = header
            self.aead = _aesgcm()(self.key.key_for(salt, kdf))
            del self.buffer[:HEADER_LEN]
        while len(self.buffer) >= 4:
            (length,) = struct.unpack(">I", self.buffer[:4])
            if len(self.buffer) < 4 + length:
                break
            if self.done:
                raise OpsError("data after the final encrypted chunk: the file was changed")
            sealed = bytes(self.buffer[4:4 + length])
            del self.buffer[:4 + length]
            out.append(self._open(sealed))
        return b"".join(out)

    def _open(self, sealed):
        from cryptography.exceptions import InvalidTag

        nonce = self.prefix + struct.pack(">I", self.index)
        for final in (0, 1):
            try:
                plain = self.aead.decrypt(nonce, sealed, self.header + struct.pack(">IB", self.index, final))
            except InvalidTag:
                continue
            self.index += 1
            self.done = bool(final)
            return plain
        if self.index == 0:
            raise OpsError("cannot decrypt: wrong encryption key, or the file was changed")
        raise OpsError("encrypted chunk %d fails authentication: the file was changed or damaged" % self.index)

    def finalize(self):
        if self.aead is None:
            raise OpsError("the encrypted file is truncated: it ends inside its header")
        if self.buffer or not self.done:
            raise OpsError("the encrypted file is truncated: its final chunk is missing")
        return b""


# --- atomic files ---------------------------------------------------------------------------------

class AtomicWriter:
    """Write to ``.<name>.partial`` in the same directory, then fsync and rename; 0600 throughout.

    ``durable=False`` skips the fsyncs, for scratch files that are thrown away after the task.
    """

    def __init__(self, path, durable=True):
        self.path = path
        self.durable = durable
        directory, name = os.path.split(path)
        self.tmp = os.path.join(directory, ".%s.partial" % name)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.handle = os.fdopen(fd, "wb", buffering=0)

    def write(self, data):
        try:
            view = memoryview(data)
            while view:
                written = self.handle.write(view)
                view = view[written:]
        except OSError as exc:
            self.abort()
            raise _write_error(self.path, exc)

    def commit(self):
        try:
            if self.durable:
                os.fsync(self.handle.fileno())
            self.handle.close()
            os.rename(self.tmp, self.path)
            if self.durable:
                fsync_dir(os.path.dirname(self.path))
        except OSError as exc:
            self.abort()
            raise _write_error(self.path, exc)

    def abort(self):
        try:
            self.handle.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _write_error(path, exc):
    if exc.errno == errno.ENOSPC:
        return OpsError("no space left on the device of %s; the partial file was removed and earlier backups "
                        "are untouched: free space or point store.dir elsewhere" % path, exception=exc)
    return OpsError("cannot write %s: %s" % (path, exc.strerror or exc), exception=exc)


def fsync_dir(path):
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_small_file(path, text):
    writer = AtomicWriter(path)
    writer.write(text.encode("utf-8"))
    writer.commit()


# --- the pipeline ---------------------------------------------------------------------------------

class ArtifactSink:
    """compress -> encrypt -> hash (sha256, md5) -> atomic file, fed chunk by chunk."""

    def __init__(self, path, compression="zstd", level=None, key=None, md5=False):
        self.compress = compressor(compression, level)
        self.encryptor = Encryptor(key) if key else None
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5() if md5 else None
        self.raw_bytes = 0
        self.size = 0
        self.writer = AtomicWriter(path)

    def _emit(self, data):
        if self.encryptor:
            data = self.encryptor.update(data)
        self._out(data)

    def _out(self, data):
        if not data:
            return
        self.sha256.update(data)
        if self.md5:
            self.md5.update(data)
        self.size += len(data)
        self.writer.write(data)

    def write(self, data):
        self.raw_bytes += len(data)
        self._emit(self.compress.compress(data))

    def close(self):
        self._emit(self.compress.flush())
        if self.encryptor:
            self._out(self.encryptor.finalize())
        self.writer.commit()

    def abort(self):
        self.writer.abort()


def open_plain_reader(path, compression, key=None):
    """Yield the plaintext of an artifact chunk by chunk, checking authentication and stream ends."""
    decrypt = Decryptor(key) if key else None
    decompress = decompressor(compression)
    with open(path, "rb") as handle:
        while True:
            data = handle.read(CHUNK)
            if not data:
                break
            if decrypt:
                data = decrypt.update(data)
            if data:
                yield decompress.decompress(data)
    if decrypt:
        decrypt.finalize()
    if not decompress.eof:
        raise OpsError("the %s stream in %s ends early: the file is truncated" % (compression, path))


class ChunkReader(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks (for tarfile and subprocess feeding)."""

    def __init__(self, chunks):
        super().__init__()
        self.chunks = iter(chunks)
        self.buffer = b""

    def readable(self):
        return True

    def readinto(self, target):
        while not self.buffer:
            try:
                self.buffer = next(self.chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self.buffer))
        target[:size] = self.buffer[:size]
        self.buffer = self.buffer[size:]
        return size

    def drain(self):
        """Read what is left, so the iterator's own end-of-stream checks run."""
        for _data in self.chunks:
            pass


def file_digests(path, md5=False):
    sha = hashlib.sha256()
    other = hashlib.md5() if md5 else None
    with open(path, "rb") as handle:
        for data in iter(lambda: handle.read(CHUNK), b""):
            sha.update(data)
            if other:
                other.update(data)
    return sha.hexdigest(), (other.hexdigest() if other else None)


# --- layout, manifests, catalog ---------------------------------------------------------------------

def backup_id(database, when):
    """``<db>_<YYYYMMDD_HHMMSS>``, the platforms' naming."""
    return "%s_%s" % (database, when.strftime("%Y%m%d_%H%M%S"))


def relative_dir(kind, when):
    return "%s/%04d/%02d/%02d" % (kind, when.year, when.month, when.day)


def write_sidecars(path, sha256, md5=None):
    name = os.path.basename(path)
    write_small_file(path + ".sha256", "%s  %s\n" % (sha256, name))
    if md5:
        write_small_file(path + ".md5", "%s  %s\n" % (md5, name))


def read_sidecar(path, suffix=".sha256"):
    """The digest in ``<path><suffix>`` (``md5sum``/``sha256sum`` format), or None when there is none."""
    try:
        with open(path + suffix) as handle:
            text = handle.read().split()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OpsError("cannot read %s%s: %s" % (path, suffix, exc.strerror), exception=exc)
    if not text:
        raise OpsError("%s%s is empty: it should hold the file's checksum" % (path, suffix))
    return text[0].lower()


def manifest_path(data_path, artifact_id):
    return os.path.join(os.path.dirname(data_path), artifact_id + MANIFEST_SUFFIX)


RUNTIME_KEYS = ("manifest_path", "s3_manifest_key")


def write_manifest(path, manifest):
    stored = {k: v for k, v in manifest.items() if k not in RUNTIME_KEYS}
    write_small_file(path, json.dumps(stored, indent=2, sort_keys=True) + "\n")


def load_manifest(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise OpsError("cannot read manifest %s: %s" % (path, exc), exception=exc)


def catalog(store_dir, kind, database=None):
    """Manifests of finished backups in a local store, newest first."""
    root = os.path.join(store_dir, kind)
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(MANIFEST_SUFFIX) and not name.startswith("."):
                manifest = load_manifest(os.path.join(dirpath, name))
                if database is None or manifest.get("database") == database:
                    manifest["manifest_path"] = os.path.join(dirpath, name)
                    found.append(manifest)
    found.sort(key=lambda m: m.get("finished", ""), reverse=True)
    return found


def parse_age(text):
    """'90s', '30m', '6h', '7d', '2w' -> timedelta."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = str(text).strip().lower()
    try:
        if text[-1] in units:
            return timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return timedelta(seconds=float(text))
    except (ValueError, IndexError):
        raise OpsError("%r is not a duration: use a number with s, m, h, d or w, e.g. 6h" % text)


def utc_now():
    return datetime.now(timezone.utc)


def parse_time(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def format_time(when):
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- retention --------------------------------------------------------------------------------------

def select_retained(manifests, now, keep_last=None, keep_days=None, keep_daily=None, keep_weekly=None, keep_monthly=None):
    """Split manifests (any order) into (keep, prune) by the union of the rules.

    The newest verified backup is always kept. With no rule at all, nothing is pruned.
    """
    ordered = sorted(manifests, key=lambda m: m["finished"], reverse=True)
    if not any(v is not None for v in (keep_last, keep_days, keep_daily, keep_weekly, keep_monthly)):
        return ordered, []
    keep = set()
    if keep_last:
        keep.update(m["id"] for m in ordered[:keep_last])
    if keep_days is not None:
        cutoff = now - timedelta(days=keep_days)
        keep.update(m["id"] for m in ordered if parse_time(m["finished"]) >= cutoff)
    for count, bucket in ((keep_daily, "%Y-%m-%d"), (keep_weekly, "%G-W%V"), (keep_monthly, "%Y-%m")):
        if not count:
            continue
        seen = []
        for manifest in ordered:  # newest of each period
            period = parse_time(manifest["finished"]).strftime(bucket)
            if period not in seen:
                seen.append(period)
                if len(seen) > count:
                    break
                keep.add(manifest["id"])
    verified = [m for m in ordered if m.get("verified")]
    if verified:
        keep.add(verified[0]["id"])
    return [m for m in ordered if m["id"] in keep], [m for m in ordered if m["id"] not in keep]


def artifact_files(manifest):
    """Every local file of an artifact (sidecars, extra files, data), then the manifest."""
    data = manifest.get("path")
    files = []
    if data:
        directory = os.path.dirname(data)
        for name in list(manifest.get("extra_files") or []) + [os.path.basename(data)]:
            base = os.path.join(directory, name)
            files += [base + ".sha256", base + ".md5", base]
    return files + [manifest["manifest_path"]]


def delete_artifact(manifest):
    # The manifest goes first: without it nothing in the catalog points at a half-deleted artifact.
    for path in [manifest["manifest_path"]] + artifact_files(manifest)[:-1]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# --- locks ------------------------------------------------------------------------------------------

class StoreLock:
    """An flock per (kind, database) so two backups of one database never write at once."""

    def __init__(self, store_dir, kind, database, timeout=0):
        lock_dir = os.path.join(store_dir, ".locks")
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(lock_dir, "%s-%s.lock" % (kind, database))
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_text(self.path)
                    os.close(self.fd)
                    raise OpsError("another backup of this database is running (lock %s held by %s); waited %ss. "
                                   "Let it finish, or raise lock_timeout" % (self.path, holder or "another process", self.timeout))
                time.sleep(0.2)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, ("pid %d since %s" % (os.getpid(), format_time(utc_now()))).encode())
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _read_text(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


# --- options shared by every backup and restore module (doc fragment runbook.ops.artifact_store) ----

def artifact_argument_spec(for_restore=False):
    """store, encryption and (for backups) retention; restores take an optional store and no retention."""
    spec = dict(
        store=dict(type="dict", required=True, required_one_of=[("dir", "s3")], options=dict(
            dir=dict(type="path"),
            work_dir=dict(type="path"),
            s3=dict(type="dict", options=dict(
                bucket=dict(type="str", required=True),
                prefix=dict(type="str", default=""),
                endpoint_url=dict(type="str"),
                region=dict(type="str"),
                access_key=dict(type="str", no_log=True),
                secret_key=dict(type="str", no_log=True),
                sse=dict(type="str", choices=["AES256", "aws:kms"]),
                kms_key_id=dict(type="str"),
                storage_class=dict(type="str"),
            ), required_together=[("access_key", "secret_key")]),
        )),
        encryption=dict(type="dict", options=dict(
            key_file=dict(type="path", no_log=False),
            passphrase=dict(type="str", no_log=True),
        ), mutually_exclusive=[("key_file", "passphrase")], required_one_of=[("key_file", "passphrase")]),
        retention=dict(type="dict", options=dict(
            keep_last=dict(type="int"),
            keep_days=dict(type="int"),
            keep_daily=dict(type="int"),
            keep_weekly=dict(type="int"),
            keep_monthly=dict(type="int"),
        )),
    )
    if for_restore:
        spec["store"]["required"] = False
        del spec["retention"]
    return spec
