# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: the workflow every backup module shares. Not a public API.

A subclass of BackupJob says how to read its source (``facts``), how to stream it (``produce``),
which extra files belong to the artifact (``extras``) and how to check what was written
(``inspect``). The job does the rest the same way for every kind: validate every option, skip when a
recent verified backup exists, check mode (which writes nothing), the lock, the atomic pipeline,
sidecars, the manifest last, upload (local first, then S3, or S3 only through a staging directory),
uploads that failed earlier, retention, and removing partial files that killed runs left behind.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

from ansible_collections.runbook.ops.plugins.module_utils import _s3
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import atomic, codec, lock, stream_check
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import manifest as mf, retention as rt, store as st
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, warn
from ansible_collections.runbook.ops.plugins.module_utils._module import merge_specs
from ansible_collections.runbook.ops.plugins.module_utils._sources import SAFETY_PURPOSE

RESULT_KEYS = ("id", "path", "s3_uri", "size", "raw_size", "sha256", "duration", "verified")
CLOCK_SKEW = timedelta(minutes=5)


def backup_argspec_ex():
    """Options of every backup module (doc fragments runbook.ops.artifact_store and runbook.ops.backup)."""
    return merge_specs(st.store_argspec_ex(), {"argspec": dict(
        compression=dict(type="str", default="zstd", choices=["zstd", "gzip", "none"]),
        compression_level=dict(type="int"),
        md5_sidecar=dict(type="bool", default=False),
        verify=dict(type="bool", default=True),
        skip_if_newer_than=dict(type="str"),
        lock_timeout=dict(type="int", default=0),
        labels=dict(type="dict", default={}),
    )})


def hide_passphrase(module, params):
    """Keep the encryption passphrase out of every result and log line, wherever it would appear."""
    passphrase = (params.get("encryption") or {}).get("passphrase")
    if passphrase:
        module.no_log_values.add(passphrase)


def validate_backup_options(params, subject, subject_option):
    """Every check that needs no server, before anything is read or written."""
    mf.validate_subject(subject, subject_option)
    st.validate(params["store"], params.get("retention"))
    codec.check_level(params["compression"], params["compression_level"])
    if params["skip_if_newer_than"]:
        mf.parse_age(params["skip_if_newer_than"])
    if params["lock_timeout"] < 0:
        raise OpsError("lock_timeout is %d: give 0 (do not wait) or more seconds" % params["lock_timeout"])
    for name, value in (params.get("labels") or {}).items():
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            raise OpsError("labels.%s is a %s: labels are strings or numbers" % (name, type(value).__name__))


def safety_backup(job_class, module, params, subject, restoring, **overrides):
    """Back up what a restore is about to replace: zstd, verified, labelled so that src: latest skips it."""
    store = params.get("store") or {}
    if not store.get("dir") and not store.get("s3"):
        raise OpsError("safety_backup needs a store (store.dir or store.s3) to keep the current data in; give one, "
                       "or set safety_backup: false if you have another copy")
    job_params = dict(params, compression="zstd", compression_level=None, md5_sidecar=False, verify=True,
                      skip_if_newer_than=None, lock_timeout=60, retention=None,
                      labels={"purpose": SAFETY_PURPOSE, "restoring": restoring}, **overrides)
    backup = job_class(module, job_params, subject).run()["backup"]
    return {k: backup[k] for k in ("id", "path", "s3_uri", "size", "duration")}


def _read_through(chunks):
    """The inspection of an extra file (the globals SQL): decoding it to the end, compared, is the check."""
    for _data in chunks:
        pass
    return {}


