# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: the store options (doc fragment runbook.ops.artifact_store), scratch space and catalogs
across the local directory and S3. Not a public API."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import atomic, manifest as mf, retention

SCRATCH_PREFIXES = (".restore-", ".redis-restore-", ".pgdump-", "staging-")


def s3_options():
    return dict(
        bucket=dict(type="str", required=True),
        prefix=dict(type="str", default=""),
        endpoint_url=dict(type="str"),
        region=dict(type="str"),
        access_key=dict(type="str", no_log=True),
        secret_key=dict(type="str", no_log=True),
        sse=dict(type="str", choices=["AES256", "aws:kms"]),
        kms_key_id=dict(type="str"),
        storage_class=dict(type="str"),
        connect_timeout=dict(type="float", default=5),
        read_timeout=dict(type="float", default=15),
        max_attempts=dict(type="int", default=2),
    )


def store_argspec_ex(for_restore=False):
    """store and encryption, and (for backups) retention; restores take an optional store and no retention."""
    spec = dict(
        store=dict(type="dict", required=not for_restore, required_one_of=[("dir", "s3")], options=dict(
            dir=dict(type="path"),
            work_dir=dict(type="path"),
            s3=dict(type="dict", options=s3_options(), required_together=[("access_key", "secret_key")],
                    required_by={"kms_key_id": "sse"}),
        )),
        encryption=dict(type="dict", options=dict(
            key_file=dict(type="path", no_log=False),
            passphrase=dict(type="str", no_log=True),
        ), mutually_exclusive=[("key_file", "passphrase")], required_one_of=[("key_file", "passphrase")]),
    )
    if not for_restore:
        spec["retention"] = dict(type="dict", options={name: dict(type="int") for name in retention.RULES})
    return {"argspec": spec}


def validate(store, retention_rules=None):
    """Checks that need no server: a store.dir or work_dir that is a file, S3 timeouts, retention counts."""
    store = store or {}
    for option in ("dir", "work_dir"):
        path = store.get(option)
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise OpsError("store.%s %s is a file, not a directory: give a directory" % (option, path))
    s3 = store.get("s3")
    if s3:
        if s3["connect_timeout"] <= 0 or s3["read_timeout"] <= 0:
            raise OpsError("store.s3.connect_timeout and read_timeout must be more than 0 seconds")
        if not 1 <= s3["max_attempts"] <= 10:
            raise OpsError("store.s3.max_attempts is %d: use 1-10" % s3["max_attempts"])
    retention.validate(retention_rules)
    return store


def work_base(store):
    """Where staging files and downloads go: store.work_dir, else the local store's .work, else the system temp dir."""
    if store.get("work_dir"):
        return store["work_dir"]
    if store.get("dir"):
        return os.path.join(store["dir"], ".work")
    return tempfile.gettempdir()


@contextlib.contextmanager
def scratch(store, prefix, check_mode=False):
    """A private scratch directory, removed afterwards; stale ones of dead runs are removed first.

    In check mode nothing is created in the store: the directory is made in the system temp dir instead.
    """
    base = work_base(store or {})
    if check_mode:
        base = tempfile.gettempdir()
    else:
        atomic.sweep_scratch(base, SCRATCH_PREFIXES)
    path = atomic.scratch_dir(base, prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def catalog(store, kind, subject):
    """Newest-first manifests from the local store, or from S3 when the store has no local directory."""
    if store.get("dir"):
        return mf.catalog(store["dir"], kind, subject) if os.path.isdir(store["dir"]) else []
    from ansible_collections.runbook.ops.plugins.module_utils import _s3

    return _s3.catalog(store["s3"], kind, subject)
