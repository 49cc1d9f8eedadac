# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Options every backup module shares (pg_backup, redis_backup)."""

    DOCUMENTATION = r"""
options:
  compression:
    description: Compression applied in-process, in the same pass as hashing and encryption.
    type: str
    default: zstd
    choices: [zstd, gzip, none]
  compression_level:
    description:
      - Level for O(compression); zstd 1-22 (default 1), gzip 1-9 (default 6). Other values, or a level with
        O(compression=none), are refused before anything runs.
      - zstd level 1 keeps up with C(pg_dump) and C(redis-cli) on two cores; higher levels save a few per cent of
        space on typical dumps at two to three times the CPU, which a backup window then waits for.
    type: int
  md5_sidecar:
    description: Also write a C(<file>.md5) sidecar that C(md5sum -c) checks.
    type: bool
    default: false
  verify:
    description:
      - While writing, decrypt and decompress every encoded byte through the same decode path restores use, compare
        the result byte for byte with what the dump tool produced, and have the server's own tool read it
        (C(pg_restore --list) for PostgreSQL archives, the RDB's head and end marker for Redis); after writing, read
        every file back and check its sha256. Together this proves the file on disk decodes to what was dumped, without
        decoding it a second time.
      - Only verified backups count for O(skip_if_newer_than) and are protected by retention.
    type: bool
    default: true
  skip_if_newer_than:
    description:
      - Do nothing, and report no change, when a verified backup finished less than this long ago (V(90m), V(6h), V(1d)).
      - A positive, finite age of at most 100 years; anything else is refused before anything runs.
    type: str
  lock_timeout:
    description: Seconds to wait for another backup of the same source to finish before failing.
    type: int
    default: 0
  labels:
    description: Free-form labels (strings, numbers, booleans) stored in the manifest.
    type: dict
    default: {}
"""
