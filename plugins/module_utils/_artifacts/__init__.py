# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: backup artifacts, one concern per file. Not a public API.

An artifact is a data file, a JSON manifest (written last) and a ``<file>.sha256`` sidecar (plus an optional
``.md5``), stored under ``<kind>/<YYYY>/<MM>/<DD>/`` in a local directory and/or S3.

- ``codec``: compression, encryption and the one decode path shared by writers and readers
- ``atomic``: files that appear whole or not at all, digests, stale partial files
- ``manifest``: ids, layout, sidecars, manifests and the tolerant catalog
- ``retention``: which artifacts to keep and deleting the others
- ``lock``: one writer per (kind, database)
- ``store``: the store options, scratch space and catalogs across the local directory and S3
"""
