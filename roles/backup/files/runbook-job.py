# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one scheduled runbook.ops job on this host, then write the Prometheus textfile of every job.

Installed by the runbook.ops.backup role and started by its systemd timers (or cron) as ``python3 runbook-job``:

    runbook-job /etc/runbook-ops/jobs/postgres-app.json   # run the job, record its state, write the metrics
    runbook-job --metrics                                  # only write the metrics (marks jobs stale in time)

A job file (0600, it holds passwords) names the module, its arguments and its interval. The module runs as
Ansible runs it, from the copy of the collection under /opt/runbook-ops, with ansible-core's module_utils;
its arguments reach it in a 0600 file, never in argv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

JOBS_DIR = "/etc/runbook-ops/jobs"
STATE_DIR = "/var/lib/runbook-ops/state"
COLLECTION_ROOT = "/opt/runbook-ops"
METRICS = (
    ("last_success_timestamp_seconds", "gauge", "When the job last succeeded (Unix time); 0 if never."),
    ("last_attempt_timestamp_seconds", "gauge", "When the job last ran (Unix time); 0 if never."),
    ("last_duration_seconds", "gauge", "How long the last run took."),
    ("last_size_bytes", "gauge", "Size of the last artifact written (0 when the job writes none)."),
    ("last_result", "gauge", "1 when the last run succeeded, 0 when it failed."),
    ("interval_seconds", "gauge", "How often the job is meant to succeed."),
    ("stale", "gauge", "1 when the last success is older than the interval (or there has been none for that long)."),
)


def load_json(path, default=None):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def write_atomically(path, text, mode=0o644):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".runbook-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_module(job):
    """Run the job's module; (succeeded, result dict)."""
    fd, args_file = tempfile.mkstemp(prefix="runbook-args-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp makes it 0600
            json.dump({"ANSIBLE_MODULE_ARGS": job["args"]}, handle)
        env = dict(os.environ, PYTHONPATH=COLLECTION_ROOT, LC_ALL="C.UTF-8")
        module = "ansible_collections.runbook.ops.plugins.modules.%s" % job["module"]
        proc = subprocess.run([sys.executable, "-m", module, args_file], capture_output=True, text=True, env=env,
                              cwd="/", timeout=job.get("timeout") or None, check=False)
    except subprocess.TimeoutExpired:
        return False, {"msg": "the job did not finish in %ss" % job.get("timeout")}
    finally:
        os.unlink(args_file)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    except ValueError:
        result = {}
    if not result:
        result = {"failed": True, "msg": (proc.stderr or proc.stdout).strip()[-500:] or "no output"}
    return proc.returncode == 0 and not result.get("failed"), result


def artifact_size(result):
    for key in ("backup", "restore"):
        value = result.get(key)
        if isinstance(value, dict) and isinstance(value.get("size"), int):
            return value["size"]
    return 0


def record(job, started, succeeded, result):
    path = os.path.join(STATE_DIR, job["name"] + ".json")
    state = load_json(path, {}) or {}
    state.update(name=job["name"], last_attempt=started, last_duration=round(time.time() - started, 3),
                 last_result=1 if succeeded else 0, last_message=str(result.get("msg") or "")[:500])
    if succeeded:
        state.update(last_success=started, last_size=artifact_size(result))
    write_atomically(path, json.dumps(state, indent=2, sort_keys=True) + "\n", 0o640)


def metrics_text(now):
    lines = []
    rows = []
    for name in sorted(os.listdir(JOBS_DIR)) if os.path.isdir(JOBS_DIR) else []:
        if not name.endswith(".json"):
            continue
        job = load_json(os.path.join(JOBS_DIR, name))
        if not job:
            continue
        state_path = os.path.join(STATE_DIR, job["name"] + ".json")
        state = load_json(state_path, {}) or {}
        if "first_seen" not in state:
            state["first_seen"] = now
            write_atomically(state_path, json.dumps(state, indent=2, sort_keys=True) + "\n", 0o640)
        interval = int(job.get("interval_seconds") or 0)
        since = state.get("last_success") or state["first_seen"]
        labels = 'job="%s",task="%s",kind="%s",name="%s"' % tuple(
            str(v).replace("\\", "\\\\").replace('"', '\\"') for v in (job["name"], job.get("task", "backup"),
                                                                       job.get("kind", ""), job.get("subject", "")))
        values = {"last_success_timestamp_seconds": state.get("last_success", 0),
                  "last_attempt_timestamp_seconds": state.get("last_attempt", 0),
                  "last_duration_seconds": state.get("last_duration", 0),
                  "last_size_bytes": state.get("last_size", 0),
                  "last_result": state.get("last_result", 0),
                  "interval_seconds": interval,
                  "stale": 1 if interval and now - since > interval else 0}
        rows.append((labels, values))
    for metric, kind, text in METRICS:
        lines += ["# HELP runbook_backup_%s %s" % (metric, text), "# TYPE runbook_backup_%s %s" % (metric, kind)]
        lines += ["runbook_backup_%s{%s} %s" % (metric, labels, values[metric]) for labels, values in rows]
    return "\n".join(lines) + "\n"


def write_metrics(config):
    directory = config.get("metrics_dir")
    if directory:
        write_atomically(os.path.join(directory, "runbook_backup.prom"), metrics_text(time.time()))


def main(argv):
    config = load_json("/etc/runbook-ops/runner.json", {}) or {}
    if argv[1:] == ["--metrics"]:
        write_metrics(config)
        return 0
    if len(argv) != 2:
        sys.stderr.write("usage: runbook-job <job.json> | --metrics\n")
        return 2
    job = load_json(argv[1])
    if not job:
        sys.stderr.write("cannot read the job file %s\n" % argv[1])
        return 2
    started = time.time()
    succeeded, result = run_module(job)
    record(job, started, succeeded, result)
    write_metrics(config)
    summary = {k: result.get(k) for k in ("changed", "msg", "skipped_reason") if result.get(k) is not None}
    for key in ("backup", "restore"):
        if isinstance(result.get(key), dict):
            summary[key] = {k: result[key].get(k) for k in ("id", "path", "s3_uri", "size", "duration", "valid")
                            if result[key].get(k) is not None}
    print("%s %s: %s" % (job["name"], "succeeded" if succeeded else "FAILED", json.dumps(summary, sort_keys=True)))
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
