"""Pure logic of the health probe: validation, JSON assertions, grading, polling."""

from __future__ import annotations

import json

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _probe
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

HEALTH = json.dumps({"status": "healthy", "checks": {"database": {"status": "healthy", "ok": True, "latency": 2}},
                     "items": [{"status": "up"}, {"status": "down"}]})


def http(**fields):
    return dict({"name": "api", "type": "http", "url": "http://127.0.0.1/health"}, **fields)


def test_json_assertions_follow_dotted_paths_and_list_indexes():
    ok, detail, error = _probe.evaluate_http(http(json={"status": "healthy", "checks.database.status": "healthy",
                                                        "items.1.status": "down"}), 200, HEALTH)
    assert (ok, detail, error) == (True, "status: healthy", None)


def test_json_assertion_mismatch_and_missing_field_are_both_reported():
    ok, detail, error = _probe.evaluate_http(http(json={"checks.database.status": "degraded", "checks.cache.status": "healthy"}),
                                             200, HEALTH)
    assert not ok and detail is None
    assert error == "checks.database.status is healthy, expected degraded; checks.cache.status is missing (no 'cache')"


def test_yaml_loose_types_match_json_values():
    assert _probe.values_match(True, "true")
    assert _probe.values_match(2, "2")
    assert _probe.values_match("up", ["up", "ok"])
    assert not _probe.values_match(False, "true")
    assert not _probe.values_match("2", 3)


def test_unexpected_status_is_unhealthy_and_keeps_the_body_status():
    ok, detail, error = _probe.evaluate_http(http(), 503, json.dumps({"status": "unhealthy"}))
    assert not ok and detail == "status: unhealthy" and error == "HTTP 503, expected 200"
    assert _probe.evaluate_http(http(status_codes=[200, 503]), 503, "{}")[0]


def test_non_json_body_fails_json_assertions_but_passes_contains():
    assert _probe.evaluate_http(http(json={"status": "ok"}), 200, "pong")[2] == "body is not JSON, so the json assertions cannot hold"
    assert _probe.evaluate_http(http(contains="po"), 200, "pong")[0]
    assert _probe.evaluate_http(http(contains="xyz"), 200, "pong")[2] == "body does not contain 'xyz'"


@pytest.mark.parametrize("ok, latency, limit, status", [
    (True, 10, None, "healthy"), (True, 10, 20, "healthy"), (True, 30, 20, "degraded"), (False, 1, 20, "unhealthy")])
def test_grade(ok, latency, limit, status):
    assert _probe.grade(ok, latency, limit) == status


def test_overall_status_required_failure_is_unhealthy_optional_one_degrades():
    def row(status, required=True):
        return {"status": status, "required": required}

    assert _probe.overall_status([row("healthy"), row("healthy")]) == "healthy"
    assert _probe.overall_status([row("healthy"), row("degraded")]) == "degraded"
    assert _probe.overall_status([row("healthy"), row("unhealthy", False)]) == "degraded"
    assert _probe.overall_status([row("degraded"), row("unhealthy")]) == "unhealthy"


@pytest.mark.parametrize("targets, message", [
    ([], "targets is empty"),
    ([{"type": "smtp"}], "target #1: field 'type' is 'smtp'"),
    ([http(url=None)], "target 'api': an http target needs field 'url'"),
    ([http(url="localhost/health")], "target 'api': field 'url' is 'localhost/health'"),
    ([{"name": "mq", "type": "tcp", "host": "h"}], "target 'mq': a tcp target needs field 'port'"),
    ([{"name": "mq", "type": "tcp", "host": "h", "port": 70000}], "a port is 1-65535"),
    ([http(json={"a..b": 1})], "target 'api': field 'json': assertion path 'a..b' has an empty segment"),
    ([http(json={})], "target 'api': field 'json' must be a non-empty mapping"),
    ([http(cert_min_days=3)], "'cert_min_days' needs an https:// url"),
    ([http(), http()], "target 'api': field 'name' 'api' is used by another target"),
    ([{"type": "tcp", "host": "h", "port": 1, "query": "SELECT 1"}], "field(s) query do not apply to a tcp target"),
    ([http(timeout=0)], "'timeout' must be more than 0"),
    ([http(timeout=7200)], "at most 3600 seconds"),
    ([http(url="http://h:99999/")], "not a valid URL"),
    ([http(url="http://[::1/health")], "write IPv6 addresses in brackets"),
    ([http(url="http://h:0/")], "port 0"),
    ([{"name": "r", "type": "redis", "db": "two"}], "a Redis db is a number"),
    ([{"name": "r", "type": "redis", "login_port": 0}], "field 'login_port' is 0"),
    ([{"name": "d", "type": "disk"}], "target 'd': a disk target needs field 'path'"),
    ([{"name": "d", "type": "disk", "path": "var"}], "an absolute path"),
    ([{"name": "d", "type": "disk", "path": "/", "warn_percent": 95}], "0 < warn <= crit <= 100"),
    ([{"name": "m", "type": "memory", "crit_percent": 101}], "0 < warn <= crit <= 100"),
    ([{"name": "m", "type": "memory", "path": "/"}], "field(s) path do not apply to a memory target"),
    ([{"name": "c", "type": "containers"}], "needs field 'project_name'"),
    ([{"name": "c", "type": "containers", "project_name": "p", "max_restarts": -1}], "field 'max_restarts' is -1"),
    ([{"name": "q", "type": "redis", "queues": []}], "field 'queues' must map each queue"),
    ([{"name": "q", "type": "redis", "queues": {"celery": "lots"}}], "queues.celery is 'lots'"),
    ([{"name": "q", "type": "redis", "queues": {"celery": {"warn": 9, "crit": 5}}}], "0 <= warn (9) <= crit (5)"),
    ([{"name": "q", "type": "postgres", "compose_service": "db"}], "'compose_service' and 'project_name' go together"),
    ([{"name": "q", "type": "redis", "container": "a", "compose_service": "b", "project_name": "p"}],
     "'container' and 'compose_service' name the same thing"),
])
def test_validation_names_the_target_and_the_field(targets, message):
    with pytest.raises(OpsError) as raised:
        _probe.validate_targets(targets)
    assert message in raised.value.message


