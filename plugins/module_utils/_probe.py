# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: health probes of http, tcp, postgres and redis targets. Not a public API.

Validation and evaluation are pure functions; probing runs targets concurrently in threads.
Nothing here exits: errors are raised as OpsError and turned into fail_json by the module.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from urllib.parse import urljoin, urlsplit

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line
from ansible_collections.runbook.ops.plugins.module_utils._postgres import connect_kwargs

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
TARGET_TYPES = ("http", "tcp", "postgres", "redis")
SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token")

# Fields that make sense for each target type; anything else set on a target is an error.
_FIELDS = {
    "http": {"url", "method", "headers", "body", "status_codes", "json", "contains",
             "validate_certs", "cert_min_days"},
    "tcp": {"host", "port"},
    "postgres": {"login_host", "login_port", "login_user", "login_password", "db", "ssl_mode",
                 "ca_cert", "query"},
    "redis": {"login_host", "login_port", "login_user", "login_password", "db", "tls", "ca_cert",
              "validate_certs", "info"},
}
_COMMON = {"name", "type", "timeout", "max_latency_ms", "required"}
_DEFAULT_PORTS = {"postgres": 5432, "redis": 6379}


def secret_header_values(targets):
    """Values of credential-bearing headers, so the module can add them to no_log_values."""
    values = []
    for target in targets or []:
        for key, value in (target.get("headers") or {}).items():
            if str(key).lower() in SECRET_HEADERS and value:
                values.append(str(value))
    return values


def _describe(index, raw):
    name = raw.get("name") if isinstance(raw, dict) else None
    return "target %r" % name if name else "target #%d" % (index + 1)


