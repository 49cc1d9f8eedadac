# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: running tools (pg_dump, psql, redis-cli ...) with both ends of a pipe checked.

Neutral about what it runs: callers give argv and environment. Secrets reach the tools only through their
environment (PGPASSWORD, REDISCLI_AUTH), never argv. A tool that stops producing output for ``idle_timeout``
seconds is killed, so a frozen server or a dead network path never hangs a task.
"""

from __future__ import annotations

import fcntl
import queue
import subprocess
import threading
import time

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

CHUNK = 1024 * 1024
_END = object()
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux


def widen_pipe(stream, size=CHUNK):
    """A 1 MiB pipe buffer instead of 64 KiB: a tool streaming gigabytes wakes this process a sixteenth as often."""
    try:
        fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, size)
    except OSError:  # above /proc/sys/fs/pipe-max-size, or not Linux: the default buffer works, only slower
        pass


def _spawn(argv, env, **kwargs):
    """Popen; a tool whose environment belongs to a container (``_container.ExecEnv``) runs inside it."""
    container = getattr(env, "container", None)
    token = None
    if container is not None:
        argv, env, token = container.wrap(argv, env)
    try:
        proc = subprocess.Popen(argv, env=env, cwd="/", **kwargs)
    except OSError as exc:
        raise OpsError("cannot run %s: %s" % (argv[0], exc.strerror), exception=exc)
    proc.runbook_inside = (container, token) if container is not None else None
    return proc


def _collect(stream, into):
    thread = threading.Thread(target=lambda: into.append(stream.read()), daemon=True)
    thread.start()
    return thread


def _stop(proc):
    if proc.poll() is None:
        if proc.runbook_inside:
            container, token = proc.runbook_inside
            container.kill(token)  # first: the CLI's end would close the tool's stdin, which reads as a clean end
        proc.kill()
    proc.wait()


def command_output(argv, env, what, idle_timeout=None, alive=None, max_silence=None):
    """Yield the stdout of ``argv`` chunk by chunk; OpsError unless it exits 0, or when it is silent too long.

    After ``idle_timeout`` seconds without output, ``alive()`` (when given) may say the source is still working
    (a server preparing a snapshot): then the wait goes on, up to ``max_silence`` seconds of silence in all;
    otherwise the tool is stopped.
    """
    proc = _spawn(argv, env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    widen_pipe(proc.stdout)
    errors = []
    stderr_reader = _collect(proc.stderr, errors)
    chunks = queue.Queue(maxsize=4)

    def pump():
        try:
            for data in iter(lambda: proc.stdout.read1(CHUNK), b""):
                chunks.put(data)
        except (OSError, ValueError):
            pass
        chunks.put(_END)

    threading.Thread(target=pump, daemon=True).start()
    silent_since = time.monotonic()
    try:
        while True:
            try:
                data = chunks.get(timeout=idle_timeout)
            except queue.Empty:
                silence = time.monotonic() - silent_since
                if max_silence is not None and silence >= max_silence:
                    raise OpsError("%s sent nothing for %.0fs although the server still answers: the snapshot is not "
                                   "coming (a stuck child process?); it was stopped" % (what, silence))
                if alive is not None and alive():
                    continue
                raise OpsError("%s sent nothing for %ss: the server stopped answering (a frozen process or a dead "
                               "network path); it was stopped" % (what, idle_timeout))
            if data is _END:
                break
            silent_since = time.monotonic()
            yield data
    except BaseException:
        _stop(proc)
        raise
    returncode = proc.wait()
    stderr_reader.join()
    if returncode != 0:
        raise OpsError("%s %s: %s" % (what, exit_text(returncode), last_line(b"".join(errors))))


def stream_command(argv, env, sink, what, idle_timeout=None, alive=None, max_silence=None):
    """Run ``argv`` and feed its stdout to ``sink.write``; fail clearly unless it exits 0 with output."""
    produced = 0
    try:
        for data in command_output(argv, env, what, idle_timeout, alive, max_silence):
            produced += len(data)
            sink.write(data)
    except OpsError as exc:
        raise exc.extend("no backup was kept")
    if produced == 0:
        raise OpsError("%s exited 0 but wrote nothing; refusing to keep an empty backup" % what)
    return produced


def run_tool(argv, env, what, stdin=None, timeout=None):
    """Run a tool to completion; OpsError with the last line of its stderr unless it exits 0. Returns stdout."""
    proc = _spawn(argv, env, stdin=stdin or subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _stop(proc)
        raise OpsError("%s did not finish in %ss and was stopped" % (what, timeout), exception=exc)
    except BaseException:
        _stop(proc)
        raise
    if proc.returncode != 0:  # some tools (and docker exec) say why on stdout
        raise OpsError("%s %s: %s" % (what, exit_text(proc.returncode), last_line(stderr if stderr.strip() else stdout)))
    return stdout


def exit_text(returncode):
    return "was killed by signal %d" % -returncode if returncode < 0 else "exited with %d" % returncode


def last_line(stderr):
    """The tool's last error line (with the statement it ran, when it says), else its last line."""
    lines = [line.strip() for line in stderr.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        return "no message"
    errors = [i for i, line in enumerate(lines) if any(tag in line for tag in ("ERROR:", "FATAL:", "error:", "fatal:"))]
    if not errors:
        return lines[-1]
    text = lines[errors[-1]]
    following = lines[errors[-1] + 1:errors[-1] + 2]
    if following and following[0].startswith(("Command was:", "LINE ")):
        text += " (%s)" % following[0][:200].rstrip(";")
    return text


def feed_command(argv, env, chunks, what, capture=False):
    """Run ``argv`` with ``chunks`` on its stdin; checks both sides of the pipe.

    If the tool stops reading early (pg_restore --list reads only the table of contents), the rest of
    ``chunks`` is still drained so the source's own end checks (checksum, authentication) run. If ``chunks``
    fails, the tool is killed before its stdin is closed, so a ``--single-transaction`` load never commits
    half an input. Returns stdout when ``capture``.
    """
    proc = _spawn(argv, env, stdin=subprocess.PIPE, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                  stderr=subprocess.PIPE)
    out, errors = [], []
    readers = [_collect(proc.stderr, errors)]
    if capture:
        readers.append(_collect(proc.stdout, out))
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
        _stop(proc)
        raise
    returncode = proc.wait()
    for reader in readers:
        reader.join()
    if returncode != 0:
        raise OpsError("%s %s: %s" % (what, exit_text(returncode), last_line(b"".join(errors))))
    return b"".join(out)
