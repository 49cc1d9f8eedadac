"""compose_scale's plan as data: which containers go, which are started, how many are created."""

from __future__ import annotations

import pytest

from ansible_collections.runbook.ops.plugins.module_utils._compose import go_duration
from ansible_collections.runbook.ops.plugins.module_utils._compose_scale import (Settling, cannot_recover, not_ready,
                                                                                 plan_service, replicas_wanted)
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError


def box(number, state="running", health="healthy", restart="no", output="", exit_code=0):
    return {"name": "app-web-%d" % number, "id": "id%d" % number, "number": number, "state": state, "health": health,
            "last_health_output": output, "last_health_exit_code": exit_code, "restart_policy": restart}


def names(entries):
    return [e["name"] for e in entries]


def test_matching_counts_plan_nothing():
    plan = plan_service([box(1), box(2)], 2)
    assert plan == {"before": 2, "after": 2, "remove": [], "start": [], "create": 0}


def test_scaling_up_creates_only_the_missing_replicas():
    assert plan_service([box(1)], 3)["create"] == 2
    assert plan_service([], 2)["create"] == 2


def test_scaling_down_removes_the_highest_numbered_running_replicas():
    plan = plan_service([box(3), box(1), box(2), box(4)], 2)
    assert names(plan["remove"]) == ["app-web-4", "app-web-3"]
    assert all(e["running"] for e in plan["remove"]) and plan["create"] == 0 and plan["before"] == 4


def test_stopped_containers_go_before_running_ones_and_kept_stopped_ones_are_started():
    plan = plan_service([box(1), box(2, "exited"), box(3)], 2)
    assert names(plan["remove"]) == ["app-web-2"] and plan["remove"][0]["running"] is False
    assert plan["start"] == [] and plan["before"] == 2
    plan = plan_service([box(1, "exited"), box(2)], 2)
    assert plan["remove"] == [] and plan["start"] == ["app-web-1"] and plan["create"] == 0


def test_scaling_to_zero_removes_everything():
    plan = plan_service([box(1), box(2, "created")], 0)
    assert names(plan["remove"]) == ["app-web-2", "app-web-1"] and plan["after"] == 0


@pytest.mark.parametrize("services, message", [
    ({}, "services is empty"),
    ({"web": -1}, "must be >= 0"),
    ({"web": True}, "whole number"),
    ({"web": 1.5}, "whole number"),
    ({"web": "2x"}, "whole number"),
    ({"web": "\u00b3"}, "whole number"),
    ({"web": "\u0663"}, "whole number"),
    ({"web": 10001}, "looks like a typo"),
])
def test_bad_counts_are_refused(services, message):
    with pytest.raises(OpsError, match=message):
        replicas_wanted(services)


def test_counts_given_as_digit_strings_are_read():
    assert replicas_wanted({"web": "3", "worker": 0}) == {"web": 3, "worker": 0}


@pytest.mark.parametrize("text, seconds", [("1m30s", 90.0), ("500ms", 0.5), ("10s", 10.0), ("2h", 7200.0),
                                           ("45", 45.0), (None, None), ("1.5s", 1.5)])
def test_go_durations(text, seconds):
    assert go_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten seconds", "10x", "1m 30s"])
def test_unreadable_durations_are_refused(text):
    with pytest.raises(OpsError, match="cannot read the duration"):
        go_duration(text)


def test_readiness_reasons_name_the_state_and_the_last_health_output():
    assert not_ready(box(1)) is None
    assert not_ready(box(1, health="none")) is None
    assert not_ready(box(1, health="starting", exit_code=None)) == "running, starting"
    assert not_ready(box(1, health="unhealthy", output="db down", exit_code=1)) == \
        "running, unhealthy: last check exited 1: db down"
    assert not_ready(dict(box(1, "exited"), exit_code=3)) == "exited with code 3"
    assert cannot_recover(box(1, "exited")) and not cannot_recover(box(1, "exited", restart="unless-stopped"))


def test_a_container_without_healthcheck_must_run_a_while_without_restarting():
    now = [0.0]
    settling = Settling(seconds=2, clock=lambda: now[0])
    first = dict(box(1, health="none"), started_at="t0", restart_count=0)
    assert "less than 2s" in settling.why_not(first)
    now[0] = 2.5
    assert settling.why_not(first) is None
    # a crash loop restarts it: the clock starts again for the new run
    again = dict(first, started_at="t1", restart_count=1)
    assert "restarted 1 times" in settling.why_not(again)
    now[0] = 3.0
    assert settling.why_not(again) is not None
    # a healthcheck is its own proof
    assert settling.why_not(dict(box(2), started_at="t0", restart_count=0)) is None
