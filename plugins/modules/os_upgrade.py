#!/usr/bin/python
# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: os_upgrade
short_description: Upgrade the OS packages of a host and return what changed and whether it needs a reboot
version_added: 0.2.0
description:
  - Refreshes the package indexes, plans the pending upgrades (marking the security fixes), applies the ones this run
    selects, and returns the packages that changed, read from the package database before and after, not parsed from
    the installer's output.
  - With apt (Debian, Ubuntu), a security fix is an upgrade whose candidate comes from a C(*-security) archive or a
    C(*Security) origin. With dnf (RHEL family; not tested by this collection's suite), C(--security).
  - Check mode fetches fresh indexes into a private copy of apt's lists and plans against them, so it lists what is
    pending now and writes nothing (not even the lists or apt's cache).
  - Only the index refresh and the download talk to the network, each bounded by O(download_timeout) and each stalled
    connection by O(network_timeout). The install phase is never killed, because an interrupted dpkg leaves
    packages half configured; a SIGTERM that arrives during it is reported once the installer is done.
  - Reports whether the host needs a reboot (C(/var/run/reboot-required) on Debian and Ubuntu, C(needs-restarting -r)
    on the RHEL family). It never reboots; the C(runbook.ops.patching) role does that, only when it is required.
  - On Debian, C(/var/run/reboot-required) is written only where unattended-upgrades is installed, so an installed
    kernel newer than the running one also counts as a reboot required.
  - Refuses to start on a package database left half configured by an earlier run (C(dpkg --audit)).
  - The install's output goes to a file, and SIGTERM, SIGINT and SIGHUP are held until it ends, so a dropped
    connection or a killed task never leaves dpkg half way. Packages that O(exclude) or O(security_only) leave out
    are installed with C(apt-get install --only-upgrade); the packages apt marked automatic stay so.
author:
  - runbook.ops maintainers (@runbook-ops)
extends_documentation_fragment:
  - runbook.ops.attributes
attributes:
  check_mode:
    support: full
    details: Plans against freshly fetched indexes kept in a private directory; installs and writes nothing.
  diff_mode:
    support: full
    details: The packages before and after (in check mode, the versions they would get).
  idempotent:
    support: full
    details: Once every selected upgrade is applied, a second run finds nothing to do and reports no change.
options:
  manager:
    description: The package manager; V(auto) uses apt-get where it is installed, dnf otherwise.
    type: str
    default: auto
    choices: [auto, apt, dnf]
  upgrade:
    description:
      - V(safe) upgrades and installs new dependencies but never removes a package (C(apt-get upgrade
        --with-new-pkgs)); V(full) may remove packages to complete the upgrade (C(apt-get dist-upgrade)).
      - dnf always upgrades as V(full) does.
    type: str
    default: safe
    choices: [safe, full]
  security_only:
    description:
      - Apply only the security fixes; the other pending upgrades are listed in RV(skipped_not_security).
      - A fix is told by the origin of the version apt would install. When a newer version in C(-updates)
        supersedes a security fix, the package is listed as skipped, not half upgraded.
      - With dnf, C(--security) may bring in non-security dependencies.
    type: bool
    default: false
  exclude:
    description:
      - Packages (names or shell patterns such as C(linux-image-*)) this run leaves at their installed version.
      - An upgrade that would pull a left-out package along, or remove one, is refused before anything changes,
        naming both (apt). With dnf, C(--exclude) hides the packages, and they are not listed in RV(excluded).
      - Packages held with C(apt-mark hold) stay held either way; they are listed in RV(held).
    type: list
    elements: str
    default: []
  update_cache:
    description: Refresh the package indexes first (C(apt-get update)); V(false) plans against the indexes on the host.
    type: bool
    default: true
  network_timeout:
    description: Seconds a connection to a mirror may stall before it is dropped (apt's C(Acquire::http::Timeout)).
    type: int
    default: 30
  download_timeout:
    description: Seconds the index refresh, and then the download of the packages, may take each in all.
    type: int
    default: 1800
  lock_timeout:
    description: Seconds to wait for another apt or dpkg run (unattended-upgrades) to release its lock.
    type: int
    default: 120
notes:
  - Needs root (C(become)).
  - Service restarts that needrestart would do are left out (C(NEEDRESTART_MODE=l)); configuration files changed
    locally are kept (C(--force-confold)).
seealso:
  - module: ansible.builtin.apt
  - module: ansible.builtin.dnf
"""

EXAMPLES = r"""
- name: What would be upgraded?
  runbook.ops.os_upgrade:
  check_mode: true
  register: pending

- name: Apply the security fixes, leaving the kernel and PostgreSQL alone
  runbook.ops.os_upgrade:
    security_only: true
    exclude: ["linux-image-*", "postgresql-*"]
  register: upgraded

- name: Reboot only when the upgrade needs it
  ansible.builtin.reboot:
  when: upgraded.reboot_required
"""

RETURN = r"""
manager:
  description: The package manager used (apt or dnf).
  returned: always
  type: str
pending:
  description: Every pending upgrade (name, arch, installed, candidate, origins, security); installed is null for a new
    dependency.
  returned: always
  type: list
  elements: dict
selected:
  description: The names of the pending upgrades this run applied (in check mode, would apply).
  returned: always
  type: list
  elements: str
excluded:
  description: Pending upgrades left out by O(exclude).
  returned: always
  type: list
  elements: str
skipped_not_security:
  description: Pending upgrades left out by O(security_only).
  returned: always
  type: list
  elements: str
held:
  description: Packages held by the package manager (C(apt-mark showhold)).
  returned: always
  type: list
  elements: str
kept_back:
  description: Upgrades apt kept back (they need a removal, which V(safe) never does).
  returned: always
  type: list
  elements: str
would_remove:
  description: Packages the planned upgrade removes (only with O(upgrade=full)).
  returned: always
  type: list
  elements: str
packages:
  description: Each package whose version changed, with before and after, read from the package database.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "openssl", "arch": "amd64", "before": "3.0.15-1~deb12u1", "after": "3.0.17-1~deb12u2"}]
installed:
  description: Packages newly installed as dependencies.
  returned: always
  type: list
  elements: dict
removed:
  description: Packages removed.
  returned: always
  type: list
  elements: dict
counts:
  description: pending, selected, excluded, changed, installed and removed.
  returned: always
  type: dict
reboot_required:
  description: The host needs a reboot (for this run's upgrades or an earlier one's); null when it cannot be told.
  returned: always
  type: bool
reboot_required_before:
  description: A reboot was already pending before this run (apt only; null with dnf).
  returned: always
  type: bool
reboot_reason:
  description: Why a reboot is required when the package manager did not say so (a newer kernel installed than runs).
  returned: when a newer installed kernel requires the reboot
  type: str
reboot_unknown:
  description: Why the need for a reboot cannot be told (dnf without C(needs-restarting)).
  returned: when RV(reboot_required) is null
  type: str
reboot_required_packages:
  description: The packages that asked for the reboot (C(/var/run/reboot-required.pkgs)).
  returned: always
  type: list
  elements: str
durations:
  description: Seconds per phase (audit, update, plan, snapshot, download, install, total).
  returned: always
  type: dict
duration:
  description: Seconds the task took.
  returned: always
  type: float
"""

from ansible_collections.runbook.ops.plugins.module_utils._module import run_module
from ansible_collections.runbook.ops.plugins.module_utils._os_upgrade import Upgrade, argspec_ex


def main():
    run_module(argspec_ex(), lambda module: Upgrade(module, module.params).run())


if __name__ == "__main__":
    main()
