# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """A database server that runs in a container (plain Docker or a Compose service)."""

    DOCUMENTATION = r"""
options:
  container:
    description:
      - The server runs in this container (name or id). The client tools (C(pg_dump), C(psql), C(redis-cli) ...)
        then run inside it through the engine's exec API, so they match the server and need nothing installed on
        the host; their output streams into the same pipeline as on the host (their input, for restores).
      - The module's own connections are TCP connections made from inside the container's network namespace, so no
        port needs publishing. The connection options are as seen from inside the container (C(login_host), default
        localhost, and C(login_port)).
      - The module never reads or writes the container's files (a process in it could link them to the host's). So
        what would need them is refused, before anything is written. That is a C(pg_backup) directory format, a
        C(pg_restore) in_place mode or directory-format source, and a C(redis_backup) bgsave method or rdb_path.
        Custom-format restores stream into C(pg_restore) with one job.
      - The engine must run on the host that runs the task, and the task must run as root (C(become)).
      - Passwords reach the exec'd tools through their environment, never their argv.
      - A container that is missing, stopped, on another host, or lacks the tools fails the task before anything
        is written.
    type: str
  compose_service:
    description:
      - Instead of O(container), the Compose service whose container runs the server (the lowest-numbered running
        replica), found by the labels Compose puts on it. Needs O(project_name).
    type: str
  project_name:
    description: The Compose project of O(compose_service).
    type: str
  container_user:
    description:
      - User the tools run as inside the container (C(docker exec -u)), e.g. V(postgres) where the server accepts
        only peer authentication on its socket. Default is the container's own user.
    type: str
  docker_host:
    description:
      - The Docker engine of O(container), as C(DOCKER_HOST) takes it (a C(unix://) socket of this host).
      - Without it the C(DOCKER_HOST) of the task's environment is used, else the engine's default socket.
    type: str
notes:
  - With O(container) or O(compose_service), the Python library C(docker) and the C(docker) CLI are needed on the
    host that runs the task.
"""
