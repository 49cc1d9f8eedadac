#!/usr/bin/python
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_backup
short_description: Back up a PostgreSQL database to a local directory and/or S3, compressed, encrypted and verified
version_added: 0.1.0
description:
  - Streams C(pg_dump) through compression, optional encryption and hashing into the store in one pass, with no
    full-size temporary copy. The data file appears under its final name only after fsync and rename, and the
    manifest is written last, so an interrupted backup never looks finished.
  - A lock per database keeps two backups of the same database from running at once.
  - With O(skip_if_newer_than), a recent verified backup makes the task a no-op that reports no change, which
    makes reruns and AWX retries safe.
  - Artifacts whose upload to S3 failed earlier are uploaded by the next run.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.attributes
  - runbook.ops.postgres
  - runbook.ops.artifact_store
attributes:
  check_mode:
    support: full
    details: Connects and reads only; reports the backup it would take and what retention would prune.
  diff_mode:
    support: full
    details: Shows the artifact added and those pruned.
  idempotent:
    support: partial
    details: Each run takes a new backup unless O(skip_if_newer_than) finds a recent one.
options:
  db:
    description: Database to back up.
    type: str
    required: true
    aliases: [login_db]
  format:
    description:
      - V(custom) is C(pg_dump -Fc) (restorable in parallel with C(pg_restore -j)); V(plain) is SQL text.
    type: str
    default: custom
    choices: [custom, plain]
  compression:
    description: Compression applied in-process (pg_dump's own compression is turned off).
    type: str
    default: zstd
    choices: [zstd, gzip, none]
  compression_level:
    description: Level for O(compression); zstd 1-19 (default 3), gzip 1-9 (default 6).
    type: int
  md5_sidecar:
    description: Also write a C(<file>.md5) sidecar that C(md5sum -c) checks.
    type: bool
    default: false
  verify:
    description:
      - After writing, read the file back, check its sha256, decrypt and decompress it to the end and, for the
        custom format, have C(pg_restore --list) read it.
    type: bool
    default: true
  skip_if_newer_than:
    description: Do nothing when a verified backup of O(db) finished less than this long ago (V(90m), V(6h), V(1d)).
    type: str
  lock_timeout:
    description: Seconds to wait for another backup of the same database to finish before failing.
    type: int
    default: 0
  labels:
    description: Free-form labels stored in the manifest.
    type: dict
    default: {}
seealso:
  - module: community.postgresql.postgresql_db
"""

EXAMPLES = r"""
- name: Back up the app database every 6 hours, keep 30 days, copy offsite
  runbook.ops.pg_backup:
    db: app
    login_user: backup
    login_password: "{{ vault_backup_password }}"
    store:
      dir: /var/backups/postgresql
      s3:
        bucket: platform-backups
        prefix: prod
        sse: AES256
    encryption:
      key_file: /etc/runbook/backup.key
    retention:
      keep_days: 30
      keep_monthly: 12
    skip_if_newer_than: 6h
    labels:
      schedule: every-6h
  register: backup

- name: Plain SQL gzip file with an md5 sidecar, like the old shell script wrote
  runbook.ops.pg_backup:
    db: app
    format: plain
    compression: gzip
    md5_sidecar: true
    store:
      dir: /backups
"""

RETURN = r"""
backup:
  description: The artifact written, or the recent one that made the run skip.
  returned: success
  type: dict
  contains:
    id:
      description: Artifact id, C(<db>_<YYYYMMDD_HHMMSS>).
      type: str
      sample: app_20260126_103000
    path:
      description: Local data file.
      type: str
      sample: /var/backups/postgresql/postgres/2026/01/26/app_20260126_103000.dump.zst.enc
    s3_uri:
      description: S3 location of the data file when uploaded.
      type: str
    size:
      description: Bytes of the data file.
      type: int
    raw_size:
      description: Bytes pg_dump wrote, before compression.
      type: int
    sha256:
      description: sha256 of the data file.
      type: str
    manifest:
      description: Path of the manifest.
      type: str
    duration:
      description: Seconds the dump pipeline took.
      type: float
    throughput_mb_s:
      description: Raw dump megabytes (10^6 bytes) per second.
      type: float
    db_size:
      description: Size of the database on the server, in bytes.
      type: int
    verified:
      description: Whether the verification after writing passed.
      type: bool
    toc_entries:
      description: Entries C(pg_restore --list) read (custom format).
      type: int
skipped_reason:
  description: Why no backup was taken.
  returned: when skip_if_newer_than found a recent backup
  type: str
pruned:
  description: Ids of the artifacts retention removed (in check mode, would remove).
  returned: always
  type: list
  elements: str
uploaded_pending:
  description: Ids of earlier artifacts uploaded by this run because their upload had failed.
  returned: always
  type: list
  elements: str
"""

import os
import socket
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbook.ops.plugins.module_utils import _artifacts as art
from ansible_collections.runbook.ops.plugins.module_utils import _postgres as pg
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

KIND = "postgres"
EXTENSIONS = {"custom": ".dump", "plain": ".sql"}


def argument_spec():
    spec = dict(pg.CONNECTION_OPTIONS)
    spec.update(art.artifact_argument_spec())
    spec.update(
        db=dict(type="str", required=True, aliases=["login_db"]),
        format=dict(type="str", default="custom", choices=["custom", "plain"]),
        compression=dict(type="str", default="zstd", choices=["zstd", "gzip", "none"]),
        compression_level=dict(type="int"),
        md5_sidecar=dict(type="bool", default=False),
        verify=dict(type="bool", default=True),
        skip_if_newer_than=dict(type="str"),
        lock_timeout=dict(type="int", default=0),
        labels=dict(type="dict", default={}),
    )
    return spec


def data_file_name(artifact_id, params):
    name = artifact_id + EXTENSIONS[params["format"]] + art.COMPRESSION_SUFFIX[params["compression"]]
    return name + (art.ENCRYPTED_SUFFIX if params["encryption"] else "")


def upload(params, manifest):
    store_dir = params["store"]["dir"]
    data = manifest["path"]
    relative_dir = os.path.relpath(os.path.dirname(data), store_dir)
    files = [(data + ".sha256", relative_dir + "/" + os.path.basename(data) + ".sha256")]
    if os.path.exists(data + ".md5"):
        files.append((data + ".md5", relative_dir + "/" + os.path.basename(data) + ".md5"))
    files.insert(0, (data, relative_dir + "/" + os.path.basename(data)))
    uris = art.s3_upload(params["store"]["s3"], files)
    manifest["s3_uri"] = uris[0]
    local_manifest = manifest.pop("manifest_path")
    art.write_manifest(local_manifest, manifest)
    art.s3_upload(params["store"]["s3"], [(local_manifest, relative_dir + "/" + os.path.basename(local_manifest))])
    manifest["manifest_path"] = local_manifest


def take_backup(params, facts, key):
    store_dir = params["store"]["dir"]
    started = art.utc_now()
    artifact_id = art.backup_id(params["db"], started)
    directory = os.path.join(store_dir, art.relative_dir(KIND, started))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, data_file_name(artifact_id, params))
    env = pg.libpq_env(params, params["db"])
    pg_dump = pg.tool("pg_dump", facts["server_version_num"])
    clock = time.monotonic()
    sink = art.ArtifactSink(path, params["compression"], params["compression_level"], key, md5=params["md5_sidecar"])
    try:
        pg.stream_command(pg.dump_argv(pg_dump, params["format"], params["db"]), env, sink, "pg_dump of %s" % params["db"])
        sink.close()
    except BaseException:
        sink.abort()
        raise
    duration = time.monotonic() - clock
    try:
        manifest = finish_artifact(params, facts, key, sink, path, artifact_id, started, duration, pg_dump, env)
    except BaseException:
        for leftover in (path, path + ".sha256", path + ".md5", art.manifest_path(path, artifact_id)):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise
    return manifest


def finish_artifact(params, facts, key, sink, path, artifact_id, started, duration, pg_dump, env):
    """Sidecars, verification, then the manifest last; the caller removes everything if this fails."""
    sha256, md5 = sink.sha256.hexdigest(), (sink.md5.hexdigest() if sink.md5 else None)
    art.write_sidecars(path, sha256, md5)
    manifest = {
        "format_version": art.FORMAT_VERSION, "id": artifact_id, "kind": KIND, "source_host": socket.getfqdn(),
        "server": "%s:%s" % (params["login_host"], params["login_port"]), "database": params["db"],
        "server_version": facts["server_version"], "format": params["format"], "compression": params["compression"],
        "compression_level": params["compression_level"], "encrypted": bool(key), "key_id": key.key_id if key else None,
        "file": os.path.basename(path), "path": path, "size": sink.size, "raw_size": sink.raw_bytes, "sha256": sha256,
        "md5": md5, "started": art.format_time(started), "finished": art.format_time(art.utc_now()),
        "duration": round(duration, 3), "db_size": facts["size"], "tables": facts["tables"],
        "tool_versions": {"pg_dump": pg.tool_version(pg_dump)}, "labels": params["labels"], "verified": False,
        "s3_uri": None,
    }
    if params["verify"]:
        manifest.update(verify(path, manifest, key, facts, env))
    manifest_file = art.manifest_path(path, artifact_id)
    art.write_manifest(manifest_file, manifest)
    manifest["manifest_path"] = manifest_file
    return manifest


def verify(path, manifest, key, facts, env):
    sha256, _md5 = art.file_digests(path)
    if sha256 != manifest["sha256"]:
        raise OpsError("verification failed: %s reads back with sha256 %s, not %s; the disk or filesystem is "
                       "corrupting data" % (path, sha256, manifest["sha256"]))
    chunks = art.open_plain_reader(path, manifest["compression"], key)
    if manifest["format"] == "custom":
        entries = pg.list_archive(pg.tool("pg_restore", facts["server_version_num"]), chunks, env)
        return {"verified": True, "toc_entries": entries}
    tail = b""
    for data in chunks:
        tail = (tail + data)[-4096:]
    if b"PostgreSQL database dump complete" not in tail:
        raise OpsError("verification failed: the SQL dump in %s does not end with pg_dump's completion line" % path)
    return {"verified": True}


def result_view(manifest):
    keys = ("id", "path", "s3_uri", "size", "raw_size", "sha256", "duration", "db_size", "verified", "toc_entries")
    view = {k: manifest.get(k) for k in keys}
    view["manifest"] = manifest.get("manifest_path")
    duration = manifest.get("duration") or 0
    view["throughput_mb_s"] = round(manifest.get("raw_size", 0) / 1e6 / duration, 1) if duration else None
    return view


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    try:
        run(module, params)
    except OpsError as exc:
        module.fail_json(msg=exc.message)


def run(module, params):
    store_dir = params["store"]["dir"]
    if not store_dir:
        raise OpsError("store.dir is required: backups are written locally first, then uploaded to store.s3")
    key = art.EncryptionKey(**params["encryption"]) if params["encryption"] else None
    if key and params["encryption"].get("passphrase"):
        module.no_log_values.add(params["encryption"]["passphrase"])
    facts = pg.database_facts(params, params["db"])
    if not module.check_mode:
        os.makedirs(store_dir, mode=0o700, exist_ok=True)
    existing = art.catalog(store_dir, KIND, params["db"]) if os.path.isdir(store_dir) else []

    if params["skip_if_newer_than"]:
        window = art.parse_age(params["skip_if_newer_than"])
        recent = [m for m in existing if m.get("verified") and art.utc_now() - art.parse_time(m["finished"]) < window]
        if recent:
            module.exit_json(changed=False, backup=result_view(recent[0]), pruned=[], uploaded_pending=[],
                             skipped_reason="backup %s finished at %s, within %s" % (
                                 recent[0]["id"], recent[0]["finished"], params["skip_if_newer_than"]))

    retention = params["retention"] or {}
    if module.check_mode:
        _keep, prune = art.select_retained(existing, art.utc_now(), **retention)
        planned = os.path.join(store_dir, art.relative_dir(KIND, art.utc_now()),
                               data_file_name(art.backup_id(params["db"], art.utc_now()), params))
        module.exit_json(changed=True, backup={"path": planned, "db_size": facts["size"]},
                         pruned=[m["id"] for m in prune], uploaded_pending=[],
                         diff={"before": "", "after": "%s\n" % planned})

    with art.StoreLock(store_dir, KIND, params["db"], params["lock_timeout"]):
        uploaded_pending = []
        s3 = params["store"].get("s3")
        manifest = take_backup(params, facts, key)
        if s3:
            for pending in [m for m in art.catalog(store_dir, KIND, params["db"]) if not m.get("s3_uri")]:
                upload(params, pending)
                if pending["id"] != manifest["id"]:
                    uploaded_pending.append(pending["id"])
                else:
                    manifest["s3_uri"] = pending["s3_uri"]
        _keep, prune = art.select_retained(art.catalog(store_dir, KIND, params["db"]), art.utc_now(), **retention)
        for old in prune:
            art.delete_artifact(old)
    module.exit_json(changed=True, backup=result_view(manifest), pruned=[m["id"] for m in prune],
                     uploaded_pending=uploaded_pending,
                     diff={"before": "", "after": "%s\n" % manifest["path"]})


if __name__ == "__main__":
    main()
