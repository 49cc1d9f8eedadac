# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: which artifacts retention keeps, and deleting the others. Not a public API."""

from __future__ import annotations

import os
from datetime import timedelta

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError
from ansible_collections.runbook.ops.plugins.module_utils._artifacts.manifest import parse_time

RULES = ("keep_last", "keep_days", "keep_daily", "keep_weekly", "keep_monthly")
MAX_COUNT = 100000


def validate(retention):
    """OpsError naming the rule when a count is negative or absurd."""
    for name in RULES:
        value = (retention or {}).get(name)
        if value is None:
            continue
        if value < 0:
            raise OpsError("retention.%s is %d: a count of backups to keep cannot be negative" % (name, value))
        if value > MAX_COUNT:
            raise OpsError("retention.%s is %d: keep at most %d" % (name, value, MAX_COUNT))
    return retention


def select_retained(manifests, now, keep_last=None, keep_days=None, keep_daily=None, keep_weekly=None, keep_monthly=None):
    """Split manifests (any order) into (keep, prune) by the union of the rules.

    The newest verified backup is always kept. With no rule at all, nothing is pruned.
    """
    ordered = sorted(manifests, key=lambda m: m["finished"], reverse=True)
    if not any(v is not None for v in (keep_last, keep_days, keep_daily, keep_weekly, keep_monthly)):
        return ordered, []
    keep = set()
    if keep_last:
        keep.update(m["id"] for m in ordered[:keep_last])
    if keep_days is not None:
        cutoff = now - timedelta(days=keep_days)
        keep.update(m["id"] for m in ordered if parse_time(m["finished"]) >= cutoff)
    for count, bucket in ((keep_daily, "%Y-%m-%d"), (keep_weekly, "%G-W%V"), (keep_monthly, "%Y-%m")):
        if not count:
            continue
        seen = []
        for manifest in ordered:  # newest of each period
            period = parse_time(manifest["finished"]).strftime(bucket)
            if period not in seen:
                seen.append(period)
                if len(seen) > count:
                    break
                keep.add(manifest["id"])
    verified = [m for m in ordered if m.get("verified")]
    if verified:
        keep.add(verified[0]["id"])
    return [m for m in ordered if m["id"] in keep], [m for m in ordered if m["id"] not in keep]


def artifact_files(manifest):
    """Every local file of an artifact (sidecars, extra files, data), then the manifest; all beside the manifest."""
    directory = os.path.dirname(manifest["manifest_path"])
    files = []
    for name in list(manifest.get("extra_files") or []) + [manifest["file"]]:
        base = os.path.join(directory, name)
        files += [base + ".sha256", base + ".md5", base]
    return files + [manifest["manifest_path"]]


def delete_artifact(manifest):
    # The manifest goes first: without it nothing in the catalog points at a half-deleted artifact.
    for path in [manifest["manifest_path"]] + artifact_files(manifest)[:-1]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
