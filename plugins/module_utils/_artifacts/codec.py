# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: compression, encryption and decoding of backup streams. Not a public API.

Writers compress -> encrypt; every reader (the writer's own verification, restores, validation) peels the layers
it finds by their magic bytes with ``decode``: ``openssl enc`` (pbkdf2 or the older EVP_BytesToKey derivation),
runbook.ops AES-256-GCM, gzip (also pigz's concatenated members) and zstd (also multi-frame).
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import struct
import threading
import zlib

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, warn

CHUNK = 1024 * 1024
READ_AHEAD = 8
COMPRESSION_SUFFIX = {"zstd": ".zst", "gzip": ".gz", "none": ""}
ENCRYPTED_SUFFIX = ".enc"
LEVELS = {"zstd": (1, 22), "gzip": (1, 9)}
ZSTD_DEFAULT_LEVEL = 1  # keeps up with the dump tools on two cores; level 3 costs 2-3x the CPU for a few per cent
OPENSSL_MAGIC = b"Salted__"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PEEK = 4096


# --- compression ---------------------------------------------------------------------------------

def check_level(kind, level):
    """OpsError unless ``level`` is valid for ``kind`` (None means the default)."""
    if level is None:
        return
    if kind == "none":
        raise OpsError("compression_level %s was given with compression: none; drop it or pick zstd or gzip" % level)
    low, high = LEVELS[kind]
    if not low <= level <= high:
        raise OpsError("compression_level %s is out of range for %s: use %d-%d" % (level, kind, low, high))


def compressor(kind, level=None):
    """An object with compress(bytes) -> bytes and flush() -> bytes."""
    check_level(kind, level)
    if kind == "zstd":
        zstd = zstandard()
        params = zstd.ZstdCompressionParameters.from_level(level or ZSTD_DEFAULT_LEVEL, threads=-1)
        return zstd.ZstdCompressor(compression_params=params).compressobj()
    if kind == "gzip":
        return zlib.compressobj(level if level is not None else 6, zlib.DEFLATED, 31)
    if kind == "none":
        return _Identity()
    raise OpsError("unknown compression %r: use zstd, gzip or none" % kind)


def zstandard():
    try:
        import zstandard as module
    except ImportError as exc:
        raise OpsError("the Python library zstandard is needed for zstd: pip install zstandard (or apt install "
                       "python3-zstandard) on the host, or use compression: gzip", exception=exc)
    return module


class _Identity:
    def compress(self, data):
        return data

    def flush(self):
        return b""


def _decompress(stream, kind):
    """Multi-member gzip (pigz) and multi-frame zstd, failing when the last member ends early."""
    if kind == "gzip":
        def new():
            return zlib.decompressobj(31)
    else:
        zstd = zstandard()

        def new():
            return zstd.ZstdDecompressor().decompressobj()
    obj = new()
    try:
        for data in stream:
            while data:
                out = obj.decompress(data)
                if out:
                    yield out
                data = obj.unused_data if obj.eof else b""
                if data:
                    obj = new()
    except OpsError:
        raise
    except Exception as exc:  # zlib.error, zstd.ZstdError
        raise OpsError("the %s data is damaged: %s" % (kind, exc), exception=exc)
    if not obj.eof:
        raise OpsError("the %s stream ends early: the file is truncated" % kind)


# --- encryption: AES-256-GCM in authenticated chunks -----------------------------------------------
# File: MAGIC | version(1) | kdf(1) | salt(16) | nonce prefix(8) | chunks
# chunk: length(4, big endian, of ciphertext+tag) | ciphertext+tag; nonce = prefix | counter(4);
# the associated data binds header, chunk index and a final flag, so reordering, truncation or
# a changed byte anywhere is detected.

MAGIC = b"RBOPSENC"
FORMAT_VERSION = 1
KDF_RAW, KDF_SCRYPT = 1, 2
HEADER_LEN = len(MAGIC) + 2 + 16 + 8
KEY_ID_SALT = b"runbook.ops key id"


def _aesgcm():
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise OpsError("encryption was asked for but the Python library cryptography is missing on the host: "
                       "pip install cryptography (or apt install python3-cryptography); refusing to write or "
                       "upload cleartext", exception=exc)
    return AESGCM


def read_key_file(path, what="encryption key_file"):
    """The bytes of a key file; warns when group or others may read it."""
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            material = handle.read()
    except OSError as exc:
        raise OpsError("cannot read %s %s: %s; refusing to continue without encryption"
                       % (what, path, exc.strerror), exception=exc)
    if mode & 0o077:
        warn("%s %s can be read by group or others (mode %04o): anyone who can read it can decrypt every backup; "
             "chmod 600 it" % (what, path, mode & 0o777))
    if not material.strip(b" \t\r\n"):
        raise OpsError("%s %s is empty" % (what, path))
    return material


class EncryptionKey:
    """Key material from a key file (raw 32 bytes, or any text which is then stretched) or a passphrase."""

    def __init__(self, key_file=None, passphrase=None):
        if bool(key_file) == bool(passphrase):
            raise OpsError("encryption needs exactly one of key_file or passphrase")
        if key_file:
            material = read_key_file(key_file)
            self.material = material if len(material) == 32 else material.strip()
            self.kdf = KDF_RAW if len(self.material) == 32 else KDF_SCRYPT
        else:
            self.material = passphrase.encode("utf-8")
            self.kdf = KDF_SCRYPT
        self.key_id = hashlib.sha256(self._derive(KEY_ID_SALT, self.kdf)).hexdigest()[:16]

    def _derive(self, salt, kdf):
        if kdf == KDF_RAW:
            return hashlib.sha256(salt + self.material).digest() if salt == KEY_ID_SALT else self.material
        return hashlib.scrypt(self.material, salt=salt, n=2 ** 14, r=8, p=1, dklen=32)

    def key_for(self, salt, kdf):
        return self._derive(salt, kdf)


class Encryptor:
    def __init__(self, key):
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
        self.prefix = None
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


class Secrets:
    """Key material for the layers a source may have: our AES-GCM key, or an openssl enc passphrase."""

    def __init__(self, encryption=None, openssl_iterations=10000, key=None):
        self.encryption = encryption or {}
        self.openssl_iterations = openssl_iterations
        self._key = key

    def key(self):
        if self._key is None:
            if not self.encryption:
                raise OpsError("the backup is encrypted by runbook.ops: give encryption.key_file or encryption.passphrase")
            self._key = EncryptionKey(**self.encryption)
        return self._key

    def passphrase(self):
        """The openssl enc passphrase: encryption.passphrase, or the first line of encryption.key_file (-pass file:)."""
        if self.encryption.get("passphrase"):
            return self.encryption["passphrase"].encode("utf-8")
        if self.encryption.get("key_file"):
            return read_key_file(self.encryption["key_file"]).split(b"\n", 1)[0].rstrip(b"\r")
        raise OpsError("the backup was encrypted with openssl enc: give its passphrase as encryption.passphrase")


# --- the write pipeline ----------------------------------------------------------------------------

class EncodingSink:
    """compress -> encrypt -> hash (sha256, md5) -> ``out.write``, fed chunk by chunk; ``check`` (a StreamCheck)
    sees the raw and the encoded bytes."""

    def __init__(self, out, compression="zstd", level=None, key=None, md5=False, check=None):
        self.out = out
        self.check = check
        self.compress = compressor(compression, level)
        self.encryptor = Encryptor(key) if key else None
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5() if md5 else None
        self.raw_bytes = 0
        self.size = 0

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
        self.out.write(data)
        if self.check:
            self.check.encoded(data)

    def write(self, data):
        self.raw_bytes += len(data)
        if self.check:
            self.check.raw(data)
        self._emit(self.compress.compress(data))

    def finish(self):
        self._emit(self.compress.flush())
        if self.encryptor:
            self._out(self.encryptor.finalize())


def expected_layers(compression, encrypted):
    """The layers ``decode`` reports for an artifact written with these settings."""
    return (["aes-256-gcm"] if encrypted else []) + ([compression] if compression != "none" else [])


# --- the one decode path -----------------------------------------------------------------------------

class Peekable:
    """Chunks of bytes whose first bytes can be looked at before they are consumed."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.head = b""

    def peek(self, size):
        while len(self.head) < size:
            try:
                self.head += next(self.chunks)
            except StopIteration:
                break
        return self.head[:size]

    def __iter__(self):
        if self.head:
            head, self.head = self.head, b""
            yield head
        yield from self.chunks


def read_chunks(path, digests=()):
    """A file's bytes chunk by chunk, feeding every hashlib object in ``digests`` on the way.

    A thread reads and hashes ahead of the consumer (both release the GIL), so the checksum of a restore's
    source costs no time beside its decoding; closing the generator early stops the thread.
    """
    handle = open(path, "rb")
    ahead = queue.Queue(READ_AHEAD)
    stop = threading.Event()

    def offer(item):
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def read():
        try:
            for data in iter(lambda: handle.read(CHUNK), b""):
                for digest in digests:
                    digest.update(data)
                if not offer(data):
                    return
            offer(None)
        except BaseException as exc:  # handed to the consumer
            offer(exc)

    reader = threading.Thread(target=read, name="read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            data = ahead.get()
            if data is None:
                return
            if isinstance(data, BaseException):
                raise data
            yield data
    finally:
        stop.set()
        reader.join()
        handle.close()


def decode(chunks, secrets, layers):
    """Peel encryption and compression layers off ``chunks``, recording each in ``layers``."""
    stream = Peekable(chunks)
    head = stream.peek(PEEK)
    if not head:
        raise OpsError("the backup file is empty")
    if head.startswith(OPENSSL_MAGIC):
        layers.append("openssl-aes-256-cbc")
        return decode(_openssl_decrypt(stream, secrets, layers), secrets, layers)
    if head.startswith(MAGIC):
        layers.append("aes-256-gcm")
        return decode(_decrypt(stream, secrets.key()), secrets, layers)
    if head.startswith(GZIP_MAGIC):
        layers.append("gzip")
        return decode(_decompress(stream, "gzip"), secrets, layers)
    if head.startswith(ZSTD_MAGIC):
        layers.append("zstd")
        return decode(_decompress(stream, "zstd"), secrets, layers)
    return stream


def content_kind(head):
    """What decoded content is: 'custom' (pg_dump -Fc), 'tar', 'rdb', 'text', or None."""
    if head.startswith(b"PGDMP"):
        return "custom"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"REDIS"):
        return "rdb"
    sample = head[:PEEK]
    if sample and b"\x00" not in sample:
        text = sample.decode("utf-8", errors="replace")
        printable = sum(1 for c in text if c.isprintable() or c in "\r\n\t")
        if printable >= 0.97 * len(text):
            return "text"
    return None


def _decrypt(stream, key):
    decryptor = Decryptor(key)
    for data in stream:
        plain = decryptor.update(data)
        if plain:
            yield plain
    decryptor.finalize()


def _openssl_keys(passphrase, salt, iterations):
    """(name, key, iv) candidates: pbkdf2 (openssl 1.1.1+ with -pbkdf2), then EVP_BytesToKey with sha256 and md5."""
    derived = hashlib.pbkdf2_hmac("sha256", passphrase, salt, iterations, 48)
    yield "pbkdf2-sha256 (%d iterations)" % iterations, derived[:32], derived[32:]
    for digest in ("sha256", "md5"):
        material, block = b"", b""
        while len(material) < 48:
            block = hashlib.new(digest, block + passphrase + salt).digest()
            material += block
        yield "EVP_BytesToKey-%s" % digest, material[:32], material[32:48]


def _openssl_decrypt(stream, secrets, layers):
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    head = stream.peek(16 + PEEK)
    if len(head) < 32:
        raise OpsError("the openssl enc file is truncated: it has no encrypted data")
    salt, body = head[8:16], head[16:16 + (len(head) - 16) // 16 * 16]
    passphrase = secrets.passphrase()
    chosen = None
    for name, key, iv in _openssl_keys(passphrase, salt, secrets.openssl_iterations):
        probe = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor().update(body)
        if content_kind(probe) or probe.startswith((GZIP_MAGIC, ZSTD_MAGIC, MAGIC)):
            chosen = (name, key, iv)
            break
    if chosen is None:
        raise OpsError("cannot decrypt the openssl enc file: wrong passphrase (tried pbkdf2 with %d iterations and the "
                       "older EVP_BytesToKey derivation with sha256 and md5)" % secrets.openssl_iterations)
    layers[-1] = "openssl-aes-256-cbc/%s" % chosen[0]
    decryptor = Cipher(algorithms.AES(chosen[1]), modes.CBC(chosen[2])).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    first = True
    for data in stream:
        if first:
            data, first = data[16:], False
        out = unpadder.update(decryptor.update(data))
        if out:
            yield out
    try:
        tail = unpadder.update(decryptor.finalize()) + unpadder.finalize()
    except ValueError as exc:
        raise OpsError("the openssl enc file is truncated or damaged: its last block does not decrypt", exception=exc)
    if tail:
        yield tail


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
