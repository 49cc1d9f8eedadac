"""Issue 8, health_probe: time bounds (A10), redirects (A12) and credentials in URLs (A13), with real peers."""

from __future__ import annotations

import time

import pytest

from hostile import HostileHTTP, SilentServer
from test_health_probe import PROBE, by_name, probe_task


@pytest.fixture
def hostile():
    first, second = HostileHTTP(), HostileHTTP()
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.stop()


def timed(ansible, tasks, **kwargs):
    started = time.monotonic()
    run = ansible.play(tasks, **kwargs)
    return run, time.monotonic() - started


def test_a10_a_probe_is_bounded_by_its_timeout_whatever_the_peer_does(ansible, hostile, silent):
    web = hostile[0].base_url
    targets = [
        {"name": "trickle-body", "type": "http", "url": web + "/trickle", "timeout": 2, "required": False},
        {"name": "trickle-head", "type": "http", "url": web + "/trickle-head", "timeout": 2, "required": False},
        {"name": "silent-redis", "type": "redis", "login_host": "127.0.0.1", "login_port": silent.port, "timeout": 1,
         "required": False},
        {"name": "silent-pg", "type": "postgres", "login_host": "127.0.0.1", "login_port": silent.port, "timeout": 2,
         "required": False},
        {"name": "silent-http", "type": "http", "url": "http://127.0.0.1:%d/" % silent.port, "timeout": 1,
         "required": False},
    ]
    run, took = timed(ansible, probe_task(targets))
    assert run.rc == 0, run
    rows = by_name(run.task(PROBE)["result"])
    for name, limit in (("trickle-body", 2), ("trickle-head", 2), ("silent-redis", 1), ("silent-pg", 2), ("silent-http", 1)):
        assert rows[name]["status"] == "unhealthy", rows[name]
        assert rows[name]["latency_ms"] <= limit * 1000 + 1000, rows[name]
        assert any(words in rows[name]["error"] for words in ("timed out", "no answer within", "timeout expired")), rows[name]
    assert took < 20, "the probes took %.0f s in all" % took


def test_a10_wait_until_healthy_never_outlives_its_deadline(ansible, hostile):
    target = {"name": "slow", "type": "http", "url": hostile[0].base_url + "/trickle", "timeout": 10}
    run, took = timed(ansible, probe_task([target], wait_until_healthy=True, deadline=3, delay=0.5))
    assert run.rc != 0
    result = run.task(PROBE)["result"]
    assert result["status"] == "unhealthy" and result["duration"] <= 3.5, result["duration"]
    assert took < 15


def test_a12_credentials_are_not_sent_to_another_origin_and_other_schemes_are_refused(ansible, hostile):
    origin, other = hostile
    headers = {"Authorization": "Bearer origin-only-token", "X-Api-Key": "origin-only-key", "Accept": "application/json"}
    targets = [
        {"name": "same-origin", "type": "http", "url": origin.base_url + "/redirect?to=/echo", "headers": headers},
        {"name": "cross-origin", "type": "http", "url": origin.base_url + "/redirect?to=%s/echo" % other.base_url,
         "headers": headers},
        {"name": "ftp", "type": "http", "url": origin.base_url + "/redirect?to=ftp://127.0.0.1/x", "required": False},
        {"name": "file", "type": "http", "url": origin.base_url + "/redirect?to=file:///etc/passwd", "required": False},
    ]
    run = ansible.play(probe_task(targets))
    assert run.rc == 0, run
    rows = by_name(run.task(PROBE)["result"])
    assert rows["same-origin"]["status"] == rows["cross-origin"]["status"] == "healthy"
    kept = [r["headers"] for r in origin.seen if r["path"] == "/echo"]
    assert kept and kept[0]["Authorization"] == "Bearer origin-only-token" and kept[0]["X-Api-Key"] == "origin-only-key"
    received = [r["headers"] for r in other.seen if r["path"] == "/echo"]
    assert received and "Authorization" not in received[0] and "X-Api-Key" not in received[0]
    assert received[0]["Accept"] == "application/json"
    for name, scheme in (("ftp", "ftp"), ("file", "file")):
        assert rows[name]["status"] == "unhealthy" and "redirected to a %s: URL, which is not followed" % scheme \
            in rows[name]["error"]


def test_a13_credentials_in_a_url_are_used_and_masked_everywhere(ansible, hostile):
    web = hostile[0]
    url = "http://ops:p%40ss%20w0rd@127.0.0.1:{0}/basic".format(web.port)
    wrong = "http://ops:wrong-password@127.0.0.1:{0}/basic".format(web.port)
    run = ansible.play(probe_task([{"type": "http", "url": url}, {"name": "wrong", "type": "http", "url": wrong}]),
                       verbosity=3)
    assert run.rc != 0
    result = run.task(PROBE)["result"]
    assert [r["name"] for r in result["results"]] == ["http://ops:********@127.0.0.1:%d/basic" % web.port, "wrong"]
    assert result["results"][0]["status"] == "healthy" and result["results"][1]["http_status"] == 401
    everything = run.output + str(run.results)
    for secret in ("p@ss w0rd", "p%40ss%20w0rd", "wrong-password"):
        assert secret not in everything, secret
