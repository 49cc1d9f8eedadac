# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: the result builder restores share. Not a public API."""

from __future__ import annotations


class Report:
    """Fields gathered as the work goes (so a failure half way can report them too), then the module's result."""

    def __init__(self, kind):
        self.data = {"kind": kind}

    def update(self, **fields):
        self.data.update(fields)

    def result(self, changed, diff=None):
        result = dict(changed=changed, restore=self.data)
        if diff:
            result["diff"] = diff
        return result
