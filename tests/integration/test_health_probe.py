"""runbook.ops.health_probe run by real ansible-playbook against real HTTP, PostgreSQL, Redis and TCP peers."""

from __future__ import annotations

import json
import socket

import pytest

from http_fixture import HealthServer
from servers import free_port

PROBE = "Probe the targets"


@pytest.fixture(scope="module")
def web():
    server = HealthServer(slow_seconds=1.2).start()
    yield server
    server.stop()


def probe_task(targets, **options):
    spec = {"targets": targets}
    spec.update(options)
    return "- name: %s\n  runbook.ops.health_probe: %s\n" % (PROBE, json.dumps(spec))


def by_name(result):
    return {r["name"]: r for r in result["results"]}


def test_healthy_http_json_assertions_pass_in_check_and_real_mode_and_never_change(ansible, web):
    tasks = probe_task([{"name": "api", "type": "http", "url": web.base_url + "/health",
                         "json": {"status": "healthy", "checks.database.status": "healthy", "components.1": "worker"}},
                        {"name": "text", "type": "http", "url": web.base_url + "/text", "contains": "pong"}])
    for check in (True, False, True, False):
        run = ansible.play(tasks, check=check)
        assert run.rc == 0, run
        result = run.task(PROBE)["result"]
        assert result["changed"] is False
        assert result["status"] == "healthy"
        assert result["counts"] == {"healthy": 2, "degraded": 0, "unhealthy": 0, "total": 2}
        api = by_name(result)["api"]
        assert api["http_status"] == 200 and api["detail"] == "status: healthy" and api["error"] is None
        assert api["latency_ms"] > 0


def test_503_and_failed_assertion_fail_the_task_naming_the_targets(ansible, web):
    run = ansible.play(probe_task([
        {"name": "ready", "type": "http", "url": web.base_url + "/health/down"},
        {"name": "db-check", "type": "http", "url": web.base_url + "/health", "json": {"checks.database.status": "degraded"}},
        {"name": "live", "type": "http", "url": web.base_url + "/health"},
    ]))
    assert run.rc != 0
    entry = run.task(PROBE)
    assert entry["status"] == "failed"
    result = entry["result"]
    assert result["status"] == "unhealthy"
    assert result["failed_targets"] == ["ready", "db-check"]
    assert "2 of 3 targets unhealthy" in result["msg"]
    assert "ready (HTTP 503, expected 200)" in result["msg"]
    assert "checks.database.status is healthy, expected degraded" in result["msg"]
    rows = by_name(result)
    assert rows["ready"]["http_status"] == 503 and rows["ready"]["detail"] == "status: unhealthy"
    assert rows["live"]["status"] == "healthy"


def test_503_accepted_when_listed_and_not_required_target_only_degrades(ansible, web):
    run = ansible.play(probe_task([
        {"name": "maintenance", "type": "http", "url": web.base_url + "/health/down", "status_codes": [503]},
        {"name": "optional", "type": "http", "url": web.base_url + "/health/down", "required": False},
    ]))
    assert run.rc == 0, run
    result = run.task(PROBE)["result"]
    assert result["status"] == "degraded"
    assert by_name(result)["maintenance"]["status"] == "healthy"
    assert by_name(result)["optional"]["status"] == "unhealthy"
    assert result["failed_targets"] == []


def test_slow_endpoint_is_degraded_over_max_latency_and_unhealthy_past_timeout(ansible, web):
    run = ansible.play(probe_task([
        {"name": "slow", "type": "http", "url": web.base_url + "/health/slow", "max_latency_ms": 300},
        {"name": "too-slow", "type": "http", "url": web.base_url + "/health/slow", "timeout": 0.4, "required": False},
    ]))
    assert run.rc == 0, run
    rows = by_name(run.task(PROBE)["result"])
    assert rows["slow"]["status"] == "degraded"
    assert rows["slow"]["latency_ms"] >= 1000
    assert "over max_latency_ms 300" in rows["slow"]["error"]
    assert rows["too-slow"]["status"] == "unhealthy"
    assert "timed out" in rows["too-slow"]["error"]


