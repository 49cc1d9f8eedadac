"""redis_restore against Redis's own load and the redis-cli --pipe protocol floor, on ~1M keys (~400 MiB).

All in one run, on private redis-servers started here:
  cold load      Redis starting with the RDB in place (until loading ends)
  --pipe floor   the same keys as RESTORE commands replayed by redis-cli --pipe into an empty server
  redis-py       a plain pipelined DUMP/RESTORE copy through Python (read and write rates)
  live mode      runbook.ops.redis_restore mode=live into an empty server (its own load_duration, keys/s)
  file mode      runbook.ops.redis_restore mode=file (stop, swap the RDB, start, wait for the load, check counts)
The floor, the empty playbook, the streamed live restore, the cold load and file mode run ROUNDS times
(BENCH_ROUNDS, 3 by default), alternating, and the medians are reported: this machine's speed wanders.
Run with `make bench`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))

from servers import RedisServer, free_port  # noqa: E402

KEYS = int(os.environ.get("BENCH_KEYS", "1000000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BATCH = 1000
PASSWORD = "redis-bench-password"  # not a word that appears in paths: Ansible masks no_log values in results


def resp(*parts):
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        part = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def fill(server, path):
    """~400 bytes a key on average: strings, hashes, lists, sets, sorted sets; 10% with TTLs."""
    rng = random.Random(7)
    with open(path, "wb") as handle:
        for i in range(KEYS):
            kind = i % 10
            blob = os.urandom(rng.randint(100, 300)).hex()[: rng.randint(150, 450)]
            if kind < 5:
                handle.write(resp("SET", "s:%d" % i, blob))
            elif kind < 7:
                handle.write(resp("HSET", "h:%d" % i, "a", blob[:100], "b", blob[100:], "n", i))
            elif kind == 7:
                handle.write(resp("RPUSH", "l:%d" % i, *[blob[j:j + 40] for j in range(0, len(blob), 40)]))
            elif kind == 8:
                handle.write(resp("SADD", "t:%d" % i, *[blob[j:j + 30] for j in range(0, len(blob), 30)]))
            else:
                handle.write(resp("ZADD", "z:%d" % i, *[x for j in range(0, len(blob), 50) for x in (j, blob[j:j + 50])]))
            if i % 10 == 3:
                handle.write(resp("EXPIRE", "s:%d" % i if kind < 5 else "h:%d" % i, 86400))
    pipe(server, path)


def pipe(server, path):
    started = time.perf_counter()
    env = dict(os.environ, REDISCLI_AUTH=server.password or "")
    with open(path, "rb") as handle:
        subprocess.run(["redis-cli", "-p", str(server.port), "--pipe"], stdin=handle, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def wait_loaded(port, password, proc=None, timeout=300):
    import redis

    conn = redis.Redis(port=port, password=password)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not conn.info("persistence")["loading"]:
                return conn
        except (redis.ConnectionError, redis.BusyLoadingError):
            pass
        time.sleep(0.01)
    raise RuntimeError("redis on %d did not load" % port)


def cold_load(base, rdb, name):
    directory = base / name
    directory.mkdir()
    shutil.copy(rdb, directory / "dump.rdb")
    server = RedisServer(directory, password=PASSWORD)
    started = time.perf_counter()
    server.start()
    wait_loaded(server.port, PASSWORD)
    elapsed = time.perf_counter() - started
    server.stop()
    return elapsed


def playbook(workdir, name, task):
    path = workdir / ("%s.yml" % name)
    path.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n    - name: %s\n      %s\n" % (name, task))
    results = workdir / ("%s.jsonl" % name)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CALLBACK_PLUGINS=str(REPO / "tests" / "integration" / "callback_plugins"),
               ANSIBLE_CALLBACKS_ENABLED="record_results", RUNBOOK_TEST_RESULTS=str(results))
    (workdir / "inventory").write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    started = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(workdir / "inventory"), str(path)],
                          env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit("%s failed:\n%s%s" % (name, proc.stdout[-3000:], proc.stderr[-2000:]))
    lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.exists() else []
    return elapsed, (lines[-1]["result"] if lines else {})


def main():
    base = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    started = []
    try:
        run(base, started)
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def run(base, started):
    import redis

    source = RedisServer(base / "source", password=PASSWORD).start()
    started.append(source)
    print("filling %d keys ..." % KEYS, flush=True)
    fill(source, base / "fill.resp")
    memory = source.client().info("memory")["used_memory"]
    print("source: %d keys, %.0f MiB used" % (source.client().dbsize(), memory / 2 ** 20), flush=True)
    rdb = base / "source.rdb"
    subprocess.run(["redis-cli", "-p", str(source.port), "--rdb", str(rdb)], env=dict(os.environ, REDISCLI_AUTH=PASSWORD),
                   check=True, capture_output=True)

    times = {"cold_load": [cold_load(base, rdb, "cold%d" % i) for i in range(ROUNDS)]}

    # the RESTORE stream for --pipe, and a plain redis-py copy (read, then write)
    conn = source.client()
    keys = list(conn.scan_iter(count=10000))
    clock = time.perf_counter()
    dumped = []
    for i in range(0, len(keys), BATCH):
        p = conn.pipeline(transaction=False)
        for key in keys[i:i + BATCH]:
            p.dump(key)
            p.pttl(key)
        replies = p.execute()
        dumped += [(key, replies[2 * j], max(replies[2 * j + 1], 0)) for j, key in enumerate(keys[i:i + BATCH])]
    times["py_read"] = time.perf_counter() - clock
    with open(base / "restore.resp", "wb") as handle:
        for key, payload, ttl in dumped:
            handle.write(resp(b"RESTORE", key, ttl, payload, b"REPLACE"))
    py_target = RedisServer(base / "py", password=PASSWORD).start()
    started.append(py_target)
    target_conn = py_target.client()
    clock = time.perf_counter()
    for i in range(0, len(dumped), BATCH):
        p = target_conn.pipeline(transaction=False)
        for key, payload, ttl in dumped[i:i + BATCH]:
            p.restore(key, ttl, payload, replace=True)
        p.execute()
    times["py_write"] = time.perf_counter() - clock
    py_target.stop()
    del dumped

    store = base / "store"
    _elapsed, made = playbook(base, "backup", "runbook.ops.redis_backup: %s" % json.dumps(
        {"login_port": source.port, "login_password": PASSWORD, "name": "bench", "store": {"dir": str(store)},
         "method": "replication"}))
    artifact = made["backup"]["path"]

    live = {"auto": []}
    times.update(pipe=[], empty=[])
    for round_ in range(ROUNDS):  # the floor, start-up and the stream side by side, round after round
        floor_target = RedisServer(base / ("floor%d" % round_), password=PASSWORD).start()
        started.append(floor_target)
        times["pipe"].append(pipe(floor_target, base / "restore.resp"))
        floor_target.stop()
        times["empty"].append(playbook(base, "empty", "ansible.builtin.meta: noop")[0])
        live["auto"].append(live_restore(base, started, artifact, "auto", round_))
    live["migrate"] = [live_restore(base, started, artifact, "migrate", 0)]  # through scratch servers: once

    file_dir = base / "file"
    file_dir.mkdir()
    port = free_port()
    conf = file_dir / "redis.conf"
    conf.write_text("port %d\nbind 127.0.0.1\ndir %s\ndaemonize yes\npidfile %s/redis.pid\nlogfile %s/redis.log\n"
                    "save \"\"\nappendonly no\nrequirepass %s\n" % (port, file_dir, file_dir, file_dir, PASSWORD))
    start = [shutil.which("redis-server"), str(conf)]
    stop = ["sh", "-c", "kill $(cat %s/redis.pid); while kill -0 $(cat %s/redis.pid) 2>/dev/null; do sleep 0.02; done"
            % (file_dir, file_dir)]
    subprocess.run(start, check=True)
    wait_loaded(port, PASSWORD)
    filed = []
    try:
        for _round in range(ROUNDS):
            elapsed, result = playbook(base, "file", "runbook.ops.redis_restore: %s" % json.dumps(
                {"login_port": port, "login_password": PASSWORD, "src": artifact, "mode": "file", "safety_backup": False,
                 "stop_command": stop, "start_command": start}))
            filed.append((elapsed, result["restore"]))
            assert redis.Redis(port=port, password=PASSWORD).dbsize() == KEYS
    finally:
        subprocess.run(stop, check=False)
    report(times, live, filed, memory)


def live_restore(base, started, artifact, transport, round_):
    """(whole playbook seconds, the restore report) of mode live into an empty server."""
    target = RedisServer(base / ("live-%s-%d" % (transport, round_)), password=PASSWORD).start()
    started.append(target)
    elapsed, result = playbook(base, "live-" + transport, "runbook.ops.redis_restore: %s" % json.dumps(
        {"login_port": target.port, "login_password": PASSWORD, "src": artifact, "safety_backup": False,
         "transport": transport}))
    assert target.client().dbsize() == KEYS, target.client().dbsize()
    target.stop()
    return elapsed, result["restore"]


def median(values):
    return sorted(values)[len(values) // 2]


def median_run(runs):
    """The (seconds, report) run of median time."""
    return sorted(runs, key=lambda run: run[0])[len(runs) // 2]


def report(times, live, filed, memory):
    empty, floor, cold = median(times["empty"]), median(times["pipe"]), median(times["cold_load"])
    floor_rate = KEYS / floor
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print("\nredis_restore benchmark: %d keys, %.0f MiB in memory; medians of %d rounds (ansible runs also minus an empty "
          "playbook of %.2f s; load %s)" % (KEYS, memory / 2 ** 20, ROUNDS, empty, load))
    print("  Redis cold load of the RDB          %7.2f s  (rounds %s)" % (cold, spread(times["cold_load"])))
    print("  redis-cli --pipe RESTORE (floor)    %7.2f s  %8.0f keys/s  (rounds %s)" % (floor, floor_rate, spread(times["pipe"])))
    print("  redis-py DUMP read / RESTORE write  %7.2f / %.2f s  %8.0f / %.0f keys/s" % (
        times["py_read"], times["py_write"], KEYS / times["py_read"], KEYS / times["py_write"]))
    for transport, label in (("auto", "live (stream)"), ("migrate", "live, transport migrate")):
        wall, phases = median_run(live[transport])
        task = wall - empty
        print("  redis_restore %-22s%7.2f s  (task %.2f s, %.0f keys/s; module %.2f s: read+decode %.2f s, %s"
              "copy %.2f s, %.0f keys/s)%s" % (
                  label, wall, task, KEYS / task, phases["duration"], phases["read_duration"],
                  "RDB check %.2f s, " % phases["scan_duration"] if phases.get("transport") == "stream" else
                  "scratch loads %.2f s, key scan %.2f s, " % (phases.get("scratch_load_duration", 0), phases.get("scan_duration", 0)),
                  phases["load_duration"], phases["restored"] / phases["load_duration"],
                  "  (rounds %s)" % spread([run[0] for run in live[transport]]) if len(live[transport]) > 1 else ""))
    live_wall, live_phases = median_run(live["auto"])
    file_wall, file_phases = median_run(filed)
    live_task, file_task = live_wall - empty, file_wall - empty
    print("  redis_restore file                  %7.2f s  (task %.2f s; module %.2f s: read+decode %.2f s, swap + restart + "
          "load %.2f s)  (rounds %s)" % (file_wall, file_task, file_phases["duration"], file_phases["read_duration"],
                                         file_phases["load_duration"], spread([run[0] for run in filed])))
    print("\nratios (the whole task as the operator waits for it):")
    print("  live whole task / --pipe floor      %5.0f %%  (goal >= 80 %%; the copy phase alone %.0f %%)" % (
        100 * KEYS / live_task / floor_rate, 100 * live_phases["restored"] / live_phases["load_duration"] / floor_rate))
    print("  file whole task / cold load         %5.2fx  (goal <= 1.2x plus 0.5 s, i.e. <= %.2f s: %.2f s)" % (
        file_task / cold, 1.2 * cold + 0.5, file_task))
    print("  file swap+restart+load / cold load  %5.2fx" % (file_phases["load_duration"] / cold))


def spread(values):
    return " ".join("%.2f" % value for value in values)


if __name__ == "__main__":
    main()
