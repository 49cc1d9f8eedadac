# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: the one exception every helper raises. Not a public API."""

from __future__ import annotations


class OpsError(Exception):
    """A failure an operator can act on. ``message`` says what happened and what to do next."""

    def __init__(self, message, exception=None, **details):
        super().__init__(message)
        self.message = message
        self.exception = exception
        self.details = details


def first_line(exc):
    """The first line of an exception's text, or its class name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
