# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: reading a backup to restore, whoever made it. Not a public API.

A source is a local file or directory, an ``s3://`` object, or ``latest`` from the catalog. Its
plaintext is read in one streaming pass that checks the checksum (manifest, ``.sha256`` or ``.md5``
sidecar) and peels its layers with the same ``codec.decode`` the writers verify with.
"""

from __future__ import annotations

import hashlib
import os
import stat

from ansible_collections.runbook.ops.plugins.module_utils import _s3
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import codec, manifest as mf, store as st
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

SAFETY_PURPOSE = "pre-restore"


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
                digest = mf.read_sidecar(path, "." + algorithm)
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
        for _data in codec.read_chunks(self.path, digests.values()):
            pass
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
            for data in codec.decode(codec.read_chunks(self.path, digests.values()), secrets, self.layers):
                self.plain_bytes += len(data)
                yield data
        except OpsError:
            if self.expected:
                self.check_checksum()  # a damaged file is best explained by its checksum
            raise
        self._compare(digests)
        self.sha256 = digests["sha256"].hexdigest()


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
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "toc.dat")):
            raise OpsError("%s is a directory without toc.dat: not a pg_dump directory-format backup" % src)
        return Source(src, path, None)
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OpsError("%s is not a regular file (a FIFO, a device or a socket): a backup is a file or a pg_dump "
                       "directory; refusing to read it" % src)
    return Source(src, path, find_manifest(path))


def find_manifest(path):
    """The runbook.ops manifest of a data file, when it sits beside it (ids may hold dots: ``my.db_20260126_...``)."""
    directory, name = os.path.split(path)
    for index in [i for i, char in enumerate(name) if char == "."]:
        candidate = os.path.join(directory, name[:index] + mf.MANIFEST_SUFFIX)
        if os.path.exists(candidate):
            manifest = mf.load_manifest(candidate)
            if manifest.get("file") == name:
                return mf.attach(manifest, candidate)
    return None


def _latest(store, kind, subject, scratch_dir):
    if not store.get("dir") and not store.get("s3"):
        raise OpsError("src: latest needs store.dir or store.s3 to find backups in")

    def usable(manifests):
        return [m for m in manifests if m.get("verified") and (m.get("labels") or {}).get("purpose") != SAFETY_PURPOSE]

    candidates = usable(st.catalog(store, kind, subject))
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
        manifest_name = "%s/%s%s" % (name.rsplit("/", 1)[0], local.rsplit("/", 1)[-1].split(".", 1)[0], mf.MANIFEST_SUFFIX)
        if "/" in name and _s3.exists(s3, bucket, manifest_name):
            _s3.download(s3, bucket, manifest_name, os.path.join(scratch_dir, "manifest.json"))
            manifest = mf.load_manifest(os.path.join(scratch_dir, "manifest.json"))
            if manifest.get("file") != os.path.basename(local):
                manifest = None
    return Source(uri, local, manifest)