def test_validation_fills_defaults_and_names():
    targets = _probe.validate_targets([{"type": "tcp", "host": "db", "port": 5432},
                                       {"type": "redis", "login_host": "cache"}, {"type": "postgres"}])
    assert [t["name"] for t in targets] == ["db:5432", "redis://cache:6379", "postgres://localhost:5432"]
    assert all(t["required"] is True and t["timeout"] == 5.0 for t in targets)


def test_new_types_get_defaults_and_names():
    targets = _probe.validate_targets([{"type": "disk", "path": "/var"}, {"type": "memory"},
                                       {"type": "containers", "project_name": "shop"},
                                       {"type": "redis", "container": "cache", "queues": {"celery": 100}},
                                       {"type": "postgres", "compose_service": "db", "project_name": "shop"}])
    assert [t["name"] for t in targets] == ["disk:/var", "memory", "containers:shop", "redis://cache:6379",
                                            "postgres://shop.db:5432"]
    assert (targets[0]["warn_percent"], targets[0]["crit_percent"]) == (80.0, 90.0)
    assert targets[3]["queues"] == {"celery": {"warn": 100, "crit": 100}}


@pytest.mark.parametrize("used, status", [(10.0, "healthy"), (80.0, "degraded"), (89.9, "degraded"), (90.0, "unhealthy")])
def test_percent_thresholds(used, status):
    outcome = _probe._percent_outcome("disk", used, {"warn_percent": 80.0, "crit_percent": 90.0}, "detail")
    graded = "unhealthy" if not outcome["ok"] else ("degraded" if outcome.get("warning") else "healthy")
    assert graded == status


def test_secret_headers_are_collected_for_no_log():
    targets = [http(headers={"Authorization": "Bearer abc", "Accept": "json", "X-Api-Key": "k1"})]
    assert sorted(_probe.secret_header_values(targets)) == ["Bearer abc", "k1"]


def test_url_credentials_are_hidden_from_names_and_collected_for_no_log():
    targets = _probe.validate_targets([{"type": "http", "url": "http://ops:s%40cret@h:8000/health"}])
    assert targets[0]["name"] == "http://ops:********@h:8000/health"
    assert "s@cret" in _probe.secret_header_values(targets)
    assert _probe.split_credentials("http://ops:s%40cret@h/x") == ("http://h/x", "http://ops:********@h/x", ("ops", "s@cret"))


def test_wait_until_healthy_probes_only_pending_targets_until_the_deadline(monkeypatch):
    calls = []
    answers = {"a": iter(["unhealthy", "healthy"]), "b": iter(["healthy"])}

    def fake_probe_all(targets, concurrency, budget=None):
        calls.append([t["name"] for t in targets])
        return [{"name": t["name"], "status": next(answers[t["name"]]), "required": True, "attempts": 1} for t in targets]

    monkeypatch.setattr(_probe, "probe_all", fake_probe_all)
    now = [0.0]
    targets = [{"name": "a", "required": True}, {"name": "b", "required": True}]
    results, rounds = _probe.wait_until_healthy(targets, deadline=10, delay=1, clock=lambda: now[0],
                                                sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert calls == [["a", "b"], ["a"]]
    assert rounds == 2
    assert [r["status"] for r in results] == ["healthy", "healthy"]
    assert results[0]["attempts"] == 2


def test_wait_until_healthy_stops_at_the_deadline(monkeypatch):
    monkeypatch.setattr(_probe, "probe_all", lambda targets, concurrency, budget: [
        {"name": t["name"], "status": "unhealthy", "required": True, "attempts": 1} for t in targets])
    now = [0.0]
    results, rounds = _probe.wait_until_healthy([{"name": "a", "required": True}], deadline=3, delay=1,
                                                clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    # t=0, 1, 2: a round at t=3 would have no time left to probe in
    assert rounds == 3 and results[0]["status"] == "unhealthy" and results[0]["attempts"] == 3


def test_failure_message_lists_required_failures():
    results = [{"name": "api", "status": "unhealthy", "required": True, "error": "HTTP 503, expected 200"},
               {"name": "opt", "status": "unhealthy", "required": False, "error": "x"},
               {"name": "db", "status": "healthy", "required": True, "error": None}]
    assert _probe.failure_message(results) == "1 of 3 targets unhealthy: api (HTTP 503, expected 200)"
