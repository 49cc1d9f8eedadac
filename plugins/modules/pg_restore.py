#!/usr/bin/python
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_restore
short_description: Restore a PostgreSQL database from a backup without ever losing the current data
version_added: 0.1.0
description:
  - Reads the whole backup first (checksum from the manifest or a C(.sha256)/C(.md5) sidecar, decryption,
    decompression, C(pg_restore --list)) and refuses a changed byte, a truncated file, a wrong key or a file that
    is not a backup before anything on the server changes.
  - In O(mode=swap) it restores into a scratch database beside the target, checks it (clean exit, table count,
    O(verify_queries)), then closes the target's sessions and swaps the two by rename in one transaction. The old
    database is kept as C(<db>_pre_restore_<timestamp>). If anything fails before the swap, the scratch database
    is dropped and the target is untouched.
  - In O(mode=in_place) it restores into the target with C(--clean --if-exists) in one transaction, which is
    rolled back on any error.
  - Reads backups it did not make, so existing backup sets restore as they are. Plain C(.sql), C(.sql.gz),
    C(.sql.zst); pg_dump custom C(.dump), C(.dump.gz); tar and directory format; runbook.ops artifacts; and
    C(openssl enc -aes-256-cbc -salt) files such as C(.sql.gz.enc) (pbkdf2, or the older default key derivation).
  - Custom and directory archives are restored in parallel (O(jobs)) from a file, because parallel pg_restore
    cannot read from a pipe. A compressed or encrypted archive is decoded once to private scratch space for that.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.attributes
  - runbook.ops.postgres
  - runbook.ops.container
  - runbook.ops.artifact_store
attributes:
  check_mode:
    support: full
    details: Resolves and fully validates the source and reports what would happen; changes nothing.
  diff_mode:
    support: full
    details: Shows the target database before and the backup it would hold after.
  idempotent:
    support: none
    details: Every run restores again. O(validate_only=true) never changes anything.
