# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """How the modules reach a Docker engine, and a Compose project on it."""

    DOCUMENTATION = r"""
options:
  docker_host:
    description:
      - The Docker engine, as C(DOCKER_HOST) takes it (C(unix:///run/docker.sock), C(tcp://host:2376), C(ssh://user@host)).
      - Without it the C(DOCKER_HOST) of the task's environment is used, else the engine's default socket.
    type: str
  api_timeout:
    description: Seconds any one call to the engine's API may take (stopping a container adds its grace period).
    type: int
    default: 60
requirements:
  - the Python library C(docker) (Docker SDK for Python) on the host that runs the task
"""

    COMPOSE = r"""
options:
  project_src:
    description:
      - Directory of the Compose project (its C(compose.yaml) / C(docker-compose.yml) and C(.env)).
      - At least one of O(project_src) and O(files) is required.
    type: path
  files:
    description: Compose files, in order (later ones override earlier ones), as C(docker compose -f) takes them.
    type: list
    elements: path
  env_files:
    description:
      - Environment files for the variables the Compose files use, in order (C(docker compose --env-file)), instead
        of the C(.env) in O(project_src).
    type: list
    elements: path
  project_name:
    description: The project's name; without it Compose derives one (the directory's name, or C(name:) in the file).
    type: str
  compose_command:
    description:
      - The Compose CLI. V(auto) uses C(docker compose) (the v2 plugin) when it answers, else C(docker-compose).
      - Any other value is the command to run, e.g. V(/usr/libexec/docker/cli-plugins/docker-compose).
    type: str
    default: auto
  command_timeout:
    description: Seconds one Compose command (C(config), C(up)) may take before it is stopped.
    type: int
    default: 600
"""
