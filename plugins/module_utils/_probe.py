# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: health probes of http, tcp, postgres and redis targets. Not a public API.

Validation and evaluation are pure functions; probing runs targets concurrently in threads.
Nothing here exits: errors are raised as OpsError and turned into fail_json by the module.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, first_line
from ansible_collections.runbook.ops.plugins.module_utils._retry import Deadline, attempts

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
TARGET_TYPES = ("http", "tcp", "postgres", "redis", "disk", "memory", "containers")
SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token")

# Fields that make sense for each target type; anything else set on a target is an error.
_FIELDS = {
    "http": {"url", "method", "headers", "body", "status_codes", "json", "contains",
             "validate_certs", "cert_min_days"},
    "tcp": {"host", "port"},
    "postgres": {"login_host", "login_port", "login_user", "login_password", "db", "ssl_mode",
                 "ca_cert", "query"},
    "redis": {"login_host", "login_port", "login_user", "login_password", "db", "tls", "ca_cert",
              "validate_certs", "info", "queues"},
    "disk": {"path", "warn_percent", "crit_percent"},
    "memory": {"warn_percent", "crit_percent"},
    "containers": {"project_name", "services", "docker_host", "max_restarts"},
}
_CONTAINER_FIELDS = {"container", "compose_service", "project_name", "docker_host"}  # a server in a container
for _kind in ("postgres", "redis"):
    _FIELDS[_kind] = _FIELDS[_kind] | _CONTAINER_FIELDS
_COMMON = {"name", "type", "timeout", "max_latency_ms", "required"}
_DEFAULT_PORTS = {"postgres": 5432, "redis": 6379}


def secret_header_values(targets):
    """Values of credential-bearing headers and URL passwords, so the module can add them to no_log_values."""
    values = []
    for target in targets or []:
        for key, value in (target.get("headers") or {}).items():
            if str(key).lower() in SECRET_HEADERS and value:
                values.append(str(value))
        url = str(target.get("url") or "")
        try:
            password = urlsplit(url).password
        except ValueError:  # an invalid URL still must not show its password
            found = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*?:([^/@]*)@", url)
            password = found.group(1) if found else None
        if password:
            values += [password, unquote(password)]
    return values


