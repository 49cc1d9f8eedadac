"""Every role documents what it takes: each default is in meta/argument_specs.yml with the same default, and every
entry point documents only variables of its role (as prometheus-community's roles lint it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "roles").iterdir() if p.is_dir())


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_defaults_and_argument_specs_agree(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {} if (role / "defaults").exists() else {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    main = specs["main"]["options"]
    missing = sorted(set(defaults) - set(main))
    assert not missing, "defaults without a description in argument_specs: %s" % missing
    for name, value in defaults.items():
        if main[name].get("required"):
            continue  # the default only shows the shape; the role refuses to run without a value
        if value is None:
            assert "default" not in main[name], name
        else:
            assert main[name].get("default") == value, "%s: default %r, argument_specs %r" % (
                name, value, main[name].get("default"))
    for entry, spec in specs.items():
        for name in spec.get("options", {}):
            assert name.startswith(role.name + "_"), "%s entry point %s documents %s" % (role.name, entry, name)
        assert (role / "tasks" / ("%s.yml" % entry)).exists(), "entry point %s has no tasks/%s.yml" % (entry, entry)
