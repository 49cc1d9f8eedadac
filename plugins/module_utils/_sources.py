# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: reading a backup to restore, whoever made it. Not a public API.

A source is a local file or directory, an ``s3://`` object, or ``latest`` from the catalog. Its
plaintext is read in one streaming pass that checks the checksum (manifest, ``.sha256`` or ``.md5``
sidecar) and peels the layers it finds by their magic bytes: ``openssl enc`` (pbkdf2 or the older
EVP_BytesToKey derivation), runbook.ops AES-256-GCM, gzip (also pigz's concatenated members), zstd.
"""

from __future__ import annotations

import hashlib
import os
import zlib

from ansible_collections.runbook.ops.plugins.module_utils import _artifacts as art
from ansible_collections.runbook.ops.plugins.module_utils import _backup
from ansible_collections.runbook.ops.plugins.module_utils import _s3
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

OPENSSL_MAGIC = b"Salted__"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PEEK = 4096


class Source:
    """A backup to read: ``path`` (file or directory), its manifest when known, and the checksums to expect."""

    def __init__(self, location, path, manifest=None):
        self.location = location
        self.path = path
        self.manifest = manifest
        self.is_directory = os.path.isdir(path)
        self.expected = {}
        self.checksum_origin = None
        self.layers = []
        self.plain_bytes = 0
        self.sha256 = None
        if manifest:
            self.expected["sha256"] = manifest["sha256"]
            self.checksum_origin = "manifest"
        elif not self.is_directory:
            for algorithm in ("sha256", "md5"):
                digest = art.read_sidecar(path, "." + algorithm)
                if digest:
                    self.expected[algorithm] = digest
            if self.expected:
                self.checksum_origin = "sidecar"
        if manifest and manifest.get("md5"):
            self.expected["md5"] = manifest["md5"]

    @property
    def id(self):
        if self.manifest:
            return self.manifest["id"]
        name = os.path.basename(self.path.rstrip("/"))
        return name.split(".", 1)[0]

    def check_checksum(self):
        """Hash the file and compare with what the manifest or sidecars say; returns the sha256."""
        digests = {algorithm: hashlib.new(algorithm) for algorithm in set(self.expected) | {"sha256"}}
        with open(self.path, "rb") as handle:
            for data in iter(lambda: handle.read(art.CHUNK), b""):
                for digest in digests.values():
                    digest.update(data)
        self._compare(digests)
        return digests["sha256"].hexdigest()

    def _compare(self, digests):
        for algorithm, expected in self.expected.items():
            actual = digests[algorithm].hexdigest()
            if actual != expected:
                raise OpsError("checksum mismatch for %s: %s is %s but the %s says %s; the file is corrupt, truncated or "
                               "was modified; refusing to restore it" % (self.location, algorithm, actual,
                                                                         self.checksum_origin, expected))

    def plaintext(self, secrets):
        """Yield the decoded content; raises OpsError on a checksum mismatch, a wrong key or truncation."""
        digests = {algorithm: hashlib.new(algorithm) for algorithm in set(self.expected) | {"sha256"}}
        self.layers = []
        self.plain_bytes = 0
        try:
            for data in decode(self._raw(digests), secrets, self.layers):
                self.plain_bytes += len(data)
                yield data
        except OpsError:
            if self.expected:
                self.check_checksum()  # a damaged file is best explained by its checksum
            raise
        self._compare(digests)
        self.sha256 = digests["sha256"].hexdigest()

    def _raw(self, digests):
        with open(self.path, "rb") as handle:
            for data in iter(lambda: handle.read(art.CHUNK), b""):
                for digest in digests.values():
                    digest.update(data)
                yield data


class Secrets:
    """Key material for the layers a source may have."""

    def __init__(self, encryption=None, openssl_iterations=10000):
        encryption = encryption or {}
        self.encryption = encryption
        self.openssl_iterations = openssl_iterations
        self._key = None

    def key(self):
        if not self.encryption:
            raise OpsError("the backup is encrypted by runbook.ops: give encryption.key_file or encryption.passphrase")
        if self._key is None:
            self._key = art.EncryptionKey(**self.encryption)
        return self._key

    def passphrase(self):
        """The openssl enc passphrase: encryption.passphrase, or the first line of encryption.key_file (-pass file:)."""
        if self.encryption.get("passphrase"):
            return self.encryption["passphrase"].encode("utf-8")
        if self.encryption.get("key_file"):
            try:
                with open(self.encryption["key_file"], "rb") as handle:
                    return handle.read().split(b"\n", 1)[0].rstrip(b"\r")
            except OSError as exc:
                raise OpsError("cannot read encryption key_file %s: %s" % (self.encryption["key_file"], exc.strerror),
                               exception=exc)
        raise OpsError("the backup was encrypted with openssl enc: give its passphrase as encryption.passphrase")


# --- resolving src ----------------------------------------------------------------------------------

def resolve(src, store, kind, subject, scratch_dir):
    """A Source for ``src``: a local path, an s3:// uri (downloaded to scratch_dir) or ``latest``."""
    store = store or {}
    if src == "latest":
        return _latest(store, kind, subject, scratch_dir)
    if src.startswith("s3://"):
        return _download(src, store.get("s3") or {}, scratch_dir)
    path = os.path.abspath(os.path.expanduser(src))
    if not os.path.exists(path):
        raise OpsError("the backup %s does not exist on this host" % src)
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "toc.dat")):
        raise OpsError("%s is a directory without toc.dat: not a pg_dump directory-format backup" % src)
    return Source(src, path, None if os.path.isdir(path) else find_manifest(path))