def upload_artifact(s3, manifest, keep_local=True):
    """Copy an artifact's files to S3, the manifest last; records s3_uri in the manifest."""
    directory = os.path.dirname(manifest["manifest_path"])
    relative = manifest["relative_dir"]
    files = []
    for name in [manifest["file"]] + list(manifest.get("extra_files") or []):
        for suffix in ("", ".sha256", ".md5"):
            if os.path.exists(os.path.join(directory, name + suffix)):
                files.append((os.path.join(directory, name + suffix), "%s/%s%s" % (relative, name, suffix)))
    manifest["s3_uri"] = _s3.upload(s3, files)[0]
    stored = dict(manifest, path=manifest["path"] if keep_local else None)
    mf.write_manifest(manifest["manifest_path"], stored)
    name = os.path.basename(manifest["manifest_path"])
    _s3.upload(s3, [(manifest["manifest_path"], "%s/%s" % (relative, name))])
    manifest["s3_manifest_key"] = _s3.key(s3, "%s/%s" % (relative, name))


def result_view(manifest, extra_keys=()):
    view = {k: manifest.get(k) for k in RESULT_KEYS + tuple(extra_keys)}
    view["kind"] = manifest.get("kind")
    view["manifest"] = manifest.get("manifest_path") if manifest.get("path") else manifest.get("s3_manifest_key")
    duration = manifest.get("duration") or 0
    view["throughput_mb_s"] = round((manifest.get("raw_size") or 0) / 1e6 / duration, 1) if duration else None
    return view