def parse_json_path(path):
    """Split ``checks.database.status`` into keys; list indexes are digits (``items.0.status``)."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError("an assertion path must be a non-empty string")
    parts = path.split(".")
    if any(not part for part in parts):
        raise ValueError("assertion path %r has an empty segment" % path)
    return parts


def _default_name(target_type, raw):
    if target_type == "http":
        return raw.get("url")
    if target_type == "tcp":
        return "%s:%s" % (raw.get("host"), raw.get("port"))
    return "%s://%s:%s" % (target_type, raw.get("login_host") or "localhost",
                           raw.get("login_port") or _DEFAULT_PORTS[target_type])


def validate_targets(targets):
    """Check every target before any probe runs; return normalised copies.

    Raises OpsError naming the target and the field at the first problem found.
    """
    if not targets:
        raise OpsError("targets is empty: give at least one target to probe")
    checked = []
    names = set()
    for index, raw in enumerate(targets):
        where = _describe(index, raw)
        target_type = raw.get("type")
        if target_type not in TARGET_TYPES:
            raise OpsError("%s: field 'type' is %r; use one of %s" % (where, target_type, ", ".join(TARGET_TYPES)))
        stray = sorted(k for k, v in raw.items() if v is not None and k not in _FIELDS[target_type] | _COMMON)
        if stray:
            raise OpsError("%s: field(s) %s do not apply to a %s target; remove them" % (where, ", ".join(stray), target_type))
        target = {k: v for k, v in raw.items() if v is not None}
        if target_type == "http":
            _validate_http(where, target)
        elif target_type == "tcp":
            if not target.get("host"):
                raise OpsError("%s: a tcp target needs field 'host'" % where)
            if not target.get("port"):
                raise OpsError("%s: a tcp target needs field 'port'" % where)
        if "port" in target or "login_port" in target:
            port = target.get("port", target.get("login_port"))
            if not 0 < int(port) < 65536:
                raise OpsError("%s: field 'port' is %s; a port is 1-65535" % (where, port))
        if target.get("timeout", 5) <= 0:
            raise OpsError("%s: field 'timeout' must be greater than 0 seconds" % where)
        if target_type == "redis" and "info" in target and not isinstance(target["info"], dict):
            raise OpsError("%s: field 'info' must be a mapping of INFO field to expected value" % where)
        target.setdefault("name", _default_name(target_type, target))
        target.setdefault("timeout", 5.0)
        target.setdefault("required", True)
        if target["name"] in names:
            raise OpsError("%s: field 'name' %r is used by another target; names must be unique" % (where, target["name"]))
        names.add(target["name"])
        checked.append(target)
    return checked


def _validate_http(where, target):
    url = target.get("url")
    if not url:
        raise OpsError("%s: an http target needs field 'url'" % where)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OpsError("%s: field 'url' is %r; use an absolute http:// or https:// URL" % (where, url))
    if "cert_min_days" in target and parts.scheme != "https":
        raise OpsError("%s: field 'cert_min_days' needs an https:// url" % where)
    for code in target.get("status_codes") or []:
        if not 100 <= int(code) <= 599:
            raise OpsError("%s: field 'status_codes' holds %s, which is not an HTTP status" % (where, code))
    assertions = target.get("json")
    if assertions is not None:
        if not isinstance(assertions, dict) or not assertions:
            raise OpsError("%s: field 'json' must be a non-empty mapping of path to expected value, "
                           "e.g. {status: healthy, checks.database.status: healthy}" % where)
        for path in assertions:
            try:
                parse_json_path(path)
            except ValueError as exc:
                raise OpsError("%s: field 'json': %s" % (where, exc))


def lookup_json(document, path):
    """Value at a dotted path; raises KeyError with the missing segment."""
    node = document
    for part in parse_json_path(path):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(part)
    return node


def values_match(actual, expected):
    """YAML types are loose: 200 == "200", True == "true"; a list of expected values means any of them."""
    if isinstance(expected, list):
        return any(values_match(actual, choice) for choice in expected)
    if actual == expected and type(actual) is type(expected):
        return True
    return _scalar_text(actual) == _scalar_text(expected)


def _scalar_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def evaluate_http(target, status_code, body):
    """Judge an HTTP answer. Returns (ok, detail, error)."""
    expected = target.get("status_codes") or [200]
    if status_code not in expected:
        detail = _json_summary(body)
        return False, detail, "HTTP %s, expected %s" % (status_code, " or ".join(str(c) for c in expected))
    contains = target.get("contains")
    if contains is not None and contains not in body:
        return False, None, "body does not contain %r" % contains
    assertions = target.get("json")
    if assertions:
        try:
            document = json.loads(body)
        except ValueError:
            return False, None, "body is not JSON, so the json assertions cannot hold"
        mismatches = []
        for path, want in assertions.items():
            try:
                got = lookup_json(document, path)
            except KeyError as exc:
                mismatches.append("%s is missing (no %r)" % (path, exc.args[0]))
                continue
            if not values_match(got, want):
                mismatches.append("%s is %s, expected %s" % (path, _scalar_text(got), _scalar_text(want)))
        if mismatches:
            return False, None, "; ".join(mismatches)
    return True, _json_summary(body), None


def _json_summary(body):
    """The top-level status of a /health style body, if there is one, for the operator to read."""
    try:
        document = json.loads(body)
    except (TypeError, ValueError):
        return None
    if isinstance(document, dict) and "status" in document:
        return "status: %s" % _scalar_text(document["status"])
    return None


def grade(ok, latency_ms, max_latency_ms):
    if not ok:
        return UNHEALTHY
    if max_latency_ms is not None and latency_ms > max_latency_ms:
        return DEGRADED
    return HEALTHY


def overall_status(results):
    """unhealthy if a required target is down; degraded if anything else is short of healthy."""
    status = HEALTHY
    for result in results:
        if result["status"] == UNHEALTHY and result["required"]:
            return UNHEALTHY
        if result["status"] != HEALTHY:
            status = DEGRADED
    return status


_TLS_CONTEXTS = {}
_TLS_LOCK = threading.Lock()
MAX_REDIRECTS = 5


def _tls_context(verify):
    """One context per verify setting for the whole run: loading the CA store costs ~25 ms a time."""
    with _TLS_LOCK:
        if verify not in _TLS_CONTEXTS:
            context = ssl.create_default_context()
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            _TLS_CONTEXTS[verify] = context
        return _TLS_CONTEXTS[verify]


def http_request(url, method="GET", headers=None, body=None, timeout=5.0, validate_certs=True):
    """One HTTP(S) exchange, following up to MAX_REDIRECTS redirects of GET/HEAD. Returns (status, body bytes).

    No proxies: health endpoints are reached directly. Raises OSError (incl. ssl and timeout errors).
    """
    for _redirect in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                               context=_tls_context(validate_certs))
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
        except http.client.HTTPException as exc:
            raise OSError("bad HTTP answer: %s" % (exc.__class__.__name__ if not str(exc) else exc))
        finally:
            conn.close()
        location = response.getheader("Location")
        if response.status in (301, 302, 303, 307, 308) and location and method in ("GET", "HEAD"):
            url = urljoin(url, location)
            continue
        return response.status, data
    raise OSError("more than %d redirects" % MAX_REDIRECTS)


def _probe_http(target):
    method = target.get("method", "GET").upper()
    body = target.get("body")
    headers = dict(target.get("headers") or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    elif body is not None and not isinstance(body, (str, bytes)):
        body = str(body)
    headers.setdefault("User-Agent", "runbook.ops health_probe")
    try:
        status_code, data = http_request(target["url"], method=method, headers=headers, body=body,
                                         timeout=target["timeout"], validate_certs=target.get("validate_certs", True))
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": _reason(exc)}
    text = data.decode("utf-8", errors="replace")
    ok, detail, error = evaluate_http(target, status_code, text)
    outcome = {"ok": ok, "http_status": status_code, "detail": detail, "error": error}
    if ok and "cert_min_days" in target:
        outcome.update(_check_cert(target))
    return outcome


def _check_cert(target):
    parts = urlsplit(target["url"])
    days = cert_days_left(parts.hostname, parts.port or 443, target["timeout"])
    if days < target["cert_min_days"]:
        return {"ok": False, "cert_days_left": days,
                "error": "TLS certificate expires in %d days, fewer than cert_min_days %d" % (days, target["cert_min_days"])}
    return {"cert_days_left": days}


def cert_days_left(host, port, timeout):
    """Days until the server's certificate expires (read without verifying it; the request verified)."""
    from cryptography import x509

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=timezone.utc)
    return int((not_after - datetime.now(timezone.utc)).total_seconds() // 86400)


def _reason(exc):
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate verify failed: %s" % exc.verify_message
    return str(getattr(exc, "strerror", None) or exc)


def _probe_tcp(target):
    try:
        with socket.create_connection((target["host"], int(target["port"])), timeout=target["timeout"]):
            pass
    except (OSError, socket.timeout) as exc:
        return {"ok": False, "error": "cannot connect to %s:%s: %s" % (target["host"], target["port"], _reason(exc))}
    return {"ok": True, "detail": "port open"}


def _probe_postgres(target):
    import psycopg2

    params = connect_kwargs(target, target.get("db", "postgres"), "runbook.ops health_probe",
                            max(1, int(round(target["timeout"]))))
    params["options"] = "-c statement_timeout=%d" % int(target["timeout"] * 1000)
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.Error as exc:
        return {"ok": False, "error": "cannot connect to PostgreSQL: %s" % first_line(exc)}
    try:
        with conn.cursor() as cur:
            cur.execute(target.get("query") or "SELECT 1")
            row = cur.fetchone() if cur.description else None
        version = conn.server_version
    except psycopg2.Error as exc:
        return {"ok": False, "error": "query failed: %s" % first_line(exc)}
    finally:
        conn.close()
    detail = "server %d.%d" % (version // 10000, version % 10000)
    if target.get("query") and row:
        detail += ", query returned %s" % (row[0],)
    return {"ok": True, "detail": detail}


def _probe_redis(target):
    import redis

    kwargs = {
        "host": target.get("login_host", "localhost"),
        "port": int(target.get("login_port", 6379)),
        "db": int(target.get("db", 0)),
        "username": target.get("login_user"),
        "password": target.get("login_password"),
        "socket_timeout": target["timeout"],
        "socket_connect_timeout": target["timeout"],
    }
    if target.get("tls"):
        kwargs["ssl"] = True
        kwargs["ssl_cert_reqs"] = "required" if target.get("validate_certs", True) else "none"
        if target.get("ca_cert"):
            kwargs["ssl_ca_certs"] = target["ca_cert"]
    client = redis.Redis(**kwargs)
    try:
        client.ping()
        info = client.info("all") if target.get("info") else client.info("server")
    except redis.AuthenticationError as exc:
        return {"ok": False, "error": "authentication failed: %s" % exc}
    except redis.RedisError as exc:
        return {"ok": False, "error": "cannot reach Redis: %s" % first_line(exc)}
    finally:
        client.close()
    mismatches = []
    for field, want in (target.get("info") or {}).items():
        if field not in info:
            mismatches.append("%s is missing from INFO" % field)
        elif not values_match(info[field], want):
            mismatches.append("%s is %s, expected %s" % (field, _scalar_text(info[field]), _scalar_text(want)))
    if mismatches:
        return {"ok": False, "error": "; ".join(mismatches)}
    return {"ok": True, "detail": "PONG, redis %s" % info.get("redis_version", "?")}


_PROBES = {"http": _probe_http, "tcp": _probe_tcp, "postgres": _probe_postgres, "redis": _probe_redis}


def probe_once(target):
    """Probe one target once and return its result row."""
    started = time.monotonic()
    try:
        outcome = _PROBES[target["type"]](target)
    except Exception as exc:  # a probe must report, never take the whole task down
        outcome = {"ok": False, "error": "%s: %s" % (exc.__class__.__name__, first_line(exc))}
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    status = grade(outcome["ok"], latency_ms, target.get("max_latency_ms"))
    error = outcome.get("error")
    if status == DEGRADED:
        error = "latency %.1f ms is over max_latency_ms %s" % (latency_ms, target["max_latency_ms"])
    result = {
        "name": target["name"],
        "type": target["type"],
        "status": status,
        "required": target["required"],
        "latency_ms": latency_ms,
        "http_status": outcome.get("http_status"),
        "detail": outcome.get("detail"),
        "error": error,
        "attempts": 1,
    }
    if "cert_days_left" in outcome:
        result["cert_days_left"] = outcome["cert_days_left"]
    return result


def probe_with_retries(target, retries, delay):
    """Probe until the target is not unhealthy, at most ``retries`` extra times."""
    attempt = 0
    while True:
        attempt += 1
        result = probe_once(target)
        result["attempts"] = attempt
        if result["status"] != UNHEALTHY or attempt > retries:
            return result
        time.sleep(delay)


def probe_all(targets, concurrency=20, retries=0, delay=1.0):
    """Probe every target concurrently; results keep the order of ``targets``."""
    workers = max(1, min(concurrency, len(targets)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda t: probe_with_retries(t, retries, delay), targets))


def wait_until_healthy(targets, deadline, delay=1.0, concurrency=20, clock=time.monotonic, sleep=time.sleep):
    """Poll until no required target is unhealthy or ``deadline`` seconds pass.

    Only targets not yet up are probed again. Returns (results, rounds).
    """
    give_up_at = clock() + deadline
    results = {}
    pending = list(targets)
    rounds = 0
    while True:
        rounds += 1
        for result in probe_all(pending, concurrency=concurrency):
            previous = results.get(result["name"])
            result["attempts"] = (previous["attempts"] + 1) if previous else 1
            results[result["name"]] = result
        pending = [t for t in targets if results[t["name"]]["status"] == UNHEALTHY]
        if not any(t["required"] for t in pending) or clock() + delay > give_up_at:
            break
        sleep(delay)
    return [results[t["name"]] for t in targets], rounds


def failure_message(results):
    """'2 of 5 targets unhealthy: api (HTTP 503, expected 200); db (...)'."""
    failed = [r for r in results if r["status"] == UNHEALTHY and r["required"]]
    parts = ["%s (%s)" % (r["name"], r["error"]) for r in failed]
    return "%d of %d targets unhealthy: %s" % (len(failed), len(results), "; ".join(parts))