def split_credentials(url):
    """(url without user:password, masked url for display, (user, password) or None)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, url, None
    host = parts.netloc.rsplit("@", 1)[1]
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    masked = urlunsplit((parts.scheme, "%s:********@%s" % (parts.username or "", host), parts.path, parts.query,
                         parts.fragment))
    return clean, masked, (unquote(parts.username or ""), unquote(parts.password or ""))


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
        return split_credentials(raw["url"])[1]
    if target_type == "tcp":
        return "%s:%s" % (raw.get("host"), raw.get("port"))
    if target_type == "disk":
        return "disk:%s" % raw.get("path")
    if target_type == "memory":
        return "memory"
    if target_type == "containers":
        return "containers:%s" % raw.get("project_name")
    host = raw.get("login_host") or "localhost"
    if raw.get("container") or raw.get("compose_service"):
        host = raw.get("container") or "%s.%s" % (raw.get("project_name"), raw["compose_service"])
    return "%s://%s:%s" % (target_type, host, raw.get("login_port") or _DEFAULT_PORTS[target_type])


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
        if target.get("container") and target.get("compose_service"):
            raise OpsError("%s: fields 'container' and 'compose_service' name the same thing; give one" % where)
        if target_type in ("postgres", "redis") and bool(target.get("compose_service")) != bool(target.get("project_name")):
            raise OpsError("%s: fields 'compose_service' and 'project_name' go together" % where)
        if target.get("tls") and (target.get("container") or target.get("compose_service")):
            raise OpsError("%s: field 'tls' with a container: the probe connects inside the container's network; "
                           "remove tls" % where)
        for field in ("port", "login_port"):
            if field in target and not 0 < int(target[field]) < 65536:
                raise OpsError("%s: field '%s' is %s; a port is 1-65535" % (where, field, target[field]))
        if not 0 < target.get("timeout", 5) <= 3600:
            raise OpsError("%s: field 'timeout' must be more than 0 and at most 3600 seconds" % where)
        if target_type in ("disk", "memory"):
            _validate_percents(where, target)
        if target_type == "disk" and not str(target.get("path") or "").startswith("/"):
            raise OpsError("%s: a disk target needs field 'path', an absolute path on the host (a mount point or any "
                           "path on it)" % where)
        if target_type == "containers":
            if not target.get("project_name"):
                raise OpsError("%s: a containers target needs field 'project_name' (the Compose project)" % where)
            if target.get("max_restarts") is not None and int(target["max_restarts"]) < 0:
                raise OpsError("%s: field 'max_restarts' is %s; give 0 or more" % (where, target["max_restarts"]))
        if target_type == "redis" and "queues" in target:
            target["queues"] = _queue_limits(where, target["queues"])
        if target_type == "redis":
            if "info" in target and not isinstance(target["info"], dict):
                raise OpsError("%s: field 'info' must be a mapping of INFO field to expected value" % where)
            if "db" in target:
                try:
                    if int(str(target["db"])) < 0:
                        raise ValueError(target["db"])
                except ValueError:
                    raise OpsError("%s: field 'db' is %r; a Redis db is a number 0, 1, 2 ..." % (where, target["db"]))
                target["db"] = int(str(target["db"]))
        elif "db" in target:
            target["db"] = str(target["db"])
        target.setdefault("name", _default_name(target_type, target))
        target.setdefault("timeout", 5.0)
        target.setdefault("required", True)
        if target["name"] in names:
            raise OpsError("%s: field 'name' %r is used by another target; names must be unique" % (where, target["name"]))
        names.add(target["name"])
        checked.append(target)
    return checked


def _validate_percents(where, target):
    target.setdefault("warn_percent", 80.0)
    target.setdefault("crit_percent", 90.0)
    warn_at, crit_at = float(target["warn_percent"]), float(target["crit_percent"])
    if not 0 < warn_at <= crit_at <= 100:
        raise OpsError("%s: fields 'warn_percent' (%s) and 'crit_percent' (%s) must satisfy 0 < warn <= crit <= 100"
                       % (where, warn_at, crit_at))
    target["warn_percent"], target["crit_percent"] = warn_at, crit_at


def _queue_limits(where, queues):
    """{queue: {warn, crit}} from {queue: crit} or {queue: {warn: .., crit: ..}}."""
    if not isinstance(queues, dict) or not queues:
        raise OpsError("%s: field 'queues' must map each queue (a Redis list, as Celery keeps them) to its limit, "
                       "e.g. {celery: 1000} or {celery: {warn: 100, crit: 1000}}" % where)
    limits = {}
    for name, limit in queues.items():
        spec = limit if isinstance(limit, dict) else {"crit": limit}
        try:
            crit = int(spec["crit"])
            warn = int(spec.get("warn", crit))
        except (KeyError, TypeError, ValueError):
            raise OpsError("%s: queues.%s is %r; give the length that makes it unhealthy, or {warn: n, crit: m}"
                           % (where, name, limit))
        if not 0 <= warn <= crit:
            raise OpsError("%s: queues.%s needs 0 <= warn (%d) <= crit (%d)" % (where, name, warn, crit))
        limits[str(name)] = {"warn": warn, "crit": crit}
    return limits


def _validate_http(where, target):
    url = target.get("url")
    if not url:
        raise OpsError("%s: an http target needs field 'url'" % where)
    try:
        parts = urlsplit(url)
        port, host = parts.port, parts.hostname
    except ValueError as exc:
        raise OpsError("%s: field 'url' is not a valid URL (%s): check the port (1-65535) and write IPv6 addresses "
                       "in brackets, e.g. http://[::1]:8000/health" % (where, exc))
    if parts.scheme not in ("http", "https") or not host:
        raise OpsError("%s: field 'url' is %r; use an absolute http:// or https:// URL" % (where, split_credentials(url)[1]))
    if port == 0:
        raise OpsError("%s: field 'url' has port 0; a port is 1-65535" % where)
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
MAX_BODY = 4 * 1024 * 1024  # a health endpoint answers in kilobytes; an endless body must not fill the host's memory


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


def _same_origin(a, b):
    pa, pb = urlsplit(a), urlsplit(b)
    default = {"http": 80, "https": 443}
    return (pa.scheme, pa.hostname, pa.port or default.get(pa.scheme)) == \
        (pb.scheme, pb.hostname, pb.port or default.get(pb.scheme))


def http_request(url, method="GET", headers=None, body=None, timeout=5.0, validate_certs=True, deadline=None,
                 watchdog=None):
    """One HTTP(S) exchange, following up to MAX_REDIRECTS redirects of GET/HEAD. Returns (status, body bytes).

    No proxies: health endpoints are reached directly. Each socket operation waits at most what is left of
    ``deadline``. A redirect to another origin drops credential headers (as browsers and requests do); a
    redirect to anything but http or https is refused. Raises OSError (incl. ssl and timeout errors).
    """
    deadline = deadline or Deadline(timeout)
    headers = dict(headers or {})
    for _redirect in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        left = max(deadline.left(), 0.001)
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=left,
                                               context=_tls_context(validate_certs))
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=left)
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        try:
            conn.connect()
            sock = conn.sock  # http.client drops conn.sock once a response says it will close
            if watchdog is not None:
                watchdog.watch(sock)
            conn.request(method, path, body=body, headers=headers)
            sock.settimeout(max(deadline.left(), 0.001))
            response = conn.getresponse()
            chunks = []
            size = 0
            while True:
                if deadline.passed():
                    raise socket.timeout("timed out")
                sock.settimeout(max(deadline.left(), 0.001))
                data = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
                if not data:
                    break
                size += len(data)
                if size > MAX_BODY:
                    raise OSError("the answer is larger than %d MiB: not a health endpoint" % (MAX_BODY // 1048576))
                chunks.append(data)
            data = b"".join(chunks)
        except http.client.HTTPException as exc:
            raise OSError("bad HTTP answer: %s" % (exc.__class__.__name__ if not str(exc) else exc))
        finally:
            conn.close()
        location = response.getheader("Location")
        if response.status in (301, 302, 303, 307, 308) and location and method in ("GET", "HEAD"):
            target = urljoin(url, location)
            scheme = urlsplit(target).scheme
            if scheme not in ("http", "https"):
                raise OSError("redirected to a %s: URL, which is not followed (only http and https are)" % scheme)
            if not _same_origin(url, target):
                headers = {k: v for k, v in headers.items() if k.lower() not in SECRET_HEADERS}
            url = target
            continue
        return response.status, data
    raise OSError("more than %d redirects" % MAX_REDIRECTS)


def _probe_http(target, deadline, watchdog):
    method = target.get("method", "GET").upper()
    body = target.get("body")
    headers = dict(target.get("headers") or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    elif body is not None and not isinstance(body, (str, bytes)):
        body = str(body)
    headers.setdefault("User-Agent", "runbook.ops health_probe")
    url, _masked, credentials = split_credentials(target["url"])
    if credentials and not any(k.lower() == "authorization" for k in headers):
        token = base64.b64encode(("%s:%s" % credentials).encode("utf-8")).decode("ascii")
        headers["Authorization"] = "Basic " + token
    try:
        status_code, data = http_request(url, method=method, headers=headers, body=body, timeout=target["timeout"],
                                         validate_certs=target.get("validate_certs", True), deadline=deadline,
                                         watchdog=watchdog)
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": _reason(exc)}
    text = data.decode("utf-8", errors="replace")
    ok, detail, error = evaluate_http(target, status_code, text)
    outcome = {"ok": ok, "http_status": status_code, "detail": detail, "error": error}
    if ok and "cert_min_days" in target:
        outcome.update(_check_cert(target, deadline))
    return outcome


def _check_cert(target, deadline):
    parts = urlsplit(target["url"])
    days = cert_days_left(parts.hostname, parts.port or 443, max(deadline.left(), 0.001))
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


def _probe_tcp(target, deadline, watchdog):
    try:
        with socket.create_connection((target["host"], int(target["port"])), timeout=max(deadline.left(), 0.001)):
            pass
    except (OSError, socket.timeout) as exc:
        return {"ok": False, "error": "cannot connect to %s:%s: %s" % (target["host"], target["port"], _reason(exc))}
    return {"ok": True, "detail": "port open"}


def _probe_postgres(target, deadline, watchdog):
    import psycopg2
    from ansible_collections.runbook.ops.plugins.module_utils._postgres import connect_kwargs, reach

    try:
        reach(target)  # a server in a container: the container and the server's socket in it
    except OpsError as exc:
        return {"ok": False, "error": exc.message}
    left = deadline.left()
    params = connect_kwargs(target, target.get("db", "postgres"), "runbook.ops health_probe", max(2, int(left + 0.999)))
    params["options"] = "-c statement_timeout=%d" % max(1, int(left * 1000))
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.Error as exc:
        hint = "; the server wants a password: give login_password" if "password" in str(exc) and \
            not target.get("login_password") else ""
        return {"ok": False, "error": "cannot connect to PostgreSQL: %s%s" % (first_line(exc), hint)}
    watchdog.watch(conn)
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


def _probe_redis(target, deadline, watchdog):
    import redis
    from ansible_collections.runbook.ops.plugins.module_utils import _redis as rd

    try:
        rd.reach(target, tools=())  # a server in a container: found, and reached inside its network
    except OpsError as exc:
        return {"ok": False, "error": exc.message}
    params = dict(target, connect_timeout=max(deadline.left(), 0.001))
    client = rd.make_client(params, db=int(target.get("db", 0)))
    watchdog.watch(client)
    queues = {}
    try:
        client.ping()
        info = client.info("all") if target.get("info") else client.info("server")
        for name in target.get("queues") or {}:
            try:
                queues[name] = client.llen(name)
            except redis.ResponseError as exc:
                return {"ok": False, "error": "queue %s: %s (a Celery queue is a Redis list)" % (name, first_line(exc))}
    except redis.RedisError as exc:
        return {"ok": False, "error": "cannot reach Redis: %s" % rd.explain(exc, target)}
    finally:
        client.close()
    mismatches = []
    for field, want in (target.get("info") or {}).items():
        if field not in info:
            mismatches.append("%s is missing from INFO" % field)
        elif not values_match(info[field], want):
            mismatches.append("%s is %s, expected %s" % (field, _scalar_text(info[field]), _scalar_text(want)))
    limits = target.get("queues") or {}
    mismatches += ["queue %s holds %d, over %d" % (n, length, limits[n]["crit"]) for n, length in sorted(queues.items())
                   if length > limits[n]["crit"]]
    detail = "PONG, redis %s" % info.get("redis_version", "?")
    if queues:
        detail += ", queues " + ", ".join("%s %d" % item for item in sorted(queues.items()))
    if mismatches:
        return {"ok": False, "error": "; ".join(mismatches), "detail": detail, "queues": queues}
    outcome = {"ok": True, "detail": detail}
    if queues:
        outcome["queues"] = queues
        long_ones = ["queue %s holds %d, over warn %d" % (n, length, limits[n]["warn"])
                     for n, length in sorted(queues.items()) if length > limits[n]["warn"]]
        if long_ones:
            outcome["warning"] = "; ".join(long_ones)
    return outcome


def _percent_outcome(what, used, target, detail):
    """ok/warning/error of a usage percentage against the target's warn and crit thresholds."""
    if used >= target["crit_percent"]:
        return {"ok": False, "detail": detail, "error": "%s %.1f %% used, at or over crit_percent %s" % (
            what, used, target["crit_percent"])}
    outcome = {"ok": True, "detail": detail}
    if used >= target["warn_percent"]:
        outcome["warning"] = "%s %.1f %% used, at or over warn_percent %s" % (what, used, target["warn_percent"])
    return outcome


