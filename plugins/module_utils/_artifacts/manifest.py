# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: artifact ids, layout, sidecars, manifests and the catalog of a local store. Not a public API.

The catalog reads what it can: a damaged manifest is skipped with a warning and never stops a job, and only
the manifests named for the subject asked about are read at all.
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timedelta, timezone

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, warn
from ansible_collections.runbook.ops.plugins.module_utils._artifacts.atomic import write_small_file

MANIFEST_SUFFIX = ".manifest.json"
ID_STAMP = r"\d{8}_\d{6}(?:_\d+)?"  # a counter follows the stamp when one second holds two backups
RUNTIME_KEYS = ("manifest_path", "s3_manifest_key")
REQUIRED_FIELDS = ("id", "finished", "file")
MAX_SUBJECT_BYTES = 180  # leaves room for the stamp and suffixes in a 255-byte file name
MAX_AGE = timedelta(days=36500)


def validate_subject(name, option):
    """A database or instance name that is safe as part of a file name; OpsError naming the option otherwise."""
    if not isinstance(name, str) or not name:
        raise OpsError("%s is empty: give the name of the database or instance" % option)
    if "/" in name or "\x00" in name or name in (".", ".."):
        raise OpsError("%s %r cannot be part of a backup file name (it holds '/', a NUL or is '.'/'..'): "
                       "rename it, or for Redis give another name" % (option, name))
    if len(name.encode("utf-8")) > MAX_SUBJECT_BYTES:
        raise OpsError("%s is %d bytes long; backup file names allow at most %d bytes for it"
                       % (option, len(name.encode("utf-8")), MAX_SUBJECT_BYTES))
    return name


def backup_id(subject, when):
    """``<subject>_<YYYYMMDD_HHMMSS>``, the platforms' naming."""
    return "%s_%s" % (subject, when.strftime("%Y%m%d_%H%M%S"))


def id_pattern(subject):
    """A regular expression (text) matching the artifact ids of ``subject`` and of no other subject."""
    return "%s_%s" % (re.escape(subject), ID_STAMP)


def relative_dir(kind, when):
    return "%s/%04d/%02d/%02d" % (kind, when.year, when.month, when.day)


def write_sidecars(path, sha256, md5=None):
    name = os.path.basename(path)
    write_small_file(path + ".sha256", "%s  %s\n" % (sha256, name))
    if md5:
        write_small_file(path + ".md5", "%s  %s\n" % (md5, name))


def read_sidecar(path, suffix=".sha256"):
    """The digest in ``<path><suffix>`` (``md5sum``/``sha256sum`` format), or None when there is none."""
    try:
        with open(path + suffix) as handle:
            text = handle.read().split()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OpsError("cannot read %s%s: %s" % (path, suffix, exc.strerror), exception=exc)
    except UnicodeDecodeError as exc:
        raise OpsError("%s%s is not a checksum file" % (path, suffix), exception=exc)
    if not text:
        raise OpsError("%s%s is empty: it should hold the file's checksum" % (path, suffix))
    return text[0].lower()


def manifest_path(data_path, artifact_id):
    return os.path.join(os.path.dirname(data_path), artifact_id + MANIFEST_SUFFIX)


def write_manifest(path, manifest):
    stored = {k: v for k, v in manifest.items() if k not in RUNTIME_KEYS}
    write_small_file(path, json.dumps(stored, indent=2, sort_keys=True) + "\n")


def parse_manifest(text, where):
    """A manifest from JSON text; OpsError when it is not one (damaged, truncated, or missing fields)."""
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise OpsError("manifest %s is not valid JSON (%s): it is damaged or truncated" % (where, exc), exception=exc)
    if not isinstance(manifest, dict):
        raise OpsError("manifest %s is not a JSON object" % where)
    missing = [k for k in REQUIRED_FIELDS if not isinstance(manifest.get(k), str)]
    if missing:
        raise OpsError("manifest %s lacks %s" % (where, ", ".join(missing)))
    try:
        parse_time(manifest["finished"])
    except ValueError as exc:
        raise OpsError("manifest %s has a damaged 'finished' time %r" % (where, manifest["finished"]), exception=exc)
    extra = manifest.get("extra_files") or []
    if not isinstance(extra, list) or not all(plain_name(n) for n in [manifest["file"]] + extra):
        raise OpsError("manifest %s names files outside its own directory (%r): it was edited or damaged"
                       % (where, [manifest["file"]] + (extra if isinstance(extra, list) else [extra])))
    return manifest


def plain_name(name):
    """A file name with no directory part: what a manifest may name as its data and extra files."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\x00" not in name


def load_manifest(path):
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except OSError as exc:
        raise OpsError("cannot read manifest %s: %s" % (path, exc.strerror), exception=exc)
    return parse_manifest(text, path)


def skip_damaged(where, exc):
    warn("skipped %s: %s. Other backups are not affected; move it away or delete it" % (where, exc.message))


def catalog(store_dir, kind, subject=None):
    """Manifests of finished backups of ``subject`` (or of every subject) in a local store, newest first."""
    root = os.path.join(store_dir, kind)
    pattern = re.compile(r"^%s%s$" % (id_pattern(subject) if subject else ".+", re.escape(MANIFEST_SUFFIX)))
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not pattern.match(name):
                continue
            path = os.path.join(dirpath, name)
            try:
                manifest = load_manifest(path)
            except OpsError as exc:
                skip_damaged(path, exc)
                continue
            if subject is None or manifest.get("database") == subject:
                attach(manifest, path)
                found.append(manifest)
    found.sort(key=lambda m: m["finished"], reverse=True)
    return found


def attach(manifest, path):
    """Point a manifest read from ``path`` at its files beside it (never at the absolute path it recorded, which a
    copied or moved store, or an edited manifest, would make wrong)."""
    manifest["manifest_path"] = path
    data = os.path.join(os.path.dirname(path), manifest["file"])
    manifest["path"] = data if os.path.exists(data) else None
    return manifest


def artifact_id_for(directory, subject, when):
    """An id for a new artifact in ``directory``: the platforms' ``<subject>_<YYYYMMDD_HHMMSS>``, with ``_2``, ``_3``
    ... when that second already has one (a backup right after another, a safety backup after a backup)."""
    base = backup_id(subject, when)
    candidate, counter = base, 1
    while any(name.startswith(candidate + ".") for name in _listdir(directory)):
        counter += 1
        candidate = "%s_%d" % (base, counter)
    return candidate


def _listdir(directory):
    try:
        return os.listdir(directory)
    except OSError:
        return []


def parse_age(text, option="skip_if_newer_than"):
    """'90s', '30m', '6h', '7d', '2w' -> timedelta; OpsError naming the option unless it is a finite positive age."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    raw = str(text).strip().lower()
    try:
        number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in units else (raw, "s")
        seconds = float(number) * units[unit]
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(raw)
        age = timedelta(seconds=seconds)
    except (ValueError, OverflowError):
        raise OpsError("%s is %r: use a positive number with s, m, h, d or w, e.g. 6h; omit it to always back up"
                       % (option, text))
    if age > MAX_AGE:
        raise OpsError("%s is %r, more than 100 years: use a real age such as 6h or 7d" % (option, text))
    return age


def utc_now():
    return datetime.now(timezone.utc)


def parse_time(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def format_time(when):
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
