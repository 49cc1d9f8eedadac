#!/usr/bin/python
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_backup
short_description: Back up a Redis server's dataset (RDB) to a local directory and/or S3, compressed, encrypted and verified
version_added: 0.1.0
description:
  - Takes a consistent RDB snapshot and streams it through compression, optional encryption and hashing into the store
    in one pass, with the same artifacts, manifests, checksums, S3 copies, retention, lock and
    O(skip_if_newer_than) as M(runbook.ops.pg_backup).
  - The manifest also records the Redis version, the RDB version, keys per db and used memory.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.attributes
  - runbook.ops.redis
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
  name:
    description:
      - Name of the Redis instance in artifact ids (C(<name>_<YYYYMMDD_HHMMSS>)) and for O(skip_if_newer_than) and
        retention. It cannot hold C(/).
    type: str
    default: redis
  method:
    description:
      - V(replication) fetches the snapshot over the network as a replica would (C(redis-cli --rdb)); it works against
        a remote server with no access to its disk.
      - V(bgsave) runs C(BGSAVE), waits for it (C(LASTSAVE), C(INFO persistence)) and copies the server's RDB file,
        which must be readable on this host.
      - V(auto) uses V(bgsave) when the RDB file is readable here and BGSAVE is allowed, else V(replication).
    type: str
    default: auto
    choices: [auto, replication, bgsave]
  rdb_path:
    description: The server's RDB file, when C(CONFIG GET dir) is disabled on a hardened server.
    type: path
  bgsave_timeout:
    description:
      - Seconds to wait for BGSAVE, and with V(replication) the longest silence of the snapshot stream while the
        server still answers (a snapshot being prepared, or a stuck child process).
    type: int
    default: 3600
  idle_timeout:
    description:
      - With V(replication), seconds the snapshot stream may stay silent. Then the server is asked for a C(PING)
        (within O(connect_timeout)); one that answers is still preparing its snapshot and the wait goes on, one that
        does not (a frozen process, a dead network path) fails the task, and nothing partial is left behind.
    type: int
    default: 60
seealso:
  - module: runbook.ops.redis_restore
"""

EXAMPLES = r"""
- name: Back up the cache every 4 hours, keep a week, copy offsite
  runbook.ops.redis_backup:
    name: cache
    login_password: "{{ vault_redis_password }}"
    store:
      dir: /var/backups/redis
      s3:
        bucket: platform-backups
        prefix: prod
    encryption:
      key_file: /etc/runbook/backup.key
    retention:
      keep_days: 7
    skip_if_newer_than: 4h
"""

RETURN = r"""
backup:
  description: The artifact written, or the recent one that made the run skip.
  returned: success
  type: dict
  contains:
    id:
      description: Artifact id.
      type: str
      sample: cache_20260126_120000
    path:
      description: Local data file, or null in an S3-only store.
      type: str
    s3_uri:
      description: S3 location of the data file when uploaded.
      type: str
    size:
      description: Bytes of the data file.
      type: int
    raw_size:
      description: Bytes of the RDB.
      type: int
    sha256:
      description: sha256 of the data file.
      type: str
    manifest:
      description: Path (or S3 key) of the manifest.
      type: str
    duration:
      description: Seconds the snapshot pipeline took.
      type: float
    throughput_mb_s:
      description: RDB megabytes (10^6 bytes) per second.
      type: float
    verified:
      description: Whether the verification after writing passed.
      type: bool
    keys:
      description: Keys per db when the backup was taken.
      type: dict
    method:
      description: V(replication) or V(bgsave), as used.
      type: str
    rdb_version:
      description: RDB format version.
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

from ansible_collections.runbook.ops.plugins.module_utils._redis_backup import RedisBackupJob, argspec_ex
from ansible_collections.runbook.ops.plugins.module_utils._module import run_module


def main():
    run_module(argspec_ex(), lambda module: RedisBackupJob(module, module.params).run())


if __name__ == "__main__":
    main()
