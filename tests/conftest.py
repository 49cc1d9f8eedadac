"""Make ``ansible_collections.runbook.ops`` importable from this checkout for every test."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _collection_root():
    try:
        import ansible_collections.runbook.ops  # noqa: F401  (already importable, e.g. under ansible-test)
        return None
    except ImportError:
        pass
    root = Path(tempfile.mkdtemp(prefix="runbook-unit-"))
    (root / "ansible_collections" / "runbook").mkdir(parents=True)
    (root / "ansible_collections" / "runbook" / "ops").symlink_to(REPO)
    return root


_root = _collection_root()
if _root is not None:
    sys.path.insert(0, str(_root))
sys.path.insert(0, str(REPO / "tests" / "harness"))
