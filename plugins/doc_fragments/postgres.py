# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """PostgreSQL connection options, named as in community.postgresql."""

    DOCUMENTATION = r"""
options:
  login_host:
    description: Host of the PostgreSQL server.
    type: str
    default: localhost
    aliases: [host]
  login_port:
    description: Port of the PostgreSQL server.
    type: int
    default: 5432
    aliases: [port]
  login_user:
    description: Role to log in as.
    type: str
    default: postgres
  login_password:
    description:
      - Password of O(login_user). It reaches the PostgreSQL tools only through C(PGPASSWORD) in their
        environment, never on a command line, and never appears in results.
    type: str
  login_unix_socket:
    description: Directory of the server's Unix socket; used instead of O(login_host) when set.
    type: str
  ssl_mode:
    description: libpq sslmode.
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ca_cert:
    description: CA certificate to verify the server with (libpq sslrootcert).
    type: path
    aliases: [ssl_rootcert]
  connect_timeout:
    description:
      - Seconds to wait for a connection (libpq waits at least 2). The client tools also use TCP keepalives, so a
        dead network path during a dump or restore is noticed in about 90 seconds instead of hanging.
    type: int
    default: 10
notes:
  - Database names reach the client tools inside a quoted connection string, so a name holding C(=) or looking like
    a URI is never read as connection parameters.
  - Needs the Python library C(psycopg2) and the PostgreSQL client tools on the host the module runs on.
"""