def test_targets_are_probed_concurrently(ansible, web):
    targets = [{"name": "slow%d" % i, "type": "http", "url": web.base_url + "/health/slow"} for i in range(6)]
    run = ansible.play(probe_task(targets, concurrency=6))
    assert run.rc == 0, run
    result = run.task(PROBE)["result"]
    # six 1.2 s requests one after another would take 7.2 s
    assert result["counts"]["healthy"] == 6
    assert result["duration"] < 6 * web.slow_seconds


def test_closed_port_fails_tcp_and_http_targets(ansible):
    closed = free_port()
    run = ansible.play(probe_task([
        {"name": "tcp-closed", "type": "tcp", "host": "127.0.0.1", "port": closed},
        {"name": "http-closed", "type": "http", "url": "http://127.0.0.1:%d/health" % closed},
    ], fail_on_unhealthy=False))
    assert run.rc == 0, run
    result = run.task(PROBE)["result"]
    assert result["status"] == "unhealthy"
    rows = by_name(result)
    assert "refused" in rows["tcp-closed"]["error"].lower()
    assert "refused" in rows["http-closed"]["error"].lower()


def test_open_tcp_port_is_healthy(ansible, web):
    run = ansible.play(probe_task([{"type": "tcp", "host": "127.0.0.1", "port": web.port}]))
    assert run.rc == 0, run
    row = run.task(PROBE)["result"]["results"][0]
    assert row["name"] == "127.0.0.1:%d" % web.port and row["status"] == "healthy"


def test_retries_until_a_flaky_endpoint_recovers(ansible):
    server = HealthServer(flaky_failures=2).start()
    try:
        run = ansible.play(probe_task([{"name": "flaky", "type": "http", "url": server.base_url + "/health/flaky"}],
                                      retries=3, delay=0.1))
    finally:
        server.stop()
    assert run.rc == 0, run
    row = run.task(PROBE)["result"]["results"][0]
    assert row["status"] == "healthy" and row["attempts"] == 3


def test_wait_until_healthy_returns_once_a_late_service_is_up(ansible):
    server = HealthServer(flaky_failures=3).start()
    try:
        run = ansible.play(probe_task([{"name": "late", "type": "http", "url": server.base_url + "/health/flaky"}],
                                      wait_until_healthy=True, deadline=30, delay=0.2))
    finally:
        server.stop()
    assert run.rc == 0, run
    result = run.task(PROBE)["result"]
    assert result["status"] == "healthy"
    assert result["rounds"] == 4
    assert result["duration"] < 10


def test_wait_until_healthy_gives_up_at_the_deadline(ansible, web):
    run = ansible.play(probe_task([{"name": "down", "type": "http", "url": web.base_url + "/health/down"}],
                                  wait_until_healthy=True, deadline=1.5, delay=0.3))
    assert run.rc != 0
    result = run.task(PROBE)["result"]
    assert result["status"] == "unhealthy"
    assert result["rounds"] >= 3
    assert result["duration"] < 5


def test_real_postgres_select_and_query_and_bad_password(ansible, pg):
    good = {"type": "postgres", "login_host": pg.host, "login_port": pg.port, "login_user": pg.user,
            "login_password": pg.password}
    run = ansible.play(probe_task([
        dict(good, name="pg"),
        dict(good, name="pg-query", query="SELECT count(*) FROM pg_stat_activity"),
        dict(good, name="pg-badpw", login_password="wrong-password", required=False),
        dict(good, name="pg-nodb", db="no_such_db", required=False),
    ]), verbosity=3)
    assert run.rc == 0, run
    result = run.task(PROBE)["result"]
    rows = by_name(result)
    assert rows["pg"]["status"] == "healthy" and rows["pg"]["detail"].startswith("server 15.")
    assert "query returned" in rows["pg-query"]["detail"]
    assert rows["pg-badpw"]["status"] == "unhealthy" and "password authentication failed" in rows["pg-badpw"]["error"]
    assert rows["pg-nodb"]["status"] == "unhealthy" and "no_such_db" in rows["pg-nodb"]["error"]
    for secret in (pg.password, "wrong-password"):
        assert secret not in run.stdout and secret not in run.stderr
        assert secret not in json.dumps(result)


