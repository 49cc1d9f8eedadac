# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: checking a backup stream while it is written. Not a public API.

A thread takes every encoded chunk the writer emits, decodes it through the one decode path restores use
(``codec.decode``), compares the result byte for byte with what the source produced, and hands the decoded
stream to the kind's own inspection (``pg_restore --list``, the RDB's head and end marker ...). With a sha256 re-read of the
file on disk afterwards this proves what a full read-back proves, without decoding the artifact a second time.
"""

from __future__ import annotations

import queue
import threading

from ansible_collections.runbook.ops.plugins.module_utils._artifacts import codec
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

QUEUE_CHUNKS = 64
_END = object()


class StreamCheck:
    """``raw(data)`` before the encoder sees it, ``encoded(data)`` as it is written, then ``finish()``: the
    inspection's fields, or OpsError when the encoded stream does not decode to the raw one."""

    def __init__(self, key, inspect):
        self.secrets = codec.Secrets(key=key)
        self.inspect = inspect
        self.layers = []
        self.pending = bytearray()
        self.chunks = queue.Queue(QUEUE_CHUNKS)
        self.fields = None
        self.error = None
        self.compared = 0
        self.ended = False
        self.aborted = False
        self.thread = threading.Thread(target=self._work, name="stream-check", daemon=True)
        self.thread.start()

    def raw(self, data):
        """Raw bytes travel in the same queue as the encoded ones, ahead of anything encoded from them."""
        self._raise_early()
        if data:
            self.chunks.put((True, bytes(data)))

    def encoded(self, data):
        self._raise_early()
        if data:
            self.chunks.put((False, bytes(data)))

    def finish(self):
        self.chunks.put(_END)
        self.thread.join()
        if self.error is not None:
            raise self.error
        if self.pending:
            raise OpsError("verification failed: the encoded stream decodes to %d bytes, %d fewer than were dumped; "
                           "no backup was kept" % (self.compared, len(self.pending)))
        return self.fields

    def abort(self):
        """Stop the thread after a failed write (its result no longer matters): the backlog is dropped unread."""
        self.aborted = True
        self.error = self.error or OpsError("aborted")
        self.chunks.put(_END)
        self.thread.join()

    def _raise_early(self):
        if self.error is not None:
            raise self.error

    def _incoming(self):
        while True:
            item = self.chunks.get()
            if item is _END:
                self.ended = True
                return
            if self.aborted:
                raise OpsError("aborted")
            is_raw, data = item
            if is_raw:
                self.pending += data
            else:
                yield data

    def _decoded(self):
        for data in codec.decode(self._incoming(), self.secrets, self.layers):
            size = len(data)
            same = self.pending.startswith(data)
            if same:
                del self.pending[:size]
            else:
                raise OpsError("verification failed: the encoded stream does not decode to the bytes that were dumped "
                               "(they differ after %d bytes); no backup was kept" % self.compared)
            self.compared += size
            yield data

    def _work(self):
        stream = self._decoded()
        try:
            self.fields = self.inspect(stream)
            for _data in stream:  # an inspection that stops early: compare the rest
                pass
        except OpsError as exc:
            self.error = exc
        except Exception as exc:  # pylint: disable=broad-except
            self.error = OpsError("verification failed: %s" % exc, exception=exc)
        finally:
            while not self.ended:  # release a writer blocked on a full queue
                self.ended = self.chunks.get() is _END
