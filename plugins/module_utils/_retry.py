# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: the one way to wait for something or try again, apart from error handling. Not a public API."""

from __future__ import annotations

import time


class Deadline:
    """A point in monotonic time: ``left()`` seconds remain, ``passed()`` once it is reached."""

    def __init__(self, seconds, clock=time.monotonic):
        self.clock = clock
        self.at = clock() + seconds

    def left(self):
        return max(0.0, self.at - self.clock())

    def passed(self):
        return self.clock() >= self.at


def poll(check, timeout, interval=0.1, on_timeout=None, clock=time.monotonic, sleep=time.sleep):
    """Call ``check()`` until it returns something truthy; return that.

    After ``timeout`` seconds ``on_timeout()`` is called (it should raise OpsError saying what did not happen);
    without one, the last falsy value is returned. The last sleep never overshoots the timeout.
    """
    deadline = Deadline(timeout, clock)
    while True:
        value = check()
        if value:
            return value
        if deadline.passed():
            if on_timeout is not None:
                on_timeout()
            return value
        sleep(min(interval, max(deadline.left(), 0.001)))


def attempts(retries, delay, clock=time.monotonic, sleep=time.sleep, deadline=None):
    """Yield attempt numbers 1..retries+1, sleeping ``delay`` between them; the caller breaks on success.

    With ``deadline`` (a Deadline), no attempt starts after it has passed.
    """
    attempt = 0
    while True:
        attempt += 1
        yield attempt
        if attempt > retries or (deadline is not None and deadline.left() <= delay):
            return
        sleep(delay)
