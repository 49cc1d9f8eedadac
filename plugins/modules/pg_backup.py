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
  - Artifacts whose upload to S3 failed earlier are uploaded by the next run. With only O(store.s3), the artifact is
    staged in O(store.work_dir), uploaded, and the staging copy removed.
  - Retention prunes the local store and the S3 copies, each from its own catalog.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.attributes
  - runbook.ops.postgres
  - runbook.ops.container
  - runbook.ops.artifact_store
  - runbook.ops.artifact_store.retention
  - runbook.ops.backup
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
    description:
      - Database to back up. Any name PostgreSQL allows (quotes, C(=), multibyte text, up to 63 bytes) except one
        holding C(/), which cannot be part of the backup's file name.
    type: str
    required: true
    aliases: [login_db]
  format:
    description:
      - V(custom) is C(pg_dump -Fc) (restorable in parallel with C(pg_restore -j)); V(plain) is SQL text.
      - V(directory) is C(pg_dump -Fd) run with O(jobs) parallel workers into a private scratch directory (which
        needs room for the uncompressed dump), then stored as one tar stream (C(.dir.tar)) so the artifact has
        one checksum; M(runbook.ops.pg_restore) extracts it and restores in parallel.
    type: str
    default: custom
    choices: [custom, directory, plain]
  jobs:
    description: Parallel pg_dump workers for O(format=directory) (1-64); each holds one more connection.
    type: int
    default: 2
  maintenance_db:
    description: Database C(pg_dumpall --globals-only) connects to for O(globals=true).
    type: str
    default: postgres
  globals:
    description:
      - Also save roles and tablespaces with C(pg_dumpall --globals-only) as C(<id>.globals.sql...) in the same
        artifact (same compression, encryption, checksums). Role passwords are included only when O(login_user)
        is a superuser (otherwise C(--no-role-passwords) is used and the manifest says so).
    type: bool
    default: false
seealso:
  - module: runbook.ops.pg_restore
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

- name: Parallel directory-format dump with roles, straight to S3 (no local store)
  runbook.ops.pg_backup:
    db: app
    format: directory
    jobs: 4
    globals: true
    store:
      work_dir: /var/tmp/runbook
      s3:
        bucket: platform-backups
        prefix: prod

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
    globals_file:
      description: File name of the roles and tablespaces dump, when O(globals=true).
      type: str
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
  description: Ids of the artifacts retention removed from the local store (in check mode, would remove).
  returned: always
  type: list
  elements: str
pruned_s3:
  description: Ids of the artifacts retention removed from S3 (in check mode, would remove).
  returned: always
  type: list
  elements: str
uploaded_pending:
  description: Ids of earlier artifacts uploaded by this run because their upload had failed.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.runbook.ops.plugins.module_utils._pg_backup import PgBackupJob, argspec_ex
from ansible_collections.runbook.ops.plugins.module_utils._module import run_module


def main():
    run_module(argspec_ex(), lambda module: PgBackupJob(module, module.params).run())


if __name__ == "__main__":
    main()
