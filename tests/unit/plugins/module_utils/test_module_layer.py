"""The module layer: merged argument specs, the retry helpers, Redis option validation."""

from __future__ import annotations

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _redis_restore, _retry
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError
from ansible_collections.runbook.ops.plugins.module_utils._module import merge_specs


def test_merge_specs_combines_options_and_rules():
    merged = merge_specs({"argspec": {"a": {}}, "mutually_exclusive": [("a", "b")]},
                         {"argspec": {"b": {}}, "mutually_exclusive": [("c", "d")], "required_by": {"x": "y"}})
    assert merged == {"argspec": {"a": {}, "b": {}}, "mutually_exclusive": [("a", "b"), ("c", "d")],
                      "required_by": {"x": "y"}}
    with pytest.raises(ValueError):
        merge_specs({"argspec": {}, "requird_if": []})


def test_poll_returns_the_first_truthy_value_and_gives_up_at_the_timeout():
    now = [0.0]
    values = iter([None, None, "ready"])
    assert _retry.poll(lambda: next(values), 10, 1, clock=lambda: now[0],
                       sleep=lambda s: now.__setitem__(0, now[0] + s)) == "ready"
    now = [0.0]
    calls = []

    def give_up():
        raise OpsError("gave up at %s" % now[0])

    with pytest.raises(OpsError, match="gave up at 3"):
        _retry.poll(lambda: calls.append(1), 3, 1, on_timeout=give_up, clock=lambda: now[0],
                    sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert len(calls) == 4


def test_attempts_yield_retries_plus_one_and_sleep_between():
    slept = []
    assert list(_retry.attempts(2, 0.5, sleep=slept.append)) == [1, 2, 3]
    assert slept == [0.5, 0.5]


@pytest.mark.parametrize("db_map, words", [({"0": "x"}, "not a pair of db numbers"), ({"a": 1}, "not a pair"),
                                           ({"0": -1}, "negative")])
def test_db_map_entries_that_are_not_db_numbers_are_refused(db_map, words):
    with pytest.raises(OpsError, match=words):
        _redis_restore.parse_db_map(db_map)


def test_db_map_from_yaml_keys_of_either_type():
    assert _redis_restore.parse_db_map({0: 8, "1": "9"}) == {0: 8, 1: 9}


class FakeModule:
    """Stands in for AnsibleModule: records how run_module exits."""

    def __init__(self, argument_spec, supports_check_mode, **rules):
        self.rules = rules
        self.warnings = []
        self.exit = None

    def warn(self, message):
        self.warnings.append(message)

    def fail_json(self, **result):
        self.exit = ("failed", result)
        raise SystemExit(1)

    def exit_json(self, **result):
        self.exit = ("ok", result)
        raise SystemExit(0)


def run_with(monkeypatch, work, spec_ex=None):
    from ansible_collections.runbook.ops.plugins.module_utils import _module

    made = []
    monkeypatch.setattr(_module, "AnsibleModule", lambda **kwargs: made.append(FakeModule(**kwargs)) or made[-1])
    with pytest.raises(SystemExit):
        _module.run_module(spec_ex or {"argspec": {}}, work)
    return made[0]


def test_run_module_turns_an_unexpected_exception_into_a_message_with_its_traceback(monkeypatch):
    def buggy(module):
        return {}["missing"]

    module = run_with(monkeypatch, buggy)
    status, result = module.exit
    assert status == "failed" and result["msg"].startswith("unexpected KeyError: 'missing'. This is a bug in runbook.ops")
    assert "Traceback" in result["exception"] and "buggy" in result["exception"]


def test_run_module_passes_ops_error_details_and_warnings_and_rules(monkeypatch):
    from ansible_collections.runbook.ops.plugins.module_utils._errors import warn

    def failing(module):
        warn("something to know")
        raise OpsError("what happened; what to do", changed=True, restore={"id": "x"})

    module = run_with(monkeypatch, failing, {"argspec": {}, "mutually_exclusive": [("a", "b")]})
    status, result = module.exit
    assert status == "failed" and result == {"msg": "what happened; what to do", "changed": True, "restore": {"id": "x"}}
    assert module.warnings == ["something to know"] and module.rules == {"mutually_exclusive": [("a", "b")]}


def test_run_module_reports_sigterm_after_cleanups_ran(monkeypatch):
    import os
    import signal

    cleaned = []

    def interrupted(module):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            return {"changed": False}
        finally:
            cleaned.append(True)

    module = run_with(monkeypatch, interrupted)
    status, result = module.exit
    assert status == "failed" and result["msg"].startswith("stopped by a signal") and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
