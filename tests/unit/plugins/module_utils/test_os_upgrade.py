"""os_upgrade's pure parts: apt's simulation output, security origins, exclusions, the before/after comparison.

The whole module runs against real apt on the fleet (tests/integration/test_fleet.py, the patching tests).
"""

from __future__ import annotations

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _os_upgrade as upgrade
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

# real apt-get -s -V output of Debian 12 (trimmed), with a kept-back package and a removal
SIMULATION = """Reading package lists...
Building dependency tree...
Reading state information...
Calculating upgrade...
The following packages have been kept back:
   linux-image-amd64 (6.1.129-1 => 6.1.140-1)
   pkg-two
The following packages will be upgraded:
   bash (5.2.15-2+b8 => 5.2.15-2+b13)
Inst base-files [12.4+deb12u11] (12.4+deb12u15 Debian:12.15/oldstable [amd64])
Conf base-files (12.4+deb12u15 Debian:12.15/oldstable [amd64])
Inst libgcrypt20 [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64]) []
Inst libssl3:i386 [3.0.19-1~deb12u2] (3.0.22-1~deb12u2 Debian-Security:12/oldstable-security [i386])
Inst linux-image-6.1.0-40-amd64 (6.1.153-1 Debian-Security:12/oldstable-security [amd64])
Inst runbook-patch-common [1.0] (1.1 Runbook-Security:fleet-security [all])
Inst runbook-patch-feature [1.0] (1.1 Runbook:fleet [all])
Remv old-thing [2.0]
"""


def test_the_simulation_gives_every_change_with_its_origins_and_security():
    changes, removals, kept_back = upgrade.parse_apt_simulation(SIMULATION)
    by_name = {c["name"]: c for c in changes}
    assert list(by_name) == ["base-files", "libgcrypt20", "libssl3:i386", "linux-image-6.1.0-40-amd64",
                             "runbook-patch-common", "runbook-patch-feature"]
    assert by_name["base-files"] == {"name": "base-files", "installed": "12.4+deb12u11", "candidate": "12.4+deb12u15",
                                     "arch": "amd64", "origins": ["Debian:12.15/oldstable"], "security": False}
    assert by_name["libgcrypt20"]["origins"] == ["Debian:12.15/oldstable", "Debian-Security:12/oldstable-security"]
    assert by_name["libgcrypt20"]["security"] is True
    assert by_name["linux-image-6.1.0-40-amd64"]["installed"] is None  # a new dependency
    assert by_name["runbook-patch-common"]["security"] is True
    assert by_name["runbook-patch-feature"]["security"] is False
    assert removals == [{"name": "old-thing", "installed": "2.0"}]
    assert kept_back == ["linux-image-amd64", "pkg-two"]


@pytest.mark.parametrize("origin, security", [
    ("Debian-Security:12/stable-security", True),
    ("Ubuntu:22.04/jammy-security", True),
    ("Ubuntu:22.04/jammy-updates", False),
    ("Debian:12.15/oldstable", False),
    ("Runbook-Security:fleet-security", True),
    ("Runbook:fleet", False),
    ("Docker:bookworm/stable", False),
])
def test_security_is_told_by_the_label_or_the_archive(origin, security):
    assert upgrade.is_security([origin]) is security


def test_exclusions_match_names_and_patterns_with_or_without_the_architecture():
    assert upgrade.excluded_by("linux-image-6.1.0-40-amd64", ["nginx", "linux-image-*"]) == "linux-image-*"
    assert upgrade.excluded_by("libssl3:i386", ["libssl3"]) == "libssl3"
    assert upgrade.excluded_by("postgresql-15", ["postgresql"]) is None


def test_the_comparison_reads_upgrades_new_packages_and_removals():
    before = {"a:all": ("a", "all", "1.0"), "b:amd64": ("b", "amd64", "2.0"), "c:all": ("c", "all", "1")}
    after = {"a:all": ("a", "all", "1.1"), "b:amd64": ("b", "amd64", "2.0"), "d:all": ("d", "all", "3")}
    changed, installed, removed = upgrade.compare(before, after)
    assert changed == [{"name": "a", "arch": "all", "before": "1.0", "after": "1.1"}]
    assert installed == [{"name": "d", "arch": "all", "after": "3"}]
    assert removed == [{"name": "c", "arch": "all", "before": "1"}]


@pytest.mark.parametrize("params, message", [
    ({"network_timeout": 0}, "network_timeout is 0"),
    ({"lock_timeout": -1}, "lock_timeout is -1"),
    ({"exclude": ["nginx", " "]}, "exclude holds ' '"),
    ({"exclude": ["-o APT::Get::Foo=1"]}, "without spaces"),
    ({"exclude": ["--allow-downgrades"]}, "not starting with '-'"),
])
def test_bad_options_are_refused_before_anything_runs(params, message):
    values = {"network_timeout": 30, "download_timeout": 1800, "lock_timeout": 120, "exclude": []}
    values.update(params)
    with pytest.raises(OpsError) as caught:
        upgrade.validate(values)
    assert message in caught.value.message


def test_a_sigterm_during_the_install_waits_for_the_installer_and_is_reported():
    """dpkg half way is never killed: the signal is held until the installer exits, then reported."""
    import os
    import signal
    import threading

    from ansible_collections.runbook.ops.plugins.module_utils._errors import Terminated

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        returncode, output, signalled = upgrade._run_to_the_end(["sh", "-c", "sleep 1; echo configured"], "installer")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (returncode, output, signalled) == (0, "configured\n", True)


def test_a_newer_installed_kernel_than_the_running_one_requires_a_reboot(tmp_path):
    import os
    running = os.uname().release
    assert upgrade.kernel_reboot_reason(str(tmp_path)) is None  # no kernel of this host's packages: cannot tell
    (tmp_path / ("vmlinuz-" + running)).write_text("")
    (tmp_path / "vmlinuz-0.1.0-1-amd64").write_text("")
    assert upgrade.kernel_reboot_reason(str(tmp_path)) is None
    (tmp_path / "vmlinuz-999.1.0-1-amd64").write_text("")
    assert upgrade.kernel_reboot_reason(str(tmp_path)) == "kernel 999.1.0-1-amd64 is installed, %s is running" % running
    assert upgrade._version_key("6.1.0-40-amd64") > upgrade._version_key("6.1.0-9-amd64")


def test_a_plan_that_would_remove_or_upgrade_a_left_out_package_is_refused():
    apt = upgrade.Apt({"network_timeout": 30, "lock_timeout": 1, "exclude": ["postgresql-*"], "security_only": True})
    selected = [{"name": "libssl3"}]
    apt.refuse_left_out(selected, [{"name": "libssl3", "installed": "1", "security": True}], [])
    with pytest.raises(OpsError) as caught:
        apt.refuse_left_out(selected, [], [{"name": "postgresql-15", "installed": "15.1"}])
    assert "would also remove postgresql-15" in caught.value.message and "nothing was changed" in caught.value.message
    with pytest.raises(OpsError) as caught:
        apt.refuse_left_out(selected, [{"name": "openssl", "installed": "1", "security": False}], [])
    assert "would also upgrade openssl" in caught.value.message