def _probe_disk(target, deadline, watchdog):
    try:
        stat = os.statvfs(target["path"])
    except OSError as exc:
        return {"ok": False, "error": "cannot read %s: %s" % (target["path"], exc.strerror)}
    usable = stat.f_blocks - stat.f_bfree + stat.f_bavail  # what df counts: root's reserve is not usable
    used = 100.0 * (stat.f_blocks - stat.f_bfree) / usable if usable else 0.0
    inodes = 100.0 * (stat.f_files - stat.f_ffree) / stat.f_files if stat.f_files else 0.0
    free = stat.f_bavail * stat.f_frsize
    detail = "%.1f %% used, %s free of %s, inodes %.1f %% used" % (
        used, _size(free), _size(usable * stat.f_frsize), inodes)
    worst, what = (used, "disk") if used >= inodes else (inodes, "inodes")
    outcome = _percent_outcome("%s %s" % (target["path"], what), worst, target, detail)
    outcome.update(used_percent=round(used, 1), inodes_used_percent=round(inodes, 1), free_bytes=free)
    return outcome


def _probe_memory(target, deadline, watchdog):
    try:
        with open("/proc/meminfo") as handle:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle if line.split()[1:2]}
    except (OSError, ValueError, IndexError) as exc:
        return {"ok": False, "error": "cannot read /proc/meminfo: %s" % exc}
    total, available = info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))
    used = 100.0 * (total - available) / total if total else 0.0
    swap = info.get("SwapTotal", 0) - info.get("SwapFree", 0)
    detail = "%.1f %% used, %s available of %s, swap used %s" % (used, _size(available), _size(total), _size(swap))
    outcome = _percent_outcome("memory", used, target, detail)
    outcome.update(used_percent=round(used, 1), available_bytes=available)
    return outcome


