# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: the S3 side of the artifact store. Not a public API.

Objects mirror the local layout: ``<prefix>/<kind>/<YYYY>/<MM>/<DD>/<file>``. boto3 is imported only
when a task uses S3, and every botocore failure becomes an OpsError that says what did not happen.
"""

from __future__ import annotations

import os
import re

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import atomic, manifest as mf

PART_SIZE = 64 * 1024 * 1024


def client(s3):
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise OpsError("the Python library boto3 is needed for an S3 store: pip install boto3 on the host", exception=exc)
    session = boto3.session.Session(aws_access_key_id=s3.get("access_key"), aws_secret_access_key=s3.get("secret_key"),
                                    region_name=s3.get("region"))
    config = Config(retries={"total_max_attempts": s3.get("max_attempts") or 2, "mode": "standard"},
                    connect_timeout=s3.get("connect_timeout") or 5, read_timeout=s3.get("read_timeout") or 15)
    return session.client("s3", endpoint_url=s3.get("endpoint_url"), config=config)


def key(s3, relative):
    prefix = (s3.get("prefix") or "").strip("/")
    return "%s/%s" % (prefix, relative) if prefix else relative


def uri(s3, relative):
    return "s3://%s/%s" % (s3["bucket"], key(s3, relative))


def parse_uri(text):
    """'s3://bucket/some/key' -> (bucket, key)."""
    bucket, _sep, name = text[len("s3://"):].partition("/")
    if not bucket or not name:
        raise OpsError("%r is not an S3 object uri: use s3://<bucket>/<key>" % text)
    return bucket, name


def _transfer_config(s3):
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                          num_download_attempts=s3.get("max_attempts") or 2)


def upload(s3, files):
    """Upload (local path, relative key) pairs in order; returns their s3:// uris."""
    conn = client(s3)
    extra = {}
    if s3.get("sse"):
        extra["ServerSideEncryption"] = s3["sse"]
    if s3.get("kms_key_id"):
        extra["SSEKMSKeyId"] = s3["kms_key_id"]
    if s3.get("storage_class"):
        extra["StorageClass"] = s3["storage_class"]
    uris = []
    for local, relative in files:
        name = key(s3, relative)
        try:
            conn.upload_file(local, s3["bucket"], name, ExtraArgs=dict(extra), Config=_transfer_config(s3))
        except Exception as exc:  # botocore raises many types; all mean the upload did not happen
            raise OpsError("upload of %s to s3://%s/%s failed: %s. The local copy is kept; a later run uploads it"
                           % (os.path.basename(local), s3["bucket"], name, first_line(exc)), exception=exc)
        uris.append("s3://%s/%s" % (s3["bucket"], name))
    return uris


def download(s3, bucket, name, path):
    """Fetch one object to ``path`` (0600, scratch: no fsync); OpsError when it is missing or the endpoint fails."""
    writer = atomic.AtomicWriter(path, durable=False)
    try:
        client(s3).download_fileobj(bucket, name, writer, Config=_transfer_config(s3))
        writer.commit()
    except OpsError:
        writer.abort()
        raise
    except Exception as exc:
        writer.abort()
        raise OpsError("download of s3://%s/%s failed: %s" % (bucket, name, first_line(exc)), exception=exc)
    return path


def exists(s3, bucket, name):
    try:
        client(s3).head_object(Bucket=bucket, Key=name)
        return True
    except Exception:
        return False


def catalog(s3, kind, subject=None):
    """Manifests stored in S3 for a kind (and subject), newest first; each gains ``s3_manifest_key``.

    A damaged manifest is skipped with a warning; only manifests named for ``subject`` are read.
    """
    conn = client(s3)
    root = key(s3, kind + "/")
    pattern = re.compile(r"^%s%s$" % (mf.id_pattern(subject) if subject else ".+", re.escape(mf.MANIFEST_SUFFIX)))
    found = []
    try:
        for page in conn.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=root):
            for item in page.get("Contents", []):
                name = item["Key"]
                if not pattern.match(name.rsplit("/", 1)[-1]):
                    continue
                body = conn.get_object(Bucket=s3["bucket"], Key=name)["Body"].read()
                try:
                    manifest = mf.parse_manifest(body, "s3://%s/%s" % (s3["bucket"], name))
                except OpsError as exc:
                    mf.skip_damaged("s3://%s/%s" % (s3["bucket"], name), exc)
                    continue
                if subject is None or manifest.get("database") == subject:
                    manifest.update(s3_manifest_key=name, path=None)  # a path another host recorded means nothing here
                    found.append(manifest)
    except Exception as exc:
        raise OpsError("cannot list backups in s3://%s/%s: %s" % (s3["bucket"], root, first_line(exc)), exception=exc)
    found.sort(key=lambda m: m["finished"], reverse=True)
    return found


def object_keys(s3, manifest):
    """Every S3 key of an artifact, the manifest first (so nothing points at a half-deleted artifact)."""
    directory = manifest["s3_manifest_key"].rsplit("/", 1)[0]
    names = [manifest["file"]] + list(manifest.get("extra_files") or [])
    keys = [manifest["s3_manifest_key"]]
    for name in names:
        keys += ["%s/%s" % (directory, name), "%s/%s.sha256" % (directory, name)]
        if manifest.get("md5"):
            keys.append("%s/%s.md5" % (directory, name))
    return keys


def delete_artifact(s3, manifest):
    conn = client(s3)
    for name in object_keys(s3, manifest):
        try:
            conn.delete_object(Bucket=s3["bucket"], Key=name)
        except Exception as exc:
            raise OpsError("cannot delete s3://%s/%s while pruning: %s" % (s3["bucket"], name, first_line(exc)),
                           exception=exc)
