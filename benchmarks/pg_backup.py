"""pg_backup and pg_restore against raw pg_dump/pg_restore and community.postgresql, on ~1 GiB of real rows.

All in one run, on a private PostgreSQL started here:
  floor          pg_dump -Fp > /dev/null
  raw -Fc        pg_dump -Fc > file
  community      community.postgresql.postgresql_db state=dump target=x.sql.gz (pigz when installed)
  runbook.ops    pg_backup with its defaults (zstd, sha256, verify), and with encryption
  restores       pg_restore -j2 of the -Fc file into an empty database, and pg_restore swap mode (jobs 2)
  small          a ~400 MiB database: whole playbooks of pg_backup and community, and the shell pipeline
                 pg_dump -Fc -Z0 | zstd -T2 plus an empty playbook (what a shell task would cost at best)
The rows are poorly compressible (md5 text, random bytea, jsonb, numerics, timestamps), so compression
costs what it costs in production. Ansible runs are timed whole and minus an empty playbook (the task).
Run with `make bench` (installs the PyPI `ansible` package into .deps/bench-ansible for community.postgresql).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))

from servers import PG_BIN, PostgresServer  # noqa: E402

# runbook.ops from this checkout, community.postgresql from the PyPI `ansible` package (make bench installs it there)
COLLECTIONS = "%s:%s" % (REPO / "collections", REPO / ".deps" / "bench-ansible")
ROWS = int(os.environ.get("BENCH_ROWS", "3000000"))
SMALL_ROWS = int(os.environ.get("BENCH_SMALL_ROWS", "1200000"))
DB = "bench"
SMALL_DB = "bench_small"
BUILD = """
CREATE TABLE events (
  id bigint PRIMARY KEY, account text, session text, at timestamptz, amount numeric(12, 2), attrs jsonb, blob bytea);
INSERT INTO events
  SELECT i, md5(random()::text), md5(random()::text), now() - random() * interval '365 days',
         round((random() * 100000)::numeric, 2),
         jsonb_build_object('ip', md5(random()::text), 'n', (random() * 1e6)::int, 'tag', substr(md5(random()::text), 1, 8)),
         decode(md5(random()::text) || md5(random()::text), 'hex')
  FROM generate_series(1, %d) i;
