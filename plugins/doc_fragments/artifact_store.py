# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Where backups live and how they are encrypted (DOCUMENTATION), and how long they are kept (RETENTION).

    Restore modules extend DOCUMENTATION and document C(store) again with only C(required: false).
    """

    DOCUMENTATION = r"""
options:
  store:
    description:
      - Where artifacts are kept. Each artifact is a data file, a C(<file>.sha256) sidecar (and C(.md5) when
        asked), and a JSON manifest written last, under C(<kind>/<YYYY>/<MM>/<DD>/).
      - The local copy is written first; S3 gets the same layout under O(store.s3.prefix). At least one of
        O(store.dir) and O(store.s3) is needed.
    type: dict
    required: true
    suboptions:
      dir:
        description:
          - Local directory of the store. Created with mode 0700 when missing (never in check mode).
          - A run removes partial files of its own database left by a killed earlier run (it holds that database's
            lock, so no live writer owns them).
        type: path
      work_dir:
        description:
          - Private scratch space (mode 0700) for staging S3-only backups, directory-format dumps and downloads.
          - Defaults to C(<dir>/.work), or the system temporary directory when the store has no O(store.dir).
          - Each run's scratch directory records its owner process; a later run removes those whose owner is
            provably dead (same host, process gone). Check mode uses the system temporary directory instead.
        type: path
      s3:
        description:
          - An S3 bucket or any S3-compatible endpoint that receives a copy of every artifact.
          - Credentials default to the usual AWS environment variables and profiles.
        type: dict
        suboptions:
          bucket:
            description: Bucket name.
            type: str
            required: true
          prefix:
            description: Key prefix.
            type: str
            default: ""
          endpoint_url:
            description: URL of an S3-compatible endpoint (MinIO, Ceph, ...).
            type: str
          region:
            description: Region.
            type: str
          access_key:
            description: Access key id.
            type: str
          secret_key:
            description: Secret access key.
            type: str
          sse:
            description: Server-side encryption.
            type: str
            choices: [AES256, "aws:kms"]
          kms_key_id:
            description: KMS key for O(store.s3.sse=aws:kms).
            type: str
          storage_class:
            description: Storage class, for example C(STANDARD_IA).
            type: str
          connect_timeout:
            description: Seconds to wait for a connection to the endpoint.
            type: float
            default: 5
          read_timeout:
            description: Seconds to wait for each answer of the endpoint (one socket read).
            type: float
            default: 15
          max_attempts:
            description:
              - Attempts per request, the first included (1-10). An endpoint that accepts connections and never
                answers fails a request after about O(store.s3.max_attempts) times O(store.s3.read_timeout) seconds.
            type: int
            default: 2
  encryption:
    description:
      - Encrypt at rest with AES-256-GCM in authenticated chunks; a wrong key or a changed byte is detected.
      - If encryption is asked for and cannot be applied, the task fails; cleartext is never kept or uploaded instead.
    type: dict
    suboptions:
      key_file:
        description:
          - File holding the key (32 raw bytes, or any secret text, which is stretched with scrypt).
          - A key file that group or others may read is used, with a warning to C(chmod 600) it.
        type: path
      passphrase:
        description: Passphrase, stretched with scrypt. Never shown.
        type: str"""

    RETENTION = r"""
options:
  retention:
    description:
      - Which older backups of the same database to keep; the union of the rules is kept and the rest pruned.
      - The newest verified backup is never pruned. Without this option nothing is pruned.
    type: dict
    suboptions:
      keep_last:
        description: Keep the newest N. Every count must be 0 or more.
        type: int
      keep_days:
        description: Keep everything younger than N days.
        type: int
      keep_daily:
        description: Keep the newest backup of each of the last N days that have one.
        type: int
      keep_weekly:
        description: Keep the newest backup of each of the last N ISO weeks that have one.
        type: int
      keep_monthly:
        description: Keep the newest backup of each of the last N months that have one.
        type: int"""