def test_real_redis_with_and_without_password_and_acl_user(ansible, redis_plain, redis_auth):
    run = ansible.play(probe_task([
        {"name": "plain", "type": "redis", "login_host": "127.0.0.1", "login_port": redis_plain.port,
         "info": {"role": "master"}},
        {"name": "auth", "type": "redis", "login_host": "127.0.0.1", "login_port": redis_auth.port,
         "login_password": redis_auth.password, "info": {"role": "master", "connected_slaves": 0}},
        {"name": "acl", "type": "redis", "login_host": "127.0.0.1", "login_port": redis_auth.port,
         "login_user": "probe", "login_password": "acl-secret-pw"},
        {"name": "nopass", "type": "redis", "login_host": "127.0.0.1", "login_port": redis_auth.port, "required": False},
        {"name": "replica", "type": "redis", "login_host": "127.0.0.1", "login_port": redis_plain.port,
         "info": {"role": "slave"}, "required": False},
    ]), verbosity=3)
    assert run.rc == 0, run
    rows = by_name(run.task(PROBE)["result"])
    assert rows["plain"]["status"] == "healthy" and rows["plain"]["detail"].startswith("PONG")
    assert rows["auth"]["status"] == "healthy"
    assert rows["acl"]["status"] == "healthy"
    # A18: not redis-py's "HELLO must be called with the client already authenticated"
    assert rows["nopass"]["status"] == "unhealthy"
    assert "the server needs a password: give login_password" in rows["nopass"]["error"]
    assert "HELLO" not in rows["nopass"]["error"]
    assert rows["replica"]["error"] == "role is master, expected slave"
    for secret in (redis_auth.password, "acl-secret-pw"):
        assert secret not in run.stdout and secret not in run.stderr


def test_authorization_header_is_sent_but_never_echoed(ansible, web):
    run = ansible.play(probe_task([{"name": "auth", "type": "http", "url": web.base_url + "/auth",
                                    "headers": {"Authorization": "Bearer " + web.token, "Accept": "application/json"}}]),
                       verbosity=3)
    assert run.rc == 0, run
    assert run.task(PROBE)["result"]["results"][0]["status"] == "healthy"
    assert web.token not in run.stdout and web.token not in run.stderr


@pytest.mark.parametrize("target, words", [
    ({"name": "t1", "type": "ftp"}, ["target 't1'", "'type'", "ftp"]),
    ({"name": "t2", "type": "http"}, ["target 't2'", "needs field 'url'"]),
    ({"name": "t3", "type": "tcp", "host": "127.0.0.1"}, ["target 't3'", "needs field 'port'"]),
    ({"name": "t4", "type": "http", "url": "http://127.0.0.1/", "json": {"checks..status": "healthy"}},
     ["target 't4'", "field 'json'", "empty segment"]),
    ({"name": "t5", "type": "http", "url": "http://127.0.0.1/", "json": ["status"]}, ["dict"]),
    ({"name": "t6", "type": "tcp", "host": "x", "port": 1, "url": "http://127.0.0.1/"}, ["target 't6'", "url", "do not apply"]),
])
def test_bad_input_fails_before_any_probe_runs(ansible, web, target, words):
    before = web.requests
    good = {"name": "good", "type": "http", "url": web.base_url + "/health"}
    run = ansible.play(probe_task([good, target]))
    assert run.rc != 0
    msg = run.task(PROBE)["result"]["msg"]
    for word in words:
        assert word in msg, msg
    assert web.requests == before, "a probe ran although the input was bad"


def test_https_certificate_expiry_is_checked(ansible, tmp_path):
    import datetime
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=10)).sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = "https://127.0.0.1:%d/" % httpd.server_address[1]
    try:
        run = ansible.play(probe_task([
            {"name": "verified", "type": "http", "url": url, "required": False},
            {"name": "ok-30", "type": "http", "url": url, "validate_certs": False, "cert_min_days": 5},
            {"name": "short", "type": "http", "url": url, "validate_certs": False, "cert_min_days": 30, "required": False},
        ]))
    finally:
        httpd.shutdown()
    assert run.rc == 0, run
    rows = by_name(run.task(PROBE)["result"])
    assert rows["verified"]["status"] == "unhealthy" and "certificate" in rows["verified"]["error"].lower()
    assert rows["ok-30"]["status"] == "healthy" and rows["ok-30"]["cert_days_left"] in (9, 10)
    assert rows["short"]["status"] == "unhealthy" and "fewer than cert_min_days 30" in rows["short"]["error"]