options:
  store:
    description:
      - The store to find O(src=latest) in, to download C(s3://) sources with, and to keep the safety backup in.
      - Needed for O(src=latest) and O(safety_backup); a path O(src) with O(safety_backup=false) needs none.
    type: dict
    required: false
  db:
    description: Target database (any name PostgreSQL allows, up to 63 bytes).
    type: str
    required: true
    aliases: [login_db]
  src:
    description:
      - The backup to restore. A path on the host (a file, or a directory-format dump), an C(s3://bucket/key) uri
        (downloaded with the O(store.s3) endpoint and credentials, with its sidecars and manifest when present), or
        V(latest) for the newest verified backup of O(backup_db) in the store (safety backups are skipped).
    type: str
    required: true
  backup_db:
    description: Database whose backups O(src=latest) picks from; defaults to O(db).
    type: str
  mode:
    description: V(swap) restores beside the target and swaps by rename; V(in_place) restores into the target in one transaction.
    type: str
    default: swap
    choices: [swap, in_place]
  validate_only:
    description: Check the backup at O(validate_level) and change nothing.
    type: bool
    default: false
  validate_level:
    description:
      - With O(validate_only=true). V(checksum) compares the file with its manifest or sidecar (and decodes it fully
        when it has neither). V(list) also decrypts and decompresses to the end and has C(pg_restore --list) read
        the archive, or checks that SQL text ends with pg_dump's completion line. V(restore) also restores into a
        scratch database, runs the checks, and drops it.
    type: str
    default: list
    choices: [checksum, list, restore]
  safety_backup:
    description:
      - Before replacing a database that has tables, back it up into the store (a custom-format, zstd, verified
        runbook.ops artifact labelled C(purpose=pre-restore), encrypted with O(encryption) when given).
      - V(false) is the platforms' C(--no-backup).
    type: bool
    default: true
  force:
    description: Required to replace a database that exists and has tables.
    type: bool
    default: false
  keep_previous:
    description: In O(mode=swap), keep the replaced database as C(<db>_pre_restore_<timestamp>); V(false) drops it after the swap.
    type: bool
    default: true
  jobs:
    description: Parallel pg_restore workers (1-64) for custom, tar and directory archives in O(mode=swap).
    type: int
    default: 2
  owner:
    description:
      - Role that owns the restored database and every object in it (C(pg_restore --no-owner --role), and
        C(SET ROLE) for SQL text). O(login_user) must be a member of it. Cannot be combined with O(session_role).
    type: str
  session_role:
    description: Role to C(SET ROLE) to while restoring; ownership recorded in the archive is kept.
    type: str
  verify_queries:
    description: Queries run on the restored data before the swap; the first column of the first row must equal O(verify_queries[].expected) when given.
    type: list
    elements: dict
    default: []
    suboptions:
      query:
        description: SQL returning at least one row.
        type: str
        required: true
      expected:
        description: Expected value, compared as text.
        type: raw
  min_tables:
    description: The restored database must have at least this many tables before it replaces the target.
    type: int
    default: 1
  compare_with:
    description: After the restore, count the rows of every table in O(db) and in this database and report whether they match.
    type: str
  analyze:
    description: Run C(ANALYZE) on the restored data before the swap, so plans and row estimates are right at once.
    type: bool
    default: true
  maintenance_db:
    description: Database to connect to for creating, renaming and dropping databases.
    type: str
    default: postgres
  openssl_iterations:
    description: PBKDF2 iterations of C(openssl enc -pbkdf2) files (openssl's default is 10000).
    type: int
    default: 10000
  terminate_timeout:
    description:
      - Seconds to keep closing sessions of the target before giving up on the swap. A prepared transaction or a
        replication slot that holds the target is named at once instead (closing sessions cannot release it).
    type: int
    default: 30
notes:
  - Scratch and previous database names are C(<db>_restore_<timestamp>) and C(<db>_pre_restore_<timestamp>), with
    O(db) cut by bytes to fit PostgreSQL's 63-byte limit and a counter added when the name is taken. A scratch
    database records its owner process in its comment; a later restore of the same O(db) drops those whose owner is
    provably dead (a restore killed with SIGKILL). On SIGTERM the scratch database and scratch files are
    removed before the task fails.
  - In O(mode=in_place), partitions of tables in the backup are detached first, in the same transaction, so
    C(--clean) can drop and recreate partitioned tables with primary keys.
  - For C(openssl enc) files the passphrase is O(encryption.passphrase), or the first line of O(encryption.key_file)
    (as C(openssl enc -pass file:) reads it).
  - The store is needed for O(src=latest) and for O(safety_backup).
  - Database-level settings and grants of the replaced database are copied to the restored one; pg_dump without
    C(--create) does not carry them.
seealso:
  - module: runbook.ops.pg_backup
"""

EXAMPLES = r"""
- name: Restore the newest backup of app, keeping the current database aside
  runbook.ops.pg_restore:
    db: app
    src: latest
    force: true
    store:
      dir: /var/backups/postgresql
    encryption:
      key_file: /etc/runbook/backup.key
    verify_queries:
      - query: SELECT count(*) > 0 FROM users
        expected: true
  register: restored

- name: Check last night's backup without touching anything (the platforms' --validate-only)
  runbook.ops.pg_restore:
    db: app
    src: s3://platform-backups/prod/postgres/2026/01/26/app_20260126_020000.dump.zst.enc
    validate_only: true
    store:
      s3:
        bucket: platform-backups
    encryption:
      key_file: /etc/runbook/backup.key

- name: Restore an old script's openssl-encrypted dump into a new database
  runbook.ops.pg_restore:
    db: app_copy
    src: /backups/backup_20260126_020000.sql.gz.enc
    safety_backup: false
    owner: app
    encryption:
      passphrase: "{{ vault_backup_passphrase }}"
"""

RETURN = r"""
restore:
  description: What was read, checked and restored.
  returned: success
  type: dict
  contains:
    src:
      description: The source as resolved (V(latest) shows the id it picked).
      type: str
    id:
      description: Backup id.
      type: str
    path:
      description: Local file or directory read (a download for S3 sources).
      type: str
    checksum:
      description: Where the expected checksum came from (V(manifest), V(sidecar)), or null when there was none.
      type: str
    sha256:
      description: sha256 of the file read.
      type: str
    layers:
      description: Layers peeled off, outermost first (for example V(openssl-aes-256-cbc/pbkdf2-sha256 (10000 iterations)), V(gzip)).
      type: list
      elements: str
    format:
      description: V(custom), V(directory) (also tar) or V(plain).
      type: str
    toc_entries:
      description: Entries in the archive's table of contents.
      type: int
    plain_size:
      description: Bytes of decoded archive or SQL.
      type: int
    valid:
      description: With O(validate_only), true when every check passed.
      type: bool
    level:
      description: With O(validate_only), the level checked.
      type: str
    database:
      description: Target database.
      type: str
    mode:
      description: Restore mode.
      type: str
    jobs:
      description: pg_restore workers used.
      type: int
    tables:
      description: Tables in the restored database.
      type: int
    rows_estimate:
      description: Sum of the planner's row estimates over all tables after ANALYZE.
      type: int
    size:
      description: Size of the restored database in bytes.
      type: int
    previous:
      description: Name the replaced database was kept under, or null.
      type: str
    previous_dropped:
      description: Name of the replaced database when O(keep_previous=false) dropped it.
      type: str
    safety_backup:
      description: The backup of the target taken first (id, path, s3_uri, size, duration), or null.
      type: dict
    scratch:
      description: Scratch database the data was restored into before the swap.
      type: str
    test_database:
      description: With O(validate_level=restore), the scratch database restored into and dropped.
      type: str
    sessions_terminated:
      description: Sessions of the target closed for the swap.
      type: int
    copied_properties:
      description: Database-level settings and grants copied from the replaced database.
      type: dict
    verify_queries:
      description: Each verify query and its result.
      type: list
      elements: dict
    comparison:
      description: With O(compare_with), tables, rows and mismatches between the two databases.
      type: dict
    read_duration:
      description: Seconds spent reading and checking the source.
      type: float
    load_duration:
      description: Seconds spent restoring and checking, including the swap.
      type: float
    throughput_mb_s:
      description: Decoded megabytes (10^6 bytes) restored per second.
      type: float
    duration:
      description: Seconds for the whole task.
      type: float
"""

from ansible_collections.runbook.ops.plugins.module_utils._pg_restore import PgRestore, argspec_ex
from ansible_collections.runbook.ops.plugins.module_utils._module import run_module


def main():
    run_module(argspec_ex(), lambda module: PgRestore(module, module.params).run())


if __name__ == "__main__":
    main()