def _probe_containers(target, deadline, watchdog):
    from ansible_collections.runbook.ops.plugins.module_utils import _docker

    try:
        client = _docker.connect(target.get("docker_host"), max(1, int(deadline.left() + 0.999)))
        try:
            found = [_docker.describe(c) for c in _docker.compose_containers(client, target["project_name"])]
        finally:
            client.close()
    except OpsError as exc:
        return {"ok": False, "error": exc.message}
    wanted = target.get("services")
    if wanted:
        found = [c for c in found if c["service"] in wanted]
        missing = sorted(set(wanted) - {c["service"] for c in found})
    else:
        missing = []
    bad = [c for c in found if c["state"] != "running" or c["health"] not in ("healthy", "none")]
    healthy = sum(1 for c in found if c["health"] == "healthy")
    detail = "%d containers, %d running, %d healthy" % (len(found), sum(c["state"] == "running" for c in found), healthy)
    outcome = {"ok": True, "detail": detail,
               "containers": [{k: c[k] for k in ("name", "service", "state", "health", "restart_count")} for c in found]}
    problems = ["service %s has no container" % name for name in missing]
    problems += ["%s is %s%s%s" % (c["name"], c["state"], "" if c["health"] == "none" else " and " + c["health"],
                                   ": " + c["last_health_output"][-200:] if c["last_health_output"] and
                                   c["health"] == "unhealthy" else "") for c in bad]
    if not found and not missing:
        problems.append("Compose project %s has no containers" % target["project_name"])
    if problems:
        outcome.update(ok=False, error="; ".join(problems))
        return outcome
    limit = target.get("max_restarts")
    restarted = [c for c in found if limit is not None and c["restart_count"] > int(limit)]
    if restarted:
        outcome["warning"] = "; ".join("%s restarted %d times (max_restarts %s)" % (c["name"], c["restart_count"], limit)
                                       for c in restarted)
    return outcome


