"""`supervisor health`: ask a running supervisor's `/healthz`, for container health checks.

Docker's HEALTHCHECK runs a command inside the container and reads its exit status: 0 healthy,
anything else unhealthy. This is that command, so an image needs no curl: it reads the metrics
address from the configuration's `[metrics]` table (the rest of the file may hold an edit that
is not reloaded yet), asks `GET /healthz` there (a wildcard host on loopback), prints the answer
on one line and exits 0 for `200`, 1 for anything else, including no answer within the timeout.
"""

import http.client
import socket
import time

from supervisor import config
from supervisor.addresses import Address
from supervisor.errors import ConfigError

HEALTHY = 0
UNHEALTHY = 1
DEFAULT_TIMEOUT = 5.0  # seconds, in all (`supervisor health --help` says so too)
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix stream socket (the metrics endpoint may listen on `unix://PATH`)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def endpoint(config_path: str) -> Address:
    """The metrics address of the configuration, checked to be one that can be asked."""
    metrics = config.load_metrics(config_path)
    if not metrics.enabled:
        raise ConfigError(config_path, "metrics", "the endpoint is disabled: no /healthz to ask")
    if not metrics.address.is_unix and metrics.address.port == 0:
        raise ConfigError(config_path, "metrics.address", "port 0 is not a port that can be asked")
    return metrics.address


def check(address: Address, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, str]:
    """(healthy, one-line description) of `GET /healthz` at `address`, all within `timeout`."""
    deadline = time.monotonic() + timeout
    connection: http.client.HTTPConnection
    if address.is_unix:
        connection = _UnixHTTPConnection(address.path, timeout)
    else:
        host = _LOOPBACK.get(address.host, address.host)
        connection = http.client.HTTPConnection(host, address.port, timeout=timeout)
    try:
        connection.connect()
        connection.sock.settimeout(max(deadline - time.monotonic(), 0.001))  # the rest of it
        connection.request("GET", "/healthz", headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read(512).decode("utf-8", "replace").strip().replace("\n", " ")
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{address}: no answer from /healthz ({exc or type(exc).__name__})"
    finally:
        connection.close()
    text = f"{address}: {response.status} {body}".rstrip()
    return response.status == 200, text


def run(config_path: str, timeout: float = DEFAULT_TIMEOUT) -> int:
    """The command: print the outcome, return the exit status Docker expects."""
    healthy, text = check(endpoint(config_path), timeout)
    print(text)
    return HEALTHY if healthy else UNHEALTHY
