"""reload.warn_reuse_port: a warning exactly when the socket a server runs on does not have the
SO_REUSEPORT its configuration asks for, and that the operator can act on."""

import logging
import socket

import pytest

from supervisor.addresses import Address
from supervisor.config import ServerConfig
from supervisor.reload import warn_reuse_port
from supervisor.sockets import Listener

ADDRESS = Address("tcp", host="127.0.0.1", port=7007)
SYSTEMD = (
    "echo: reuse_port does not apply to the socket systemd passed in (tcp://127.0.0.1:7007): "
    "set ReusePort=yes in its .socket unit"
)
KEPT = (
    "echo: reuse_port = {wanted} applies when the socket is bound anew (next start); until "
    "then tcp://127.0.0.1:7007 keeps its socket, bound {has} SO_REUSEPORT"
)


@pytest.mark.parametrize(
    ("inherited", "wanted", "has", "warning"),
    [
        (True, True, False, SYSTEMD),
        (True, True, True, None),
        (True, False, True, None),  # ReusePort= in the unit, as the warning advises
        (True, False, False, None),
        (False, True, False, KEPT.format(wanted="true", has="without")),
        (False, False, True, KEPT.format(wanted="false", has="with")),
        (False, True, True, None),
        (False, False, False, None),
    ],
)
def test_warn_reuse_port(
    caplog: pytest.LogCaptureFixture,
    inherited: bool,
    wanted: bool,
    has: bool,
    warning: str | None,
) -> None:
    server = ServerConfig("echo", ADDRESS, "tests.handlers:PidHandler", reuse_port=wanted)
    with socket.socket() as sock:  # (only the Listener's fields are read)
        listener = Listener(ADDRESS, sock, ADDRESS, inherited=inherited, reuse_port=has)
        with caplog.at_level(logging.WARNING, "supervisor"):
            warn_reuse_port("echo", server, listener)
    assert [record.getMessage() for record in caplog.records] == ([warning] if warning else [])