CREATE INDEX events_account ON events (account);
VACUUM ANALYZE events;
"""


class Bench:
    def __init__(self, workdir, server):
        self.workdir = workdir
        self.server = server
        self.env = dict(os.environ, **server.env, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1")
        self.results = {}
        self.inventory = workdir / "inventory"
        self.inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)

    def shell(self, command):
        started = time.perf_counter()
        subprocess.run(command, shell=True, env=self.env, check=True, cwd=self.workdir, executable="/bin/bash")
        return time.perf_counter() - started

    def psql(self, statement, db="postgres"):
        subprocess.run([str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db], input=statement.encode(),
                       env=self.env, check=True, stdout=subprocess.DEVNULL)

    def playbook(self, name, task):
        path = self.workdir / ("%s.yml" % name)
        path.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n    - %s\n" % task)
        results = self.workdir / ("%s.jsonl" % name)
        env = dict(self.env, ANSIBLE_CALLBACK_PLUGINS=str(REPO / "tests" / "integration" / "callback_plugins"),
                   ANSIBLE_CALLBACKS_ENABLED="record_results", RUNBOOK_TEST_RESULTS=str(results))
        started = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(self.inventory), str(path)],
                              env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit("%s failed:\n%s%s" % (name, proc.stdout[-3000:], proc.stderr[-2000:]))
        if results.exists():
            lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
            self.results[name] = lines[-1]["result"] if lines else {}
        return elapsed

    def connection(self):
        return {"login_host": self.server.host, "login_port": self.server.port, "login_user": self.server.user,
                "login_password": self.server.password}


def community_available():
    return (REPO / ".deps" / "bench-ansible" / "ansible_collections" / "community" / "postgresql").is_dir()


def main():
    base = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    os.chmod(base, 0o755)
    server = PostgresServer(base / "pg").start()
    try:
        run(base, server)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def build(bench, db, rows):
    bench.psql("CREATE DATABASE %s" % db)
    bench.psql(BUILD % rows, db)
    size = subprocess.run([str(PG_BIN / "psql"), "-XAtc", "SELECT pg_database_size('%s')" % db], env=bench.env,
                          capture_output=True, text=True, check=True).stdout.strip()
    print("database %s: %d rows, %.0f MiB on disk" % (db, rows, int(size) / 2 ** 20), flush=True)


def dump_task(bench, db, target):
    spec = dict(bench.connection(), name=db, state="dump", target=str(target))
    return "community.postgresql.postgresql_db: %s" % json.dumps(spec)


def run(base, server):
    bench = Bench(base, server)
    print("building %d + %d rows ..." % (ROWS, SMALL_ROWS), flush=True)
    build(bench, DB, ROWS)
    build(bench, SMALL_DB, SMALL_ROWS)
    pg_dump, pg_restore = PG_BIN / "pg_dump", PG_BIN / "pg_restore"
    conn = bench.connection()
    store = base / "store"
    times = {}
    times["empty"] = bench.playbook("empty", "ansible.builtin.meta: noop")
    times["floor"] = bench.shell("%s -Fp -d %s > /dev/null" % (pg_dump, DB))
    times["raw_fc"] = bench.shell("%s -Fc -d %s -f raw.dump" % (pg_dump, DB))
    if community_available():
        times["community"] = bench.playbook("community", dump_task(bench, DB, base / "community.sql.gz"))
    for name, extra in (("runbook", {}), ("runbook_enc", {"encryption": {"passphrase": "bench-passphrase"}})):
        task = "runbook.ops.pg_backup: %s" % json.dumps(dict(conn, db=DB, store={"dir": str(store / name)}, **extra))
        times[name] = bench.playbook(name, task)
    artifact = next(p for p in (store / "runbook").rglob("*.dump.zst"))
    sizes = {"raw -Fc": (base / "raw.dump").stat().st_size, "runbook zstd": artifact.stat().st_size}
    if (base / "community.sql.gz").exists():
        sizes["community .sql.gz"] = (base / "community.sql.gz").stat().st_size

    times["small_pipeline"] = bench.shell("%s -Fc -Z0 -d %s | zstd -q -T2 -o small.dump.zst" % (pg_dump, SMALL_DB))
    times["small_runbook"] = bench.playbook("small_runbook", "runbook.ops.pg_backup: %s" % json.dumps(
        dict(conn, db=SMALL_DB, store={"dir": str(store / "small")})))
    if community_available():
        times["small_community"] = bench.playbook("small_community", dump_task(bench, SMALL_DB, base / "small.sql.gz"))

    bench.psql("CREATE DATABASE raw_restore")
    times["raw_restore"] = bench.shell("%s -j2 --exit-on-error -d raw_restore raw.dump" % pg_restore)
    for name, analyze in (("runbook_restore", False), ("runbook_restore_analyze", True)):
        spec = dict(conn, db="%s_%s" % (DB, name), src=str(artifact), jobs=2, safety_backup=False, analyze=analyze)
        task = "runbook.ops.pg_restore: %s" % json.dumps(spec)
        times[name] = bench.playbook(name, task)
    report(times, sizes)
    backup = bench.results.get("runbook", {}).get("backup", {})
    print("  pg_backup defaults: its own duration %.2f s (dump+encode+in-stream check), %.0f MB/s of dump" % (
        backup.get("duration") or 0, backup.get("throughput_mb_s") or 0))
    for name in ("runbook_restore", "runbook_restore_analyze"):
        restore = bench.results.get(name, {}).get("restore", {})
        print("  %s: read+check+decode %.2f s, restore+checks+swap %.2f s" % (
            name, restore.get("read_duration", 0), restore.get("load_duration", 0)))


def report(times, sizes):
    empty = times["empty"]

    def alone(key):
        return max(times[key] - empty, 1e-3)

    print("\npg_backup benchmark (wall seconds; ansible runs also shown minus an empty playbook of %.2f s; load %s)"
          % (empty, " ".join(open("/proc/loadavg").read().split()[:3])))
    print("  floor pg_dump -Fp > /dev/null        %7.2f" % times["floor"])
    print("  raw pg_dump -Fc > file               %7.2f" % times["raw_fc"])
    if "community" in times:
        print("  community.postgresql dump .sql.gz    %7.2f  (task %.2f)" % (times["community"], alone("community")))
    print("  runbook.ops.pg_backup defaults       %7.2f  (task %.2f)" % (times["runbook"], alone("runbook")))
    print("  runbook.ops.pg_backup + encryption   %7.2f  (task %.2f)" % (times["runbook_enc"], alone("runbook_enc")))
    print("  raw pg_restore -j2                   %7.2f" % times["raw_restore"])
    print("  runbook.ops.pg_restore swap, jobs 2  %7.2f  (task %.2f)" % (times["runbook_restore"], alone("runbook_restore")))
    print("  ... with ANALYZE (the default)       %7.2f  (task %.2f)" % (times["runbook_restore_analyze"],
                                                                         alone("runbook_restore_analyze")))
    pipeline = times["small_pipeline"]
    print("  small db: pg_dump -Fc -Z0 | zstd -T2 %7.2f  (+ empty playbook %.2f)" % (pipeline, pipeline + empty))
    print("  small db: runbook.ops.pg_backup      %7.2f  whole playbook" % times["small_runbook"])
    if "small_community" in times:
        print("  small db: community.postgresql dump  %7.2f  whole playbook" % times["small_community"])
    print("\nsizes: " + ", ".join("%s %.0f MiB" % (k, v / 2 ** 20) for k, v in sizes.items()))
    print("\nratios (the whole task as the operator waits for it):")
    print("  pg_backup defaults / floor          %5.2fx  (goal <= 1.3x)" % (alone("runbook") / times["floor"]))
    print("  pg_backup defaults / raw -Fc        %5.2fx" % (alone("runbook") / times["raw_fc"]))
    print("  pg_backup+enc / floor               %5.2fx" % (alone("runbook_enc") / times["floor"]))
    if "community" in times:
        print("  community / pg_backup               %5.2fx  (goal >= 3x)" % (alone("community") / alone("runbook")))
        print("  small db, whole playbooks: community / pg_backup %5.2fx  (goal >= 2.2x; the shell pipeline: %.2fx)" % (
            times["small_community"] / times["small_runbook"], times["small_community"] / (times["small_pipeline"] + empty)))
    else:
        print("  community.postgresql not installed: run `make bench`, which installs the PyPI ansible package")
    print("  pg_restore swap / raw pg_restore -j2 %5.2fx  (goal <= 1.1x)" % (alone("runbook_restore") / times["raw_restore"]))


if __name__ == "__main__":
    main()
