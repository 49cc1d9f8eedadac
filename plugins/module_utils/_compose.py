# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to runbook.ops: a Compose project as the Compose CLI sees it (its command, its parsed model). Not a public API.

The project's model comes from ``compose config --format json``: the CLI itself parses, interpolates and validates
the files, so what is planned is what ``up`` would do, and a file that does not parse fails before any change.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess

from ansible_collections.runbook.ops.plugins.module_utils._docker import docker_argspec_ex, engine_env
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError
from ansible_collections.runbook.ops.plugins.module_utils._module import merge_specs
from ansible_collections.runbook.ops.plugins.module_utils._process import run_tool

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_PROJECT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def project_argspec_ex():
    return merge_specs(docker_argspec_ex(), {
        "argspec": {
            "project_src": {"type": "path"},
            "files": {"type": "list", "elements": "path"},
            "env_files": {"type": "list", "elements": "path"},
            "project_name": {"type": "str"},
            "compose_command": {"type": "str", "default": "auto"},
            "command_timeout": {"type": "int", "default": 600},
        },
        "required_one_of": [("project_src", "files")],
    })


def go_duration(text):
    """Seconds in a Compose duration (``1m30s``, ``500ms``, ``10s``, or a bare number of seconds)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise OpsError("cannot read the duration %r (expected e.g. 30s, 1m30s)" % text)
    return sum(float(n) * _UNITS[u] for n, u in parts)


def resolve_command(compose_command, env, timeout=30):
    """The Compose CLI as an argv prefix: ``docker compose`` (v2) when it answers, else ``docker-compose``."""
    if compose_command is not None and compose_command != "auto":
        try:
            argv = shlex.split(compose_command)
        except ValueError as exc:
            raise OpsError("compose_command %r cannot be read as a command line: %s" % (compose_command, exc))
        if not argv:
            raise OpsError("compose_command is empty: leave it out (auto) or give e.g. 'docker compose'")
        return _answers(argv, env, timeout, required=True)
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0], path=env.get("PATH")) and _answers(argv, env, timeout):
            return argv
    raise OpsError("neither 'docker compose' (the Compose v2 plugin) nor 'docker-compose' answers on this host: "
                   "install the Compose plugin, or set compose_command to the Compose binary")


def _answers(argv, env, timeout, required=False):
    try:
        proc = subprocess.run(argv + ["version"], env=env, cwd="/", capture_output=True, timeout=timeout, check=False)
        ok = proc.returncode == 0
        why = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    except (OSError, subprocess.TimeoutExpired) as exc:
        ok, why = False, [str(exc)]
    if ok:
        return argv
    if required:
        raise OpsError("compose_command %r does not work (%s 'version' failed: %s)"
                       % (" ".join(argv), " ".join(argv), why[0]))
    return None


class ComposeProject:
    """One Compose project: the CLI that drives it and the model it parses to."""

    def __init__(self, params):
        # paths are made absolute here, where they are checked: Compose runs from / and must see the same files
        self.params = dict(params, project_src=params.get("project_src") and os.path.abspath(params["project_src"]),
                           files=[os.path.abspath(f) for f in params.get("files") or []],
                           env_files=[os.path.abspath(f) for f in params.get("env_files") or []])
        self.env = engine_env(params.get("docker_host"))
        self.timeout = params.get("command_timeout")
        if self.timeout is None or self.timeout <= 0:
            raise OpsError("command_timeout must be > 0 seconds, not %s" % self.timeout)
        name = params.get("project_name")
        if name is not None and not _PROJECT_NAME.match(name):
            raise OpsError("project_name %r is not a Compose project name: lowercase letters, digits, '_' and '-', "
                           "starting with a letter or digit" % name)
        src = self.params["project_src"]
        if src and not os.path.isdir(src):
            raise OpsError("project_src %s is not a directory" % src)
        for path in self.params["files"]:
            if not os.path.isfile(path):
                raise OpsError("the Compose file %s does not exist" % path)
        for path in self.params["env_files"]:
            if not os.path.isfile(path):
                raise OpsError("the environment file %s (env_files) does not exist" % path)
        self.command = resolve_command(params.get("compose_command"), self.env, min(30, self.timeout))
        self.model = self._config()
        self.name = self.model.get("name") or params.get("project_name")
        if not self.name:
            raise OpsError("Compose gave the project no name: set project_name")

    def argv(self, *args):
        argv = list(self.command)
        if self.params.get("project_src"):
            argv += ["--project-directory", self.params["project_src"]]
        for path in self.params.get("files") or []:
            argv += ["-f", path]
        for path in self.params.get("env_files") or []:
            argv += ["--env-file", path]
        if self.params.get("project_name"):
            argv += ["-p", self.params["project_name"]]
        return argv + list(args)

    def run(self, *args, what=None):
        return run_tool(self.argv(*args), self.env, what or "compose %s" % args[0], timeout=self.timeout)

    def _config(self):
        try:
            # every profile: a service of an inactive profile is still the project's, and may be running
            out = self.run("--profile", "*", "config", "--format", "json",
                           what="the Compose project does not parse; compose config")
        except OpsError as exc:
            raise exc.extend("fix the Compose file(s); nothing was changed")
        try:
            return json.loads(out)
        except ValueError as exc:
            raise OpsError("compose config printed no JSON (is the Compose CLI older than v2?): %s" % exc, exception=exc)

    @property
    def services(self):
        return self.model.get("services") or {}

    def grace_period(self, service):
        """Seconds a container of ``service`` gets between its stop signal and SIGKILL (Docker's default: 10)."""
        value = go_duration(self.services[service].get("stop_grace_period"))
        return 10.0 if value is None else value
