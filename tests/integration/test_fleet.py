"""The fleet: provisioning, backups, timers and metrics over real SSH to real systemd hosts (issue 9).

One fleet per test session (db1, cache1, app1, app2), started by the ``fleet`` fixture from tests/harness/fleet.py
and torn down afterwards; these tests share one xdist worker (``--dist loadgroup``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.xdist_group("fleet")

SITE = REPO / "playbooks" / "site.yml"
FLEET_VARS = REPO / "inventories" / "fleet"


def play(ansible, fleet, playbook=SITE, **kwargs):
    return ansible.play(None, playbook_path=playbook, inventory=FLEET_VARS,
                        extra_args=["-i", str(fleet.inventory)] + list(kwargs.pop("extra_args", [])), **kwargs)


def changed(run):
    return sorted({"%s: %s" % (r["host"], r["task"]) for r in run.results
                   if r["status"] == "ok" and r["result"].get("changed")})


def summary(run, task):
    return run.task(task)["result"]["msg"]


@pytest.fixture(scope="module")
def provisioned(fleet, module_ansible):
    """site.yml once with backup_run_now: provision -> health -> backup (and the timers' first run) -> verify."""
    ansible = module_ansible
    started = time.monotonic()
    run = play(ansible, fleet, extra_vars={"backup_run_now": True})
    assert run.rc == 0, run
    return {"run": run, "seconds": round(time.monotonic() - started, 1), "ansible": ansible}


def test_site_provisions_the_fleet_over_ssh_and_a_second_run_changes_nothing(fleet, provisioned):
    run = provisioned["run"]
    provision = summary(run, "Show one line per provisioned host")
    assert any(line.startswith("db1: Debian 12") and "PostgreSQL 15 on port 5432" in line for line in provision)
    assert any(line.startswith("cache1:") and "renamed FLUSHALL, FLUSHDB, CONFIG" in line for line in provision)
    assert sum("Docker with Compose 2." in line for line in provision) == 2
    backups = summary(run, "Show one line per backup")
    assert any(line.startswith("db1: app_") and "verified=True" in line for line in backups), backups
    assert any(line.startswith("cache1: cache_") for line in backups), backups
    verified = summary(run, "Show one line per backup verified")
    assert any(line.startswith("db1: app_") and "valid at level list" in line for line in verified), verified
    again = play(provisioned["ansible"], fleet)
    assert again.rc == 0, again
    assert changed(again) == []


def test_services_answer_and_users_log_in_across_hosts(fleet, provisioned):
    db = fleet.host("db1")["ip"]
    # the app user logs in over the network from another host; the backup user can read but not write
    out = fleet.ssh("cache1", "PGPASSWORD=fleet-app-password psql -h %s -U app -d app -Atc 'SELECT current_user'" % db)
    assert out.stdout.strip() == "app"
    out = fleet.ssh("db1", "PGPASSWORD=fleet-backup-password psql -h 127.0.0.1 -U backup -d app -Atc "
                    "'CREATE TABLE nope (a int)' 2>&1", check=False).stdout
    assert "permission denied" in out
    settings = fleet.ssh("db1", "sudo -u postgres psql -Atc 'SHOW shared_buffers' -c 'SHOW shared_preload_libraries'").stdout
    assert "MB" in settings and "pg_stat_statements" in settings
    redis = fleet.ssh("cache1", "redis-cli -a fleet-redis-password --no-auth-warning CONFIG GET maxmemory 2>&1; "
                      "redis-cli -a fleet-redis-password --no-auth-warning CONFIG_fleet GET maxmemory").stdout
    assert "unknown command" in redis.lower() and "268435456" in redis


def test_the_redis_modules_work_against_the_hardened_server(fleet, provisioned):
    """FLUSHDB/FLUSHALL gone and CONFIG renamed: backup through the ACL user, live restore with flush_first."""
    cli = "redis-cli -a fleet-redis-password --no-auth-warning "
    fleet.ssh("cache1", cli + "SET fleet:key value >/dev/null")
    tasks = [
        {"name": "Back up the hardened Redis", "runbook.ops.redis_backup": {
            "login_host": "127.0.0.1", "login_user": "backup", "login_password": "fleet-redis-backup-password",
            "name": "hardened", "store": {"dir": "/var/backups/hardened"}}},
        {"name": "Put a stale key into db 3", "ansible.builtin.command": cli + "-n 3 SET stale 1"},
        {"name": "Restore it into db 3 live", "runbook.ops.redis_restore": {
            "login_host": "127.0.0.1", "login_password": "fleet-redis-password", "name": "hardened", "src": "latest",
            "store": {"dir": "/var/backups/hardened"}, "db_map": {"0": 3}, "flush_first": True,
            "safety_backup": False}},
    ]
    playbook = provisioned["ansible"].workdir / "hardened.yml"
    playbook.write_text(json.dumps([{"hosts": "cache1", "gather_facts": False, "become": True, "tasks": tasks}]))
    run = play(provisioned["ansible"], fleet, playbook=playbook)
    assert run.rc == 0, run
    backup = run.task("Back up the hardened Redis")["result"]["backup"]
    assert backup["method"] == "replication" and backup["verified"] is True
    restore = run.task("Restore it into db 3 live")["result"]["restore"]
    assert restore["flushed"] == {"3": 1} and restore["per_db"]["0"]["target_db"] == 3
    out = fleet.ssh("cache1", "redis-cli -a fleet-redis-password --no-auth-warning -n 3 GET fleet:key; "
                    "redis-cli -a fleet-redis-password --no-auth-warning -n 3 EXISTS stale").stdout.split()
    assert out == ["value", "0"]


def test_timers_run_the_modules_on_the_host_and_a_missed_backup_shows_as_stale(fleet, provisioned):
    timers = fleet.ssh("db1", "systemctl list-timers --all --no-pager").stdout
    assert "runbook-job-postgres-app.timer" in timers and "runbook-job-verify-postgres-app.timer" in timers
    assert "runbook-backup-metrics.timer" in timers

    def metrics():
        text = fleet.ssh("db1", "cat /var/lib/prometheus/node-exporter/runbook_backup.prom").stdout
        values = {}
        for line in text.splitlines():
            if line.startswith("runbook_backup_") and 'job="postgres-app"' in line:
                values[line.split("{")[0][len("runbook_backup_"):]] = float(line.rsplit(" ", 1)[1])
        return values

    fresh = metrics()
    assert fresh["last_result"] == 1 and fresh["stale"] == 0 and fresh["last_success_timestamp_seconds"] > 0
    # the job's interval becomes 3 s and its database goes away: the next run fails, then the signal turns stale
    fleet.ssh("db1", "sudo python3 -c \"import json; p='/etc/runbook-ops/jobs/postgres-app.json'; j=json.load(open(p)); "
                     "j['interval_seconds']=3; j['args']['skip_if_newer_than']=None; json.dump(j, open(p, 'w'))\"")
    fleet.ssh("db1", "sudo systemctl stop postgresql@15-main")
    try:
        failed = fleet.ssh("db1", "sudo systemctl start runbook-job@postgres-app.service", check=False)
        assert failed.returncode != 0
        time.sleep(4)
        fleet.ssh("db1", "sudo systemctl start runbook-backup-metrics.service")
        missed = metrics()
        assert missed["last_result"] == 0 and missed["stale"] == 1
        assert missed["last_success_timestamp_seconds"] == fresh["last_success_timestamp_seconds"]
    finally:
        fleet.ssh("db1", "sudo systemctl start postgresql@15-main")
    fleet.ssh("db1", "sudo systemctl start runbook-job@postgres-app.service")
    recovered = metrics()
    assert recovered["last_result"] == 1 and recovered["stale"] == 0 and recovered["last_size_bytes"] > 0


def test_the_weekly_database_maintenance_runs_from_its_timer(fleet, provisioned):
    """db_maintenance_schedule in the inventory: the backup role scheduled pg_maintenance (standard) on db1."""
    timers = fleet.ssh("db1", "systemctl list-timers --all --no-pager").stdout
    assert "runbook-job-maintain-postgres-app.timer" in timers
    fleet.ssh("db1", "sudo -u postgres psql -XAqd app -c 'CREATE TABLE IF NOT EXISTS churn AS "
                     "SELECT g AS id FROM generate_series(1, 1000) g; DELETE FROM churn WHERE id > 10'")
    fleet.ssh("db1", "sudo systemctl start runbook-job@maintain-postgres-app.service")
    state = json.loads(fleet.ssh("db1", "sudo cat /var/lib/runbook-ops/state/maintain-postgres-app.json").stdout)
    assert state["last_result"] == 1, state
    metrics = fleet.ssh("db1", "cat /var/lib/prometheus/node-exporter/runbook_backup.prom").stdout
    assert 'runbook_backup_last_result{job="maintain-postgres-app",task="maintenance",kind="postgres",name="app"} 1' \
        in metrics
    vacuumed = fleet.ssh("db1", "sudo -u postgres psql -XAtd app -c \"SELECT n_dead_tup, last_vacuum IS NOT NULL "
                                "FROM pg_stat_user_tables WHERE relname = 'churn'\"").stdout.strip()
    assert vacuumed == "0|t"
    fleet.ssh("db1", "sudo -u postgres psql -XAqd app -c 'DROP TABLE churn'")


APP_TEMPLATE = """services:
  web:
    image: "runbook-app:{{ compose_app_version }}"
    command: [httpd, -f, -p, "8080", -h, /www]
    ports: ["8080:8080"]
    stop_grace_period: 2s
    healthcheck:
      test: [CMD, wget, -q, -O, /dev/null, "http://127.0.0.1:8080/health/"]
      interval: 1s
  worker:
    image: "runbook-app:{{ compose_app_version }}"
    command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    stop_grace_period: 5s
"""


def app_images(ansible, fleet):
    """Three versions of a busybox web app built inside each app host's own engine; v2 reports itself unhealthy."""
    tasks = [
        {"name": "Install the engine", "ansible.builtin.include_role": {"name": "runbook.ops.docker"}},
        {"name": "Create the build directory", "ansible.builtin.file": {"path": "/root/app", "state": "directory",
                                                                        "mode": "0755"}},
        {"name": "Copy busybox", "ansible.builtin.copy": {"src": "/bin/busybox", "dest": "/root/app/busybox",
                                                          "mode": "0755"}},
    ]
    for version, status in (("v1", "healthy"), ("v2", "unhealthy"), ("v3", "healthy")):
        tasks += [
            {"name": "Create the pages of %s" % version, "ansible.builtin.file": {
                "path": "/root/app/www-%s/health" % version, "state": "directory", "mode": "0755"}},
            {"name": "Write the page of %s" % version, "ansible.builtin.copy": {
                "dest": "/root/app/www-%s/health/index.html" % version,
                "content": json.dumps({"status": status, "version": version}), "mode": "0644"}},
            {"name": "Build %s" % version, "ansible.builtin.shell": (
                "cd /root/app && printf 'FROM scratch\\nCOPY busybox /bin/busybox\\nRUN [\"/bin/busybox\", "
                "\"--install\", \"-s\", \"/bin\"]\\nCOPY www-%s /www\\nENV PATH=/bin\\n' > Dockerfile.%s && "
                "docker build -q -t runbook-app:%s -f Dockerfile.%s ." % (version, version, version, version)),
             "changed_when": True}]
    playbook = ansible.workdir / "app_images.yml"
    playbook.write_text(json.dumps([{"hosts": "app", "gather_facts": True, "become": True, "tasks": tasks}]))
    run = play(ansible, fleet, playbook=playbook)
    assert run.rc == 0, run


def served(fleet, host):
    from urllib.request import urlopen
    try:
        with urlopen("http://%s:8080/health/" % fleet.host(host)["ip"], timeout=5) as response:
            return json.loads(response.read())["version"]
    except OSError as exc:
        return "down: %s" % exc


def releases(fleet, host):
    out = fleet.ssh(host, "sudo cat /opt/shop/releases.json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else []


def marks(fleet):
    return fleet.ssh("db1", "sudo -u postgres psql -d app -Atc 'SELECT m FROM marks ORDER BY m'").stdout.split()


def test_deploys_are_gated_a_bad_release_rolls_back_and_a_rollback_restores_its_backup(fleet, provisioned):
    ansible = provisioned["ansible"]
    app_images(ansible, fleet)
    template = ansible.workdir / "shop.compose.yaml.j2"
    template.write_text(APP_TEMPLATE)
    common = {"compose_app_name": "shop", "compose_app_template": str(template), "compose_app_health_deadline": 8,
              "compose_app_health_targets": [{"name": "web", "type": "http",
                                              "url": "http://{{ ansible_host }}:8080/health/",
                                              "json": {"status": "healthy"}}]}
    deploy = REPO / "playbooks" / "deploy.yml"

    def deploy_version(version, backup=False):
        return play(ansible, fleet, playbook=deploy,
                    extra_vars=dict(common, compose_app_version=version, deploy_backup=backup))

    first = deploy_version("v1")
    assert first.rc == 0, first
    assert served(fleet, "app1") == "v1" and served(fleet, "app2") == "v1"

    # v2 fails its gate on app1: rolled back there, app2 never touched, the play fails with a summary
    bad = deploy_version("v2")
    assert bad.rc != 0
    summary = bad.task("Stop the rollout with a summary")
    assert summary["host"] == "app1"
    assert "app1: release v2 failed" in summary["result"]["msg"] and "failed targets: web" in summary["result"]["msg"]
    assert "rolled back to v1, which is healthy" in summary["result"]["msg"]
    assert not [r for r in bad.results if r["host"] == "app2" and r["task"] != "Gathering Facts"]
    assert served(fleet, "app1") == "v1" and served(fleet, "app2") == "v1"
    history = releases(fleet, "app1")
    assert [(e["version"], e["rolled_back"]) for e in history] == [("v1", False), ("v2", True), ("v1", False)]
    assert history[-1]["rolled_back_from"] == "v2"
    assert [e["version"] for e in releases(fleet, "app2")] == ["v1"]
    assert fleet.ssh("app2", "test -e /opt/shop/releases/v2", check=False).returncode != 0

    # a good version with a pre-deploy backup reaches both hosts; the same deploy again changes nothing
    fleet.ssh("db1", "sudo -u postgres psql -d app -qc 'CREATE TABLE IF NOT EXISTS marks (m text)' "
                     "-c \"INSERT INTO marks VALUES ('before-v3')\"")
    good = deploy_version("v3", backup=True)
    assert good.rc == 0, good
    assert served(fleet, "app1") == "v3" and served(fleet, "app2") == "v3"
    recorded = releases(fleet, "app2")[-1]
    assert recorded["version"] == "v3" and recorded["backup"]["backups"][0]["db"] == "app"
    again = deploy_version("v3")
    assert again.rc == 0, again
    assert [r for r in changed(again) if not r.startswith("db1")] == []

    # the release's migration wrote data; rolling back restores the backup taken before it
    fleet.ssh("db1", "sudo -u postgres psql -d app -qc \"INSERT INTO marks VALUES ('after-v3')\"")
    assert marks(fleet) == ["after-v3", "before-v3"]
    back = play(ansible, fleet, playbook=REPO / "playbooks" / "rollback.yml", extra_vars=dict(
        common, rollback_restore_db=True))
    assert back.rc == 0, back
    assert served(fleet, "app1") == "v1" and served(fleet, "app2") == "v1"
    assert marks(fleet) == ["before-v3"]
    assert [e["version"] for e in releases(fleet, "app1")][-2:] == ["v3", "v1"]

    # scale.yml on the current release, gated by health; the same scale again changes nothing
    scale = REPO / "playbooks" / "scale.yml"
    up = play(ansible, fleet, playbook=scale, extra_vars=dict(common, scale={"worker": 3}))
    assert up.rc == 0, up
    shown = [r["result"].get("msg", "") for r in up.results if r["task"] == "Show the replicas of each service"]
    assert any("worker 1 -> 3" in line for line in shown), shown
    workers = fleet.ssh("app2", "sudo docker ps -q --filter label=com.docker.compose.service=worker").stdout.split()
    assert len(workers) == 3
    again = play(ansible, fleet, playbook=scale, extra_vars=dict(common, scale={"worker": 3}))
    assert again.rc == 0 and changed(again) == [], again
    down = play(ansible, fleet, playbook=scale, extra_vars=dict(common, scale={"worker": 1}))
    assert down.rc == 0, down
    assert any("worker 3 -> 1 (2 stopped)" in r["result"].get("msg", "") for r in down.results
               if r["task"] == "Show the replicas of each service")
    assert served(fleet, "app1") == "v1"


def test_a_host_reboots_and_its_services_come_back(fleet, provisioned):
    reboot = {"boot_time_command": "{{ fleet_reboot_boot_time_command }}", "reboot_timeout": 120}
    tasks = [{"name": "Reboot", "ansible.builtin.reboot": reboot},
             {"name": "Wait for PostgreSQL", "ansible.builtin.wait_for": {"port": 5432, "timeout": 60}}]
    playbook = provisioned["ansible"].workdir / "reboot.yml"
    playbook.write_text(json.dumps([{"hosts": "db1", "gather_facts": False, "become": True, "tasks": tasks}]))
    run = play(provisioned["ansible"], fleet, playbook=playbook)
    assert run.rc == 0, run
    assert run.task("Reboot")["result"]["rebooted"] is True
    assert "app" in fleet.ssh("db1", "sudo -u postgres psql -Atc 'SELECT datname FROM pg_database'").stdout


def test_pg_maintenance_over_ssh_reports_real_bloat_and_heavy_needs_a_window(fleet, provisioned):
    """A table with 80 % of its rows deleted and its index churned, on db1: bloat before and after, over SSH."""
    fleet.ssh("db1", "sudo -u postgres psql -XAqd app -c 'DROP TABLE IF EXISTS ledger' -c 'CREATE TABLE ledger "
                     "(id int PRIMARY KEY, note text) WITH (autovacuum_enabled = false)' -c 'INSERT INTO ledger SELECT g, "
                     "md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 200000) g' -c 'CREATE INDEX ledger_note "
                     "ON ledger (note)' -c 'DELETE FROM ledger WHERE id % 5 <> 0' -c 'UPDATE ledger SET note = md5(note)' "
                     "-c 'VACUUM ANALYZE ledger'")
    common = {"db": "app", "tables": ["ledger"], "min_size": 0}
    tasks = [{"name": "Standard maintenance", "runbook.ops.pg_maintenance": dict(common, level="standard")},
             {"name": "Heavy maintenance in the window", "runbook.ops.pg_maintenance": dict(
                 common, level="heavy", maintenance_window=True)}]
    playbook = provisioned["ansible"].workdir / "maintain.yml"
    playbook.write_text(json.dumps([{"hosts": "db1", "gather_facts": False, "become": True, "tasks": tasks,
                                     "module_defaults": {"group/runbook.ops.postgres": {
                                         "login_user": "postgres", "login_unix_socket": "/var/run/postgresql"}}}]))
    refused = play(provisioned["ansible"], fleet, playbook=REPO / "playbooks" / "db_maintenance.yml",
                   extra_vars={"db_maintenance_level": "heavy", "db_maintenance_schedule": False})
    assert refused.rc != 0
    assert "maintenance_window: true" in refused.task("Maintain each database", host="db1")["result"]["results"][0]["msg"]
    run = play(provisioned["ansible"], fleet, playbook=playbook)
    assert run.rc == 0, run
    standard = run.task("Standard maintenance")["result"]
    note = next(i for i in standard["indexes"] if i["index"] == "ledger_note")
    assert note["bloat_percent_before"] >= 50 and note["bloat_percent_after"] < 30, note
    ledger = next(t for t in standard["tables"] if t["table"] == "ledger")
    assert ledger["bloat_percent_before"] >= 50 and ledger["size_after"] == ledger["size_before"]
    heavy = next(t for t in run.task("Heavy maintenance in the window")["result"]["tables"] if t["table"] == "ledger")
    assert heavy["bloat_percent_after"] < 20 and heavy["size_after"] < heavy["size_before"] / 2, heavy
    print("fleet maintenance: index %s%% -> %s%% bloat, table %s%% -> %s%%, %s -> %s bytes, standard %s s, heavy %s s" % (
        note["bloat_percent_before"], note["bloat_percent_after"], heavy["bloat_percent_before"],
        heavy["bloat_percent_after"], heavy["size_before"], heavy["size_after"], standard["duration"],
        run.task("Heavy maintenance in the window")["result"]["duration"]))
    fleet.ssh("db1", "sudo -u postgres psql -XAqd app -c 'DROP TABLE ledger'")


def test_a_maintenance_window_over_the_fleet_logs_every_check_on_each_host(fleet, provisioned):
    values = {"compose_app_name": "shop",
              "maintenance_window_databases": "{{ ['app'] if 'db' in group_names else [] }}",
              "maintenance_window_postgres": "{{ db_maintenance_postgres | default({}) }}",
              "maintenance_window_projects": "{{ ['shop'] if 'app' in group_names else [] }}",
              "maintenance_window_stop_services": "{{ ['worker'] if 'app' in group_names else [] }}"}
    path = provisioned["ansible"].workdir / "window_vars.json"
    path.write_text(json.dumps(values))
    run = play(provisioned["ansible"], fleet, playbook=REPO / "playbooks" / "maintenance.yml",
               extra_args=["-e", "@%s" % path])
    assert run.rc == 0, run
    lines = run.task("Show one line per host")["result"]["msg"]
    print("fleet window: %s" % lines)
    for host, expected in (("db1", {"backups", "long-running queries"}), ("cache1", {"backups"}),
                           ("app1", {"services containers:shop"}), ("app2", {"services containers:shop"})):
        log = fleet.ssh(host, "sudo sh -c 'cat /var/lib/runbook-ops/maintenance/*/window.log'").stdout
        checks = {entry["check"]: entry for entry in map(json.loads, log.splitlines())}
        assert {"window opened", "system state", "maintenance mode on", "maintenance mode off",
                "window closed"} | expected <= set(checks), (host, sorted(checks))
        assert all(entry["ok"] for entry in checks.values()), (host, checks)
        line = next(line for line in lines if line.startswith(host + " "))
        assert "%d/%d checks ok" % (len(checks), len(checks)) in line, line
    for host in ("app1", "app2"):  # the workers stopped for the window are back
        assert len(fleet.ssh(host, "sudo docker ps -q --filter label=com.docker.compose.service=worker").stdout.split()) == 1


# --- rolling patching (issue 12): a local apt repository served to the fleet ---------------------------------------

PATCH = REPO / "playbooks" / "patch.yml"
KERNEL_POSTINST = "touch /var/run/reboot-required; echo runbook-patch-kernel >> /var/run/reboot-required.pkgs"
BREAKER_POSTINST = ("docker ps -q --filter label=com.docker.compose.service=web | xargs -r docker stop -t 1 >/dev/null"
                    " || true")
ALL_HOSTS = ("app1", "app2", "cache1", "db1")


def version(fleet, host, package):
    out = fleet.ssh(host, "dpkg-query -W -f '${Version}' %s 2>/dev/null" % package, check=False)
    return out.stdout.strip() or None


def boot_mark(fleet, host):
    return fleet.ssh(host, "cut -d' ' -f22 /proc/1/stat").stdout.strip()


def patch_lines(run):
    return run.task("Show one line per host")["result"]["msg"]


@pytest.fixture(scope="module")
def patch_repo(fleet, provisioned, tmp_path_factory):
    """The fleet's apt sources become the test repository only (deterministic: no Debian update joins in); the
    packages every host has at 1.0 are installed, app1 gets one whose next version breaks its web service and cache1
    one whose next version asks for a reboot. Afterwards the Debian sources come back."""
    from apt_repo import AptRepo
    repo = AptRepo(tmp_path_factory.mktemp("apt-repo"))
    repo.add("fleet-security", "runbook-patch-common", "1.0")
    repo.add("fleet", "runbook-patch-feature", "1.0")
    repo.add("fleet", "runbook-patch-kernel", "1.0")
    repo.add("fleet-security", "runbook-patch-breaker", "1.0")
    url = repo.serve(fleet.state["gateway"])
    gateway = fleet.state["gateway"]
    purge = "sudo dpkg --purge runbook-patch-common runbook-patch-feature runbook-patch-kernel runbook-patch-breaker >/dev/null"
    setup = (purge + " && sudo mv /etc/apt/sources.list /etc/apt/sources.list.runbook-test && "
             "printf 'deb [trusted=yes] %s/ fleet main\\ndeb [trusted=yes] %s/ fleet-security main\\n' "
             "| sudo tee /etc/apt/sources.list.d/runbook-test.list >/dev/null && "
             "echo 'Acquire::http::Proxy::%s \"DIRECT\";' | sudo tee /etc/apt/apt.conf.d/02runbook-test >/dev/null && "
             "sudo apt-get update -qq --error-on=any" % (url, url, gateway))
    extra = {"cache1": " runbook-patch-kernel", "app1": " runbook-patch-breaker"}
    try:
        for host in ALL_HOSTS:
            fleet.ssh(host, setup)
            fleet.ssh(host, "sudo DEBIAN_FRONTEND=noninteractive apt-get install -qq -y runbook-patch-common "
                            "runbook-patch-feature%s >/dev/null" % extra.get(host, ""))
        yield repo
    finally:
        restore = ("; sudo rm -f /etc/apt/sources.list.d/runbook-test.list /etc/apt/apt.conf.d/02runbook-test; "
                   "sudo mv /etc/apt/sources.list.runbook-test /etc/apt/sources.list; sudo apt-get update -qq")
        for host in ALL_HOSTS:
            fleet.ssh(host, purge + restore, check=False)
        repo.stop()


def patch_vars(ansible, **overrides):
    """The app hosts drain their Celery-like workers and are gated on the web release too."""
    web = [{"name": "web", "type": "http", "url": "http://{{ ansible_host }}:8080/health/", "json": {"status": "healthy"}}]
    values = {"compose_app_name": "shop", "fleet_test_web": web,
              "patching_health_targets": "{{ health_check_targets + (fleet_test_web if 'app' in group_names else []) }}",
              "patching_drain_services": "{{ ['worker'] if 'app' in group_names else [] }}",
              "patching_exclude": "{{ ['runbook-patch-feature'] if inventory_hostname == 'db1' else [] }}",
              "patching_health_deadline": 15}
    values.update(overrides)
    path = ansible.workdir / "patch_vars.json"
    path.write_text(json.dumps(values))
    return ["-e", "@%s" % path]


def test_a_rolling_patch_reboots_only_the_host_that_needs_it_and_a_second_run_changes_nothing(fleet, provisioned,
                                                                                              patch_repo):
    ansible = provisioned["ansible"]
    patch_repo.add("fleet-security", "runbook-patch-common", "1.1")
    patch_repo.add("fleet", "runbook-patch-feature", "1.1")
    patch_repo.add("fleet", "runbook-patch-kernel", "1.1", postinst=KERNEL_POSTINST)
    lists = "sudo md5sum /var/lib/apt/lists/*_Packages"
    before_lists = {host: fleet.ssh(host, lists).stdout for host in ALL_HOSTS}
    boots = {host: boot_mark(fleet, host) for host in ALL_HOSTS}

    # check mode: the pending upgrades per host, from fresh indexes, and not one byte written
    check = play(ansible, fleet, playbook=PATCH, extra_args=patch_vars(ansible) + ["--check"])
    assert check.rc == 0, check
    lines = patch_lines(check)
    assert "app1: 2 of 2 pending upgrades would be applied (runbook-patch-common, runbook-patch-feature)" in lines
    assert any(line.startswith("cache1: 3 of 3 pending") and "runbook-patch-kernel" in line for line in lines), lines
    assert "db1: 1 of 2 pending upgrades would be applied (runbook-patch-common)" in lines
    assert {host: fleet.ssh(host, lists).stdout for host in ALL_HOSTS} == before_lists
    assert [version(fleet, h, "runbook-patch-common") for h in ALL_HOSTS] == ["1.0"] * 4

    started = time.monotonic()
    run = play(ansible, fleet, playbook=PATCH, extra_args=patch_vars(ansible))
    seconds = round(time.monotonic() - started, 1)
    assert run.rc == 0, run
    upgraded = [r["host"] for r in run.results if r["task"] == "Upgrade the packages"]
    assert upgraded == ["app1", "app2", "cache1", "db1"]  # the app hosts first, the database primary last
    lines = patch_lines(run)
    print("patch run: %s s; %s" % (seconds, lines))
    for host in ALL_HOSTS:
        line = next(line for line in lines if line.startswith(host + ":"))
        assert "health healthy" in line, line
        assert (", rebooted" in line) == (host == "cache1"), line
    assert "left out: runbook-patch-feature" in next(line for line in lines if line.startswith("db1:"))
    assert [version(fleet, h, "runbook-patch-common") for h in ALL_HOSTS] == ["1.1"] * 4
    assert [version(fleet, h, "runbook-patch-feature") for h in ALL_HOSTS] == ["1.1", "1.1", "1.1", "1.0"]
    assert version(fleet, "cache1", "runbook-patch-kernel") == "1.1"
    assert {h: boot_mark(fleet, h) != boots[h] for h in ALL_HOSTS} == {
        "app1": False, "app2": False, "cache1": True, "db1": False}
    upgrade = run.task("Upgrade the packages", host="cache1")["result"]
    assert upgrade["reboot_required"] is True and upgrade["reboot_required_packages"] == ["runbook-patch-kernel"]
    assert {p["name"]: (p["before"], p["after"]) for p in upgrade["packages"]}["runbook-patch-kernel"] == ("1.0", "1.1")
    # the drained workers are back, the web release never stopped serving
    for host in ("app1", "app2"):
        workers = fleet.ssh(host, "sudo docker ps -q --filter label=com.docker.compose.service=worker").stdout.split()
        assert len(workers) == 1 and served(fleet, host) == "v1"
        assert fleet.ssh(host, "test -e /var/lib/runbook-ops/patching/drain.json", check=False).returncode != 0

    again = play(ansible, fleet, playbook=PATCH, extra_args=patch_vars(ansible))
    assert again.rc == 0, again
    assert changed(again) == []
    assert not [r for r in again.results if r["status"] != "skipped"
                and r["task"] in ("Upgrade the packages", "Reboot, as the upgrade requires", "Drain the host")]


def test_a_host_that_fails_its_post_patch_gate_stops_the_rollout_and_stays_drained(fleet, provisioned, patch_repo):
    ansible = provisioned["ansible"]
    patch_repo.add("fleet-security", "runbook-patch-common", "1.2")
    patch_repo.add("fleet", "runbook-patch-feature", "1.2")
    patch_repo.add("fleet-security", "runbook-patch-breaker", "1.1", postinst=BREAKER_POSTINST)
    run = play(ansible, fleet, playbook=PATCH, extra_args=patch_vars(ansible, patching_security_only=True,
                                                                     patching_health_deadline=6))
    assert run.rc != 0
    stop = run.task("Stop the rollout at a host that fails its gate")
    assert stop["host"] == "app1"
    msg = stop["result"]["msg"]
    assert "app1: post-patch health gate failed (web" in msg and "not rebooted" in msg, msg
    assert "packages changed: runbook-patch-breaker, runbook-patch-common" in msg, msg
    assert not [r for r in run.results if r["host"] in ("app2", "cache1", "db1")
                and r["task"] != "Put the hosts in patching order"]  # the controller's work, run once
    assert [version(fleet, h, "runbook-patch-common") for h in ALL_HOSTS] == ["1.2", "1.1", "1.1", "1.1"]
    assert version(fleet, "app1", "runbook-patch-feature") == "1.1"  # not a security fix
    # app1 stays drained, with the replicas to restore recorded on the host
    drain = json.loads(fleet.ssh("app1", "sudo cat /var/lib/runbook-ops/patching/drain.json").stdout)
    assert drain["services"] == {"worker": 1}
    assert fleet.ssh("app1", "sudo docker ps -q --filter label=com.docker.compose.service=worker").stdout.split() == []

    # the operator repairs the service; the next run passes the gate and undrains app1 from its record
    fleet.ssh("app1", "sudo docker ps -aq --filter label=com.docker.compose.service=web | xargs -r sudo docker start")
    again = play(ansible, fleet, playbook=PATCH, extra_args=patch_vars(ansible, patching_security_only=True) + [
        "--limit", "app1"])
    assert again.rc == 0, again
    assert len(fleet.ssh("app1", "sudo docker ps -q --filter label=com.docker.compose.service=worker").stdout.split()) == 1
    assert served(fleet, "app1") == "v1"
    assert fleet.ssh("app1", "test -e /var/lib/runbook-ops/patching/drain.json", check=False).returncode != 0