def _size(count):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return ("%d %s" % (count, unit)) if unit == "B" else ("%.1f %s" % (count, unit))
        count /= 1024.0
    return str(count)


class Watchdog:
    """Closes what a probe left open once its time is up, so the probe's thread ends soon after."""

    def __init__(self):
        self.watched = []
        self.lock = threading.Lock()

    def watch(self, thing):
        with self.lock:
            self.watched.append(thing)

    def fire(self):
        with self.lock:
            watched, self.watched = self.watched, []
        for thing in watched:
            try:
                if isinstance(thing, socket.socket):
                    thing.shutdown(socket.SHUT_RDWR)
                elif hasattr(thing, "cancel"):
                    thing.cancel()  # psycopg2: cancels the running query
                thing.close()
            except Exception:  # best effort: the thread is abandoned either way
                pass


_PROBES = {"http": _probe_http, "tcp": _probe_tcp, "postgres": _probe_postgres, "redis": _probe_redis,
           "disk": _probe_disk, "memory": _probe_memory, "containers": _probe_containers}
_EXTRA_KEYS = ("cert_days_left", "used_percent", "inodes_used_percent", "free_bytes", "available_bytes", "containers",
               "queues")


def probe_once(target, budget=None):
    """Probe one target once and return its result row; never takes longer than its timeout (or ``budget``)."""
    limit = target["timeout"] if budget is None else max(0.001, min(target["timeout"], budget))
    deadline = Deadline(limit)
    watchdog = Watchdog()
    box = {}

    def work():
        try:
            box["outcome"] = _PROBES[target["type"]](target, deadline, watchdog)
        except Exception as exc:  # a probe must report, never take the whole task down
            box["outcome"] = {"ok": False, "error": _reason(exc) if isinstance(exc, OSError) else
                              "%s: %s" % (exc.__class__.__name__, first_line(exc))}

    started = time.monotonic()
    thread = threading.Thread(target=work, name="probe %s" % target["name"], daemon=True)
    thread.start()
    thread.join(limit + 0.05)
    outcome = box.get("outcome")
    if outcome is None:
        watchdog.fire()
        outcome = {"ok": False, "error": "timed out: no complete answer within %ss" % round(limit, 3)}
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    status = grade(outcome["ok"], latency_ms, target.get("max_latency_ms"))
    error = outcome.get("error")
    if status == DEGRADED:
        error = "latency %.1f ms is over max_latency_ms %s" % (latency_ms, target["max_latency_ms"])
    elif status == HEALTHY and outcome.get("warning"):
        status, error = DEGRADED, outcome["warning"]
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
    result.update({key: outcome[key] for key in _EXTRA_KEYS if key in outcome})
    return result


