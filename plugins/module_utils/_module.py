# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: the one boundary where a module turns errors into fail_json. Not a public API.

Options travel with their rules: a helper's ``*_argspec_ex()`` returns ``{"argspec": {...}, "mutually_exclusive":
[...], "required_if": [...], ...}``; ``merge_specs`` combines several and ``run_module`` passes the rules straight to
AnsibleModule, so no module restates a rule by hand.
"""

from __future__ import annotations

import signal
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError, Terminated, pop_warnings

LIST_RULES = ("mutually_exclusive", "required_together", "required_one_of", "required_if")
DICT_RULES = ("required_by",)


def merge_specs(*spec_exs):
    """One spec_ex from several: options merged (a later one wins), rules concatenated."""
    merged = {"argspec": {}}
    for spec_ex in spec_exs:
        for name, value in spec_ex.items():
            if name == "argspec":
                merged["argspec"].update(value)
            elif name in LIST_RULES:
                merged.setdefault(name, []).extend(value)
            elif name in DICT_RULES:
                merged.setdefault(name, {}).update(value)
            else:
                raise ValueError("unknown argument spec rule %r" % name)
    return merged


def _terminate(signum, frame):
    raise Terminated()


def run_module(spec_ex, work):
    """Build the module (check mode always supported), run ``work(module)`` and exit with its result.

    Every failure leaves through here: OpsError with its message and details, SIGTERM after the helpers' cleanups
    ran, anything unexpected with its traceback in ``exception`` - never a bare "Module failed".
    """
    rules = dict(spec_ex)
    module = AnsibleModule(argument_spec=rules.pop("argspec"), supports_check_mode=True, **rules)
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed, result = outcome(work, module)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _warn(module)
    if failed:
        module.fail_json(**result)
    module.exit_json(**result)


def outcome(work, module):
    """(failed, result) of ``work(module)``: a failure as a result with its message and details."""
    try:
        return False, work(module)
    except OpsError as exc:
        details = dict(exc.details)
        if exc.exception is not None and "exception" not in details:
            details["exception"] = "".join(traceback.format_exception(type(exc.exception), exc.exception,
                                                                      exc.exception.__traceback__))
        return True, dict(details, msg=exc.message)
    except Terminated as exc:
        return True, dict(exc.details, msg="stopped by a signal (SIGTERM or SIGINT); what this task had started was "
                                           "cleaned up (scratch databases, servers and partial files removed); run it "
                                           "again to finish the job")
    except Exception as exc:  # the catch-all boundary: a bug must still say what happened
        return True, dict(msg="unexpected %s: %s. This is a bug in runbook.ops: please report it with the traceback in "
                              "'exception' (-vvv shows it)" % (exc.__class__.__name__, exc), exception=traceback.format_exc())


def _warn(module):
    for message in pop_warnings():
        module.warn(message)
