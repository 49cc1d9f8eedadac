# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: the one place where a module turns an OpsError into fail_json. Not a public API."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError


def run_module(argument_spec, work, **rules):
    """Build the module (check mode always supported), run ``work(module)`` and exit with its result."""
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, **rules)
    try:
        result = work(module)
    except OpsError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    module.exit_json(**result)
