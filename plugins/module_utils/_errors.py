# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: the one exception every helper raises, and warnings for the operator. Not a public API."""

from __future__ import annotations

_WARNINGS = []


class OpsError(Exception):
    """A failure an operator can act on. ``message`` says what happened and what to do next.

    ``details`` become keys of the failed result (``changed=True`` after a write, a partial ``restore`` report ...).
    """

    def __init__(self, message, exception=None, **details):
        super().__init__(message)
        self.message = message
        self.exception = exception
        self.details = details

    def extend(self, text, **details):
        """The same error with ``text`` appended to its message and more details."""
        merged = dict(self.details, **details)
        message = "%s; %s" % (self.message, text) if text else self.message
        return OpsError(message, exception=self.exception, **merged)


class Terminated(BaseException):
    """SIGTERM or SIGINT arrived: a BaseException, so cleanups in ``finally`` and ``except BaseException`` run and
    nothing written as ``except Exception`` swallows it. ``details`` say what was already written (a safety backup)."""

    def __init__(self, **details):
        super().__init__()
        self.details = details


def first_line(exc):
    """The first line of an exception's text, or its class name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def warn(message):
    """A warning shown with the task's result (helpers have no module object to call module.warn on)."""
    if message not in _WARNINGS:
        _WARNINGS.append(message)


def pop_warnings():
    found = list(_WARNINGS)
    del _WARNINGS[:]
    return found