class BackupJob:
    kind = None
    extension = None
    result_keys = ()
    subject_option = "name"

    def __init__(self, module, params, subject):
        self.module = module
        self.params = params
        self.subject = subject
        self.store = params["store"]
        self.key = None
        self.source = {}

    # --- what a subclass provides -------------------------------------------------------------

    def validate(self):
        """Checks of the subclass's own options that need no server; raise OpsError."""

    def facts(self):
        """Manifest fields about the source, read before anything is written (also in check mode)."""
        raise NotImplementedError

    def produce(self, sink):
        """Stream the backup into ``sink.write``; returns extra manifest fields (tool versions ...)."""
        raise NotImplementedError

    def extras(self):
        """(name suffix, produce function) pairs for extra files of the artifact."""
        return []

    def inspect(self, chunks, manifest):
        """Check the decoded content of a written artifact; returns manifest fields. Raise OpsError to reject it."""
        for _data in chunks:
            pass
        return {}

    # --- the workflow ---------------------------------------------------------------------------

    def data_name(self, artifact_id, suffix=None):
        name = artifact_id + (suffix or self.extension) + codec.COMPRESSION_SUFFIX[self.params["compression"]]
        return name + (codec.ENCRYPTED_SUFFIX if self.key else "")

    def run(self):
        """Returns the module result (changed, backup, pruned, pruned_s3, uploaded_pending ...)."""
        validate_backup_options(self.params, self.subject, self.subject_option)
        self.validate()
        hide_passphrase(self.module, self.params)
        encryption = self.params.get("encryption")
        self.key = codec.EncryptionKey(**encryption) if encryption else None
        self.source = self.facts()
        existing = st.catalog(self.store, self.kind, self.subject)
        recent = self.recent(existing)
        if recent:
            return dict(changed=False, backup=result_view(recent, self.result_keys), pruned=[], pruned_s3=[],
                        uploaded_pending=[], skipped_reason="backup %s finished at %s, within %s" % (
                            recent["id"], recent["finished"], self.params["skip_if_newer_than"]))
        if self.module.check_mode:
            return self.plan(existing)
        lock_dir = self.store.get("dir") or st.work_base(self.store)
        with lock.StoreLock(lock_dir, self.kind, self.subject, self.params["lock_timeout"]):
            if self.store.get("dir"):  # partial files of this subject: their writer held this lock and is gone
                atomic.sweep_partials(os.path.join(self.store["dir"], self.kind), mf.id_pattern(self.subject) + r"\..+")
            manifest, uploaded_pending = self.write_and_upload()
            pruned, pruned_s3 = self.prune()
        return dict(changed=True, backup=result_view(manifest, self.result_keys), pruned=pruned, pruned_s3=pruned_s3,
                    uploaded_pending=uploaded_pending,
                    diff={"before": "".join("%s\n" % i for i in sorted(set(pruned + pruned_s3))),
                          "after": "%s\n" % (manifest.get("path") or manifest.get("s3_uri"))})

    def recent(self, existing):
        if not self.params["skip_if_newer_than"]:
            return None
        window = mf.parse_age(self.params["skip_if_newer_than"])
        now = mf.utc_now()
        for manifest in existing:
            age = now - mf.parse_time(manifest["finished"])
            if age < -CLOCK_SKEW:
                warn("backup %s says it finished at %s, in the future: a clock is wrong or the manifest was edited; "
                     "it does not count for skip_if_newer_than" % (manifest["id"], manifest["finished"]))
                continue
            if manifest.get("verified") and age < window:
                return manifest
        return None

    def plan(self, existing):
        now = mf.utc_now()
        retention = self.params["retention"] or {}
        pruned = [m["id"] for m in rt.select_retained(existing, now, **retention)[1]] if self.store.get("dir") else []
        pruned_s3 = []
        if self.store.get("s3") and retention:
            remote = _s3.catalog(self.store["s3"], self.kind, self.subject)
            pruned_s3 = [m["id"] for m in rt.select_retained(remote, now, **retention)[1]]
        name = self.data_name(mf.backup_id(self.subject, now))
        relative = "%s/%s" % (mf.relative_dir(self.kind, now), name)
        planned = os.path.join(self.store["dir"], relative) if self.store.get("dir") else _s3.uri(self.store["s3"], relative)
        planned_view = dict({k: None for k in RESULT_KEYS}, kind=self.kind, path=planned if self.store.get("dir") else None,
                            s3_uri=_s3.uri(self.store["s3"], relative) if self.store.get("s3") else None)
        planned_view.update({k: self.source.get(k) for k in self.result_keys if k in self.source})
        return dict(changed=True, backup=planned_view, pruned=pruned, pruned_s3=pruned_s3, uploaded_pending=[],
                    diff={"before": "".join("%s\n" % i for i in sorted(set(pruned + pruned_s3))), "after": "%s\n" % planned})

    def write_and_upload(self):
        s3 = self.store.get("s3")
        if self.store.get("dir"):
            manifest = self.write_artifact(self.store["dir"])
            uploaded_pending = []
            if s3:
                for pending in [m for m in mf.catalog(self.store["dir"], self.kind, self.subject) if not m.get("s3_uri")]:
                    upload_artifact(s3, pending)
                    if pending["id"] == manifest["id"]:
                        manifest.update(s3_uri=pending["s3_uri"], s3_manifest_key=pending["s3_manifest_key"])
                    else:
                        uploaded_pending.append(pending["id"])
            return manifest, uploaded_pending
        with st.scratch(self.store, "staging-") as staging:
            manifest = self.write_artifact(staging)
            upload_artifact(s3, manifest, keep_local=False)
        manifest["path"] = None
        return manifest, []

    def write_artifact(self, root):
        started = mf.utc_now()
        relative = mf.relative_dir(self.kind, started)
        directory = os.path.join(root, relative)
        atomic.make_dirs(directory)
        artifact_id = mf.artifact_id_for(directory, self.subject, started)
        path = os.path.join(directory, self.data_name(artifact_id))
        written = []
        try:
            clock = time.monotonic()
            view = dict(self.source, file=os.path.basename(path))
            sink, produced, check = self.stream(path, self.produce, lambda chunks: self.inspect(chunks, view))
            written.append(path)
            duration = time.monotonic() - clock
            manifest = self.describe(artifact_id, relative, path, sink, produced, started, duration)
            mf.write_sidecars(path, manifest["sha256"], manifest["md5"])
            written += [path + ".sha256", path + ".md5"]
            for suffix, produce in self.extras():
                extra_path = os.path.join(directory, self.data_name(artifact_id, suffix))
                extra_sink, extra_fields, _check = self.stream(extra_path, produce, _read_through)
                written += [extra_path, extra_path + ".sha256", extra_path + ".md5"]
                extra_md5 = extra_sink.md5.hexdigest() if extra_sink.md5 else None
                mf.write_sidecars(extra_path, extra_sink.sha256.hexdigest(), extra_md5)
                manifest["extra_files"].append(os.path.basename(extra_path))
                manifest.update(extra_fields)
            if self.params["verify"]:
                self.verify(path, manifest, check)
            manifest_file = mf.manifest_path(path, artifact_id)
            mf.write_manifest(manifest_file, manifest)
        except BaseException:
            for leftover in written:
                if os.path.exists(leftover):
                    os.unlink(leftover)
            raise
        manifest["manifest_path"] = manifest_file
        return manifest

    def stream(self, path, produce, inspect):
        """Write one file of the artifact; with ``verify``, decode and ``inspect`` its stream beside the writing."""
        check = writer = None
        try:
            if self.params["verify"]:
                check = stream_check.StreamCheck(self.key, inspect)
            writer = atomic.AtomicWriter(path)
            sink = codec.EncodingSink(writer, self.params["compression"], self.params["compression_level"], self.key,
                                      md5=self.params["md5_sidecar"], check=check)
            sink.path = path
            fields = produce(sink)
            sink.finish()
            if check:
                check.finish()
                expected = codec.expected_layers(self.params["compression"], bool(self.key))
                if check.layers != expected:
                    raise OpsError("verification failed: %s decodes as %s, not %s; no backup was kept"
                                   % (os.path.basename(path), check.layers or "plain data", expected))
            writer.commit()
        except BaseException:
            try:
                if check:
                    check.abort()
            finally:
                if writer:
                    writer.abort()
            raise
        return sink, fields or {}, check

    def describe(self, artifact_id, relative, path, sink, produced, started, duration):
        manifest = {
            "format_version": codec.FORMAT_VERSION, "id": artifact_id, "kind": self.kind, "source_host": socket.getfqdn(),
            "database": self.subject, "compression": self.params["compression"],
            "compression_level": self.params["compression_level"], "encrypted": bool(self.key),
            "key_id": self.key.key_id if self.key else None, "file": os.path.basename(path), "path": path,
            "relative_dir": relative, "extra_files": [], "size": sink.size, "raw_size": sink.raw_bytes,
            "sha256": sink.sha256.hexdigest(), "md5": sink.md5.hexdigest() if sink.md5 else None,
            "started": mf.format_time(started), "finished": mf.format_time(mf.utc_now()),
            "duration": round(duration, 3), "labels": self.params["labels"], "verified": False, "s3_uri": None,
        }
        manifest.update(self.source)
        manifest.update(produced)
        return manifest

    def verify(self, path, manifest, check):
        """Every file read back against its checksum; the data file's encoded stream was decoded and compared with
        what the source produced, and inspected, while it was written (``check``)."""
        directory = os.path.dirname(path)
        for name in [manifest["file"]] + manifest["extra_files"]:
            expected = manifest["sha256"] if name == manifest["file"] else mf.read_sidecar(os.path.join(directory, name))
            sha256, _md5 = atomic.file_digests(os.path.join(directory, name))
            if sha256 != expected:
                raise OpsError("verification failed: %s reads back with sha256 %s, not %s; the disk or filesystem is "
                               "corrupting data; no backup was kept" % (name, sha256, expected))
        manifest.update(check.fields or {})
        manifest["verified"] = True

    def prune(self):
        retention = self.params["retention"]
        if not retention:
            return [], []
        now = mf.utc_now()
        pruned, pruned_s3 = [], []
        if self.store.get("dir"):
            for old in rt.select_retained(mf.catalog(self.store["dir"], self.kind, self.subject), now, **retention)[1]:
                rt.delete_artifact(old)
                pruned.append(old["id"])
        if self.store.get("s3"):
            for old in rt.select_retained(_s3.catalog(self.store["s3"], self.kind, self.subject), now, **retention)[1]:
                _s3.delete_artifact(self.store["s3"], old)
                pruned_s3.append(old["id"])
        return pruned, pruned_s3