def test_container_health_endpoint_through_compose(ansible, docker_engine, tmp_path):
    """A busybox httpd app started by Docker Compose, published on loopback, probed by its /health."""
    image = docker_engine.build_busybox_image()
    port = free_port()
    www = tmp_path / "www"
    (www / "health").mkdir(parents=True)
    (www / "health" / "index.html").write_text(json.dumps({"status": "healthy", "checks": {"web": {"status": "healthy"}}}))
    (tmp_path / "compose.yaml").write_text(
        "services:\n  web:\n    image: %s\n    init: true\n    command: [httpd, -f, -p, '8080', -h, /www]\n"
        "    volumes: ['%s:/www:ro']\n    ports: ['127.0.0.1:%d:8080']\n" % (image, www, port))
    docker_engine.docker("compose", "-p", "probe", "up", "-d", "--wait", cwd=tmp_path)
    try:
        run = ansible.play(probe_task([{"name": "web", "type": "http", "url": "http://127.0.0.1:%d/health/" % port,
                                        "json": {"checks.web.status": "healthy"}}], wait_until_healthy=True, deadline=20, delay=0.2))
    finally:
        docker_engine.docker("compose", "-p", "probe", "down", "-t", "1", cwd=tmp_path)
    assert run.rc == 0, run
    assert run.task(PROBE)["result"]["status"] == "healthy"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


STEADY = ("name", "type", "status", "required", "http_status", "error", "attempts")


def test_on_the_controller_the_probes_run_in_process_and_report_what_the_module_reports(ansible, web, tmp_path):
    """connection local: http, tcp, disk and memory targets run in the action's own process; a task environment,
    timeout or interpreter of its own (or a target type with libraries of its own, or options the module must
    refuse) sends it to the module."""
    closed = free_port()
    targets = [{"name": "api", "type": "http", "url": web.base_url + "/health", "json": {"status": "healthy"}},
               {"name": "auth", "type": "http", "url": web.base_url + "/auth",
                "headers": {"Authorization": "Bearer " + web.token}},
               {"name": "down", "type": "http", "url": web.base_url + "/health/down", "required": False},
               {"name": "port", "type": "tcp", "host": "127.0.0.1", "port": closed, "required": False},
               {"name": "disk", "type": "disk", "path": str(tmp_path), "warn_percent": 99.9, "crit_percent": 100},
               {"name": "memory", "type": "memory", "warn_percent": 99.9, "crit_percent": 100}]
    seen = {}
    for how, extra in (("in process", ""), ("module", "  environment:\n    RUNBOOK_TEST: module\n")):
        run = ansible.play(probe_task(targets) + extra, verbosity=3)
        assert run.rc == 0, run
        assert web.token not in run.stdout and web.token not in run.stderr
        result = run.task(PROBE)["result"]
        assert result.get("in_process", False) is (how == "in process")
        rows = [{key: row.get(key) for key in STEADY + (("detail",) if row["type"] in ("http", "tcp") else ())}
                for row in result["results"]]  # disk and memory figures move between two runs
        seen[how] = dict({key: result[key] for key in ("changed", "status", "msg", "counts", "failed_targets", "rounds")},
                         results=rows)
        assert result["invocation"]["module_args"]["targets"][1]["headers"]["Authorization"] == \
            "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert seen["in process"] == seen["module"]
    assert seen["module"]["status"] == "degraded" and seen["module"]["counts"]["healthy"] == 4

    refused = ansible.play(probe_task(targets[:1], no_such_option=True))
    assert refused.rc != 0 and "Unsupported parameters" in refused.task(PROBE)["result"]["msg"]
    for extra in ("  timeout: 60\n", "  vars:\n    ansible_python_interpreter: /usr/bin/python3\n"):
        run = ansible.play(probe_task(targets[:1]) + extra)  # a task timeout, an interpreter of its own: the module
        assert run.rc == 0 and "in_process" not in run.task(PROBE)["result"], (extra, run)
