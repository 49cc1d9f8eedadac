#!/usr/bin/python
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: redis_restore
short_description: Restore a Redis dataset into a live server, or by swapping the RDB file on the Redis host
version_added: 0.1.0
description:
  - Reads the whole backup first (checksum from the manifest or a C(.sha256)/C(.md5) sidecar, decryption,
    decompression, RDB header and end marker) and refuses bad input before the target is touched.
  - In O(mode=live) the target stays online and is never restarted. By default (O(transport=auto)) the RDB is
    checked whole first (its structure, its own CRC64 and its key counts against the manifest) and then streamed
    straight into the target as C(RESTORE ... ABSTTL) commands on one connection, as C(redis-cli --pipe) would, with
    no intermediate server; a sample of keys is then compared by value and TTL. This needs the Python package
    C(anycrc) on the host.
  - Where streaming does not apply (O(key_pattern), O(existing_keys=skip), O(force), module types or data this
    reader does not know, an RDB with no checksum of its own and no manifest, a target older than the file's RDB
    version, no C(anycrc)) the RDB is loaded by private C(redis-server)s on free loopback ports (so Redis
    itself parses it, whatever its version), its key counts are checked against the manifest, and keys are copied in
    batches by C(MIGRATE ... COPY KEYS) from those servers (through this host with C(DUMP)/C(RESTORE) when MIGRATE
    cannot reach the target, for example over TLS), keeping TTLs. The result's C(stream_fallback) says why.
  - In O(mode=file) the service is stopped, the old RDB and AOF are kept aside, the new RDB is put in place with AOF
    off for the load, the service is started, key counts are checked against the manifest, and AOF is turned back on
    (and the config file put back as it was). Any failure puts the old files back and starts the service again.
  - Before the first write it refuses a target that is a read-only replica, a O(db_map) to a db the target does not
    have, and data that would not fit under the target's C(maxmemory) (it would fail half way with OOM or evict
    keys); the message gives the numbers. A failure after any write (the safety backup, the flush, some keys)
    reports C(changed=true) and names the safety backup that holds the previous data.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.attributes
  - runbook.ops.redis
  - runbook.ops.container
  - runbook.ops.artifact_store
attributes:
  check_mode:
    support: full
    details: Validates the backup (the whole RDB check, or its load into a private server) and reports what would happen.
  diff_mode:
    support: full
    details: Shows the target's key counts before and the backup restored after.
  idempotent:
    support: none
    details: Every run restores again; O(validate_only=true) never changes anything.
