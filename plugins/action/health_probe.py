# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action for runbook.ops.health_probe.

On the controller itself (connection local; no become, async, task timeout or environment; no Python interpreter
chosen for the host but the controller's), probes that need nothing beyond Python's own library (http, tcp, disk,
memory) run in this process: no module is packed and no interpreter started, which is most of a task's time (about
0.5 s). They run the same code with the same validated options, so the result is the module's. Anything else, and
any option the validator refuses or warns about, goes to the module as usual.
"""

from __future__ import annotations

import sys

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.plugins.action import ActionBase

from ansible_collections.runbook.ops.plugins.module_utils import _probe
from ansible_collections.runbook.ops.plugins.module_utils._errors import pop_warnings
from ansible_collections.runbook.ops.plugins.module_utils._module import outcome

IN_PROCESS_TYPES = frozenset(("http", "tcp", "disk", "memory"))  # standard library only: the controller has it
LOCAL = frozenset(("local", "ansible.builtin.local", "ansible.legacy.local"))


class InProcess:
    """What ``_probe.run`` reads of an AnsibleModule."""

    def __init__(self, params, no_log_values):
        self.params = params
        self.no_log_values = no_log_values


class ActionModule(ActionBase):

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        module = self._in_process(task_vars)
        if module is None:
            result.update(self._execute_module(task_vars=task_vars, wrap_async=self._wrap_async()))
            if not self._wrap_async():
                self._remove_tmp_path(self._connection._shell.tmpdir)
            return result
        failed, outcome_of_run = outcome(_probe.run, module)
        warnings = pop_warnings()
        outcome_of_run["invocation"] = {"module_args": module.params}
        result.update(remove_values(outcome_of_run, module.no_log_values))
        result.update(failed=failed, in_process=True)
        if warnings:
            result["warnings"] = warnings
        return result

    @staticmethod
    def _controller_python(interpreter):
        """Whether the host's Python is (or may be) this one: an interpreter set on purpose (another Python, a
        wrapper such as ip netns exec) is respected by running the module with it."""
        return (interpreter is None or str(interpreter).startswith("auto") or str(interpreter) == sys.executable
                or "ansible_playbook_python" in str(interpreter))

    def _wrap_async(self):
        return bool(self._task.async_val) and not self._connection.has_native_async

    def _in_process(self, task_vars):
        """The validated options when this task can run here, else None."""
        environment = self._task.environment
        if (self._connection.transport not in LOCAL or self._play_context.become or self._task.async_val
                or self._task.timeout  # the module's process is what a task timeout abandons
                or any(environment if isinstance(environment, list) else [environment])
                or not self._controller_python((task_vars or {}).get("ansible_python_interpreter"))):
            return None
        rules = dict(_probe.argspec_ex())
        checked = ArgumentSpecValidator(rules.pop("argspec"), **rules).validate(dict(self._task.args))
        if (checked.error_messages or checked.unsupported_parameters or getattr(checked, "_warnings", None)
                or getattr(checked, "_deprecations", None)):
            return None  # the module says what is wrong, in its own words
        params = checked.validated_parameters
        if not all(target.get("type") in IN_PROCESS_TYPES for target in params["targets"]):
            return None
        return InProcess(params, set(checked._no_log_values))
