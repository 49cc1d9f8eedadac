# Copyright: runbook.ops contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Redis connection options shared by every Redis module."""

    DOCUMENTATION = r"""
options:
  login_host:
    description: Host of the Redis server.
    type: str
    default: localhost
    aliases: [host]
  login_port:
    description: Port of the Redis server.
    type: int
    default: 6379
    aliases: [port]
  login_user:
    description: ACL user (Redis 6+); without it the default user is used.
    type: str
  login_password:
    description:
      - Password of O(login_user) or of the default user. It reaches C(redis-cli) only through C(REDISCLI_AUTH) in its
        environment, never on a command line, and never appears in results.
    type: str
  tls:
    description: Connect with TLS.
    type: bool
    default: false
  ca_cert:
    description: CA certificate to verify the server with when O(tls=true).
    type: path
  validate_certs:
    description: Verify the server's certificate when O(tls=true).
    type: bool
    default: true
  connect_timeout:
    description:
      - Seconds to wait for a connection and for each answer. The client never retries on its own, so a server that
        accepts connections and never answers fails the task in this time.
    type: float
    default: 10
notes:
  - Needs the Python library C(redis) and the C(redis-tools) (and for live restores C(redis-server)) packages on the
    host the module runs on.
"""