options:
  store:
    description:
      - The store to find O(src=latest) in, to download C(s3://) sources with, and to keep the safety backup in.
    type: dict
    required: false
  src:
    description: A path on the host, an C(s3://bucket/key) uri, or V(latest) (newest verified backup of O(name), safety backups skipped).
    type: str
    required: true
  name:
    description: Instance name whose backups O(src=latest) picks from, and under which safety backups are stored.
    type: str
    default: redis
  mode:
    description: V(live) copies keys into the running target; V(file) swaps the RDB file and restarts the service.
    type: str
    default: live
    choices: [live, file]
  validate_only:
    description: Check the backup (checksum, decoding, and a load into a private redis-server) and change nothing.
    type: bool
    default: false
  safety_backup:
    description: Back up the target first when it has keys (V(false) is the platforms' C(--no-backup)).
    type: bool
    default: true
  force:
    description:
      - Required when the target has keys and neither O(flush_first) nor O(existing_keys) says what to do with them.
        With O(existing_keys=fail), a key that exists still fails the restore before anything is written.
    type: bool
    default: false
  flush_first:
    description:
      - Empty the target dbs being restored first (C(FLUSHDB), or C(SCAN) + C(UNLINK) where FLUSHDB is disabled or
        renamed). With O(key_pattern), only the target's keys that match the pattern are removed; other keys stay.
      - The flush happens only after every check passed and the safety backup was taken.
    type: bool
    default: false
  existing_keys:
    description:
      - What to do with keys of the backup that exist in the target. V(fail) checks every key first and writes
        nothing if one exists; V(replace) overwrites; V(skip) keeps the target's key. Defaults to V(fail).
    type: str
    choices: [fail, replace, skip]
  replace:
    description:
      - Shorthand for O(existing_keys=replace). Deprecated; use O(existing_keys=replace). Cannot be combined with
        O(existing_keys).
    type: bool
  key_pattern:
    description:
      - Restore only keys matching this glob (C(SCAN MATCH)); a pattern that matches nothing fails, an empty one is
        refused. With O(flush_first), only matching keys of the target are removed first.
    type: str
  db_map:
    description:
      - "Restore db N of the backup into db M of the target (V({0: 3}) puts db 0 into db 3); other dbs keep their number."
      - Both sides must be db numbers, and every target db must exist on the target; this is checked before anything
        is written.
    type: dict
    default: {}
  batch_size:
    description: Keys per MIGRATE or pipeline batch (1-100000).
    type: int
    default: 1000
  transport:
    description:
      - V(stream) (the RDB straight into the target as RESTORE commands, no scratch server), V(migrate) (from scratch
        servers, server to server), V(dump) (DUMP/RESTORE from scratch servers through this host).
      - V(auto) streams where it can and otherwise uses migrate (dump over TLS, into a container, or when MIGRATE
        fails). V(stream) fails, before anything is written, where streaming does not apply.
    type: str
    default: auto
    choices: [auto, stream, migrate, dump]
  scratch_servers:
    description:
      - Private servers that load the backup in O(mode=live) and MIGRATE to the target in turn, so one serializes a batch
        while the target restores another's (MIGRATE blocks the server that runs it). Each needs the dataset's memory.
      - 1 to 8.
    type: int
    default: 2
  load_timeout:
    description: Seconds to wait for a Redis server to load the RDB.
    type: int
    default: 600
  service:
    description: With O(mode=file), the systemd unit to stop and start.
    type: str
  stop_command:
    description: With O(mode=file), a command (argv list) that stops the server, instead of O(service).
    type: list
    elements: str
  start_command:
    description: With O(mode=file), a command (argv list) that starts the server, instead of O(service).
    type: list
    elements: str
  data_dir:
    description: With O(mode=file), the server's data directory when C(CONFIG GET dir) is disabled.
    type: path
  dbfilename:
    description: With O(mode=file), the RDB file name when C(CONFIG GET dbfilename) is disabled.
    type: str
  config_file:
    description: With O(mode=file), the server's config file (from C(INFO server) by default); needed when AOF is on.
    type: path
  keep_previous:
    description: With O(mode=file), keep the old RDB and AOF as C(<name>.pre_restore_<timestamp>).
    type: bool
    default: true
seealso:
  - module: runbook.ops.redis_backup
"""

EXAMPLES = r"""
- name: Check the newest backup without touching the server (the platforms' --validate-only)
  runbook.ops.redis_restore:
    name: cache
    src: latest
    validate_only: true
    store:
      dir: /var/backups/redis

- name: Restore into the live server, emptying it first (the platforms' --force --flush-first)
  runbook.ops.redis_restore:
    name: cache
    src: latest
    flush_first: true
    login_password: "{{ vault_redis_password }}"
    store:
      dir: /var/backups/redis
    encryption:
      key_file: /etc/runbook/backup.key
  register: restored

- name: Cold restore on the Redis host
  runbook.ops.redis_restore:
    src: /var/backups/redis/redis/2026/01/26/cache_20260126_120000.rdb.zst
    mode: file
    service: redis-server
    store:
      dir: /var/backups/redis
"""

RETURN = r"""
restore:
  description: What was read, checked and restored.
  returned: success
  type: dict
  contains:
    src:
      description: The source as resolved.
      type: str
    id:
      description: Backup id.
      type: str
    checksum:
      description: Where the expected checksum came from (V(manifest), V(sidecar)), or null.
      type: str
    sha256:
      description: sha256 of the file read.
      type: str
    layers:
      description: Layers peeled off, outermost first.
      type: list
      elements: str
    rdb_version:
      description: RDB format version.
      type: int
    backup_keys:
      description: Keys per db in the backup, as loaded by Redis.
      type: dict
    valid:
      description: With O(validate_only), true when every check passed.
      type: bool
    mode:
      description: Restore mode.
      type: str
    policy:
      description: The existing-keys policy applied.
      type: str
    per_db:
      description: For each db of the backup, the target db and the keys restored, skipped, failed (and when streaming, already expired), and the transport.
      type: dict
    restored:
      description: Keys written.
      type: int
    skipped:
      description: Keys left as they were because they existed (O(existing_keys=skip)).
      type: int
    failed:
      description: Keys that could not be written.
      type: int
    flushed:
      description: With O(flush_first), keys removed per target db.
      type: dict
    sample:
      description: Keys compared between backup and target after the restore (value and TTL), and how many differed.
      type: dict
    target_keys_before:
      description: Keys per db in the target before.
      type: dict
    target_keys_after:
      description: Keys per db in the target after.
      type: dict
    safety_backup:
      description: The backup of the target taken first (id, path, s3_uri, size, duration), or null.
      type: dict
    previous_files:
      description: With O(mode=file), where the old RDB and AOF were kept.
      type: list
      elements: str
    keys_per_second:
      description: Keys restored per second.
      type: int
    read_duration:
      description: Seconds spent reading and checking the backup.
      type: float
    scratch_load_duration:
      description: Seconds the private servers took to load the backup (live mode and validation).
      type: float
    scan_duration:
      description: Seconds spent listing the keys to copy (live mode), or checking the whole RDB before streaming it.
      type: float
    transport:
      description: V(stream) when the RDB was streamed into the target (per_db says the transport of a copy).
      type: str
    stream_fallback:
      description: In live mode, why the RDB was not streamed and scratch servers loaded it instead.
      type: str
    functions_skipped:
      description: When streaming, function libraries the RDB holds; a live restore copies keys, not functions.
      type: int
    errors:
      description: When streaming, the first few errors the target returned for keys it refused.
      type: list
      elements: str
    load_duration:
      description: Seconds spent writing into the target (live) or swapping and reloading (file).
      type: float
    duration:
      description: Seconds for the whole task.
      type: float
"""

from ansible_collections.runbook.ops.plugins.module_utils._redis_restore import RedisRestore, argspec_ex
from ansible_collections.runbook.ops.plugins.module_utils._module import run_module


def main():
    run_module(argspec_ex(), lambda module: RedisRestore(module, module.params).run())


if __name__ == "__main__":
    main()
