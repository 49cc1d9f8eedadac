# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: running server tools (pg_dump, psql, redis-cli ...) with both ends of a pipe checked.

Secrets reach the tools only through their environment (PGPASSWORD, REDISCLI_AUTH), never argv.
"""

from __future__ import annotations

import subprocess
import threading

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import CHUNK


def stream_command(argv, env, sink, what):
    """Run ``argv`` and feed its stdout to ``sink.write``; fail clearly unless it exits 0 with output."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/")
    except OSError as exc:
        raise OpsError("cannot run %s: %s" % (argv[0], exc.strerror), exception=exc)
    errors = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    produced = 0
    try:
        for data in iter(lambda: proc.stdout.read(CHUNK), b""):
            produced += len(data)
            sink.write(data)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    returncode = proc.wait()
    reader.join()
    stderr = b"".join(errors)
    if returncode != 0:
        raise OpsError("%s %s: %s; no backup was kept" % (what, _exit_text(returncode), _last_line(stderr)))
    if produced == 0:
        raise OpsError("%s exited 0 but wrote nothing (%s); refusing to keep an empty backup" % (what, _last_line(stderr)))
    return produced


def run_tool(argv, env, what, stdin=None):
    """Run a PostgreSQL tool to completion; OpsError with the last line of its stderr unless it exits 0."""
    try:
        proc = subprocess.run(argv, env=env, cwd="/", stdin=stdin or subprocess.DEVNULL, capture_output=True, check=False)
    except OSError as exc:
        raise OpsError("cannot run %s: %s" % (argv[0], exc.strerror), exception=exc)
    if proc.returncode != 0:
        raise OpsError("%s %s: %s" % (what, _exit_text(proc.returncode), _last_line(proc.stderr)))
    return proc.stdout


def _exit_text(returncode):
    return "was killed by signal %d" % -returncode if returncode < 0 else "exited with %d" % returncode


def _last_line(stderr):
    """The tool's last error line (with the statement it ran, when it says), else its last line."""
    lines = [line.strip() for line in stderr.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        return "no message"
    errors = [i for i, line in enumerate(lines) if any(tag in line for tag in ("ERROR:", "FATAL:", "error:", "fatal:"))]
    if not errors:
        return lines[-1]
    text = lines[errors[-1]]
    following = lines[errors[-1] + 1:errors[-1] + 2]
    if following and following[0].startswith("Command was:"):
        text += " (%s)" % following[0][:200].rstrip(";")
    return text


def feed_command(argv, env, chunks, what, capture=False):
    """Run ``argv`` with ``chunks`` on its stdin; checks both sides of the pipe.

    If the tool stops reading early (pg_restore --list reads only the table of contents), the rest of
    ``chunks`` is still drained so the source's own end checks (checksum, authentication) run.
    Returns stdout when ``capture``.
    """
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, cwd="/")
    except OSError as exc:
        raise OpsError("cannot run %s: %s" % (argv[0], exc.strerror), exception=exc)
    out, errors = [], []
    readers = [threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)]
    if capture:
        readers.append(threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True))
    for reader in readers:
        reader.start()
    try:
        feeding = True
        for data in chunks:
            if feeding:
                try:
                    proc.stdin.write(data)
                except BrokenPipeError:
                    feeding = False
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    returncode = proc.wait()
    for reader in readers:
        reader.join()
    if returncode != 0:
        raise OpsError("%s %s: %s" % (what, _exit_text(returncode), _last_line(b"".join(errors))))
    return b"".join(out)