def probe_with_retries(target, retries, delay):
    """Probe until the target is not unhealthy, at most ``retries`` extra times."""
    result = None
    for attempt in attempts(retries, delay):
        result = probe_once(target)
        result["attempts"] = attempt
        if result["status"] != UNHEALTHY:
            break
    return result


def probe_all(targets, concurrency=20, retries=0, delay=1.0, budget=None):
    """Probe every target concurrently; results keep the order of ``targets``."""
    workers = max(1, min(concurrency, len(targets)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if budget is not None:
            return list(pool.map(lambda t: probe_once(t, budget), targets))
        return list(pool.map(lambda t: probe_with_retries(t, retries, delay), targets))


def wait_until_healthy(targets, deadline, delay=1.0, concurrency=20, clock=time.monotonic, sleep=time.sleep):
    """Poll until no required target is unhealthy or ``deadline`` seconds pass; no probe outlives the deadline.

    Only targets not yet up are probed again. Returns (results, rounds).
    """
    give_up = Deadline(deadline, clock)
    results = {}
    pending = list(targets)
    rounds = 0
    while True:
        rounds += 1
        for result in probe_all(pending, concurrency=concurrency, budget=give_up.left()):
            previous = results.get(result["name"])
            result["attempts"] = (previous["attempts"] + 1) if previous else 1
            results[result["name"]] = result
        pending = [t for t in targets if results[t["name"]]["status"] == UNHEALTHY]
        if not any(t["required"] for t in pending) or give_up.left() <= delay:  # no time left for another round
            break
        sleep(delay)
    return [results[t["name"]] for t in targets], rounds


def failure_message(results):
    """'2 of 5 targets unhealthy: api (HTTP 503, expected 200); db (...)'."""
    failed = [r for r in results if r["status"] == UNHEALTHY and r["required"]]
    parts = ["%s (%s)" % (r["name"], r["error"]) for r in failed]
    return "%d of %d targets unhealthy: %s" % (len(failed), len(results), "; ".join(parts))


# --- the module's options and its one run (health_probe) ----------------------------------------------

TARGET_OPTIONS = dict(
    name=dict(type="str"),
    type=dict(type="str", required=True),
    timeout=dict(type="float", default=5.0),
    max_latency_ms=dict(type="int"),
    required=dict(type="bool", default=True),
    url=dict(type="str"),
    method=dict(type="str", default="GET"),
    headers=dict(type="dict"),
    body=dict(type="raw"),
    status_codes=dict(type="list", elements="int", default=[200]),
    json=dict(type="dict"),
    contains=dict(type="str"),
    validate_certs=dict(type="bool", default=True),
    cert_min_days=dict(type="int"),
    host=dict(type="str"),
    port=dict(type="int"),
    login_host=dict(type="str", default="localhost"),
    login_port=dict(type="int"),
    login_user=dict(type="str"),
    login_password=dict(type="str", no_log=True),
    db=dict(type="raw"),
    ssl_mode=dict(type="str"),
    ca_cert=dict(type="path"),
    query=dict(type="str"),
    tls=dict(type="bool", default=False),
    info=dict(type="dict"),
    container=dict(type="str"),
    compose_service=dict(type="str"),
    project_name=dict(type="str"),
    docker_host=dict(type="str"),
    queues=dict(type="dict"),
    path=dict(type="str"),
    warn_percent=dict(type="float"),
    crit_percent=dict(type="float"),
    services=dict(type="list", elements="str"),
    max_restarts=dict(type="int"),
)

# Defaults that belong to one target type only; dropped from targets of the other types.
_TYPE_DEFAULTS = {"method": "http", "status_codes": "http", "login_host": ("postgres", "redis"),
                  "tls": "redis", "validate_certs": ("http", "redis")}


def argspec_ex():
    return {"argspec": dict(
        targets=dict(type="list", elements="dict", required=True, options=TARGET_OPTIONS),
        concurrency=dict(type="int", default=20),
        retries=dict(type="int", default=0),
        delay=dict(type="float", default=1.0),
        wait_until_healthy=dict(type="bool", default=False),
        deadline=dict(type="float", default=60.0),
        fail_on_unhealthy=dict(type="bool", default=True),
    )}


def _strip_foreign_defaults(target):
    cleaned = dict(target)
    for field, types in _TYPE_DEFAULTS.items():
        if target.get("type") not in (types if isinstance(types, tuple) else (types,)):
            cleaned.pop(field, None)
    return cleaned


def run(module):
    """The whole health_probe task: validate every target, probe, grade; OpsError when a required one is down."""
    params = module.params
    module.no_log_values.update(secret_header_values(params["targets"]))
    started = time.monotonic()
    if params["concurrency"] < 1 or params["retries"] < 0 or params["delay"] < 0 or params["deadline"] <= 0:
        raise OpsError("concurrency must be at least 1, retries and delay not negative, deadline over 0")
    if params["wait_until_healthy"] and params["retries"]:
        raise OpsError("retries and wait_until_healthy do not mix: wait_until_healthy already probes again "
                       "until deadline; drop retries")
    targets = validate_targets([_strip_foreign_defaults(t) for t in params["targets"]])
    if params["wait_until_healthy"]:
        results, rounds = wait_until_healthy(targets, params["deadline"], delay=params["delay"],
                                             concurrency=params["concurrency"])
    else:
        results = probe_all(targets, concurrency=params["concurrency"], retries=params["retries"], delay=params["delay"])
        rounds = 1
    status = overall_status(results)
    counts = {s: sum(1 for r in results if r["status"] == s) for s in (HEALTHY, DEGRADED, UNHEALTHY)}
    counts["total"] = len(results)
    outcome = dict(changed=False, status=status, results=results,
                   failed_targets=[r["name"] for r in results if r["status"] == UNHEALTHY and r["required"]],
                   counts=counts, duration=round(time.monotonic() - started, 3), rounds=rounds)
    if status == UNHEALTHY:
        message = failure_message(results)
        if params["fail_on_unhealthy"]:
            raise OpsError(message, **outcome)
    else:
        message = "%s: %d healthy, %d degraded, %d unhealthy of %d targets" % (
            status, counts["healthy"], counts["degraded"], counts["unhealthy"], counts["total"])
    return dict(msg=message, **outcome)