def find_manifest(path):
    """The runbook.ops manifest of a data file, when it sits beside it."""
    directory, name = os.path.split(path)
    candidate = os.path.join(directory, name.split(".", 1)[0] + art.MANIFEST_SUFFIX)
    if os.path.exists(candidate):
        manifest = art.load_manifest(candidate)
        if manifest.get("file") == name:
            manifest["manifest_path"] = candidate
            return manifest
    return None


def _latest(store, kind, subject, scratch_dir):
    if not store.get("dir") and not store.get("s3"):
        raise OpsError("src: latest needs store.dir or store.s3 to find backups in")

    def usable(manifests):
        return [m for m in manifests if m.get("verified") and (m.get("labels") or {}).get("purpose") != _backup.SAFETY_PURPOSE]

    candidates = usable(_backup.catalog(store, kind, subject))
    if not candidates and store.get("dir") and store.get("s3"):
        candidates = usable(_s3.catalog(store["s3"], kind, subject))  # a new host: only the offsite copies exist
    if not candidates:
        where = store.get("dir") or _s3.uri(store["s3"], kind + "/")
        raise OpsError("no verified backup of %r in %s: take one with the backup module or give src as a path" % (subject, where))
    manifest = candidates[0]
    if manifest.get("path") and os.path.exists(manifest["path"]):
        return Source("latest (%s)" % manifest["id"], manifest["path"], manifest)
    if not manifest.get("s3_uri"):
        raise OpsError("the newest backup %s has no local file and no S3 copy" % manifest["id"])
    source = _download(manifest["s3_uri"], store.get("s3") or {}, scratch_dir, manifest)
    source.location = "latest (%s)" % manifest["id"]
    return source


def _download(uri, s3, scratch_dir, manifest=None):
    bucket, name = _s3.parse_uri(uri)
    local = os.path.join(scratch_dir, name.rsplit("/", 1)[-1])
    _s3.download(s3, bucket, name, local)
    for suffix in (".sha256", ".md5"):
        if _s3.exists(s3, bucket, name + suffix):
            _s3.download(s3, bucket, name + suffix, local + suffix)
    if manifest is None:
        manifest_name = "%s/%s%s" % (name.rsplit("/", 1)[0], local.rsplit("/", 1)[-1].split(".", 1)[0], art.MANIFEST_SUFFIX)
        if "/" in name and _s3.exists(s3, bucket, manifest_name):
            _s3.download(s3, bucket, manifest_name, os.path.join(scratch_dir, "manifest.json"))
            manifest = art.load_manifest(os.path.join(scratch_dir, "manifest.json"))
            if manifest.get("file") != os.path.basename(local):
                manifest = None
    return Source(uri, local, manifest)


# --- decoding ---------------------------------------------------------------------------------------

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


def decode(chunks, secrets, layers):
    """Peel encryption and compression layers off ``chunks``, recording each in ``layers``."""
    stream = Peekable(chunks)
    head = stream.peek(PEEK)
    if not head:
        raise OpsError("the backup file is empty")
    if head.startswith(OPENSSL_MAGIC):
        layers.append("openssl-aes-256-cbc")
        return decode(_openssl_decrypt(stream, secrets, layers), secrets, layers)
    if head.startswith(art.MAGIC):
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
    """What decoded content is: 'custom' (pg_dump -Fc), 'tar', 'text', or None."""
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
    decryptor = art.Decryptor(key)
    for data in stream:
        plain = decryptor.update(data)
        if plain:
            yield plain
    decryptor.finalize()


def _decompress(stream, kind):
    """Multi-member gzip (pigz) and multi-frame zstd, failing when the last member ends early."""
    if kind == "gzip":
        def new():
            return zlib.decompressobj(31)
    else:
        zstd = art._zstandard()

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
    except (zlib.error, Exception) as exc:
        if isinstance(exc, OpsError):
            raise
        raise OpsError("the %s data is damaged: %s" % (kind, exc), exception=exc)
    if not obj.eof:
        raise OpsError("the %s stream ends early: the file is truncated" % kind)


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
        if content_kind(probe) or probe.startswith((GZIP_MAGIC, ZSTD_MAGIC, art.MAGIC)):
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
