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
