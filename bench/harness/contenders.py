"""A contender, and how the peers that are not supervisors are started.

The standard library's servers (bench/stdlib_server.py) and the C servers (bench/c/server.c)
bind port 0 and print `listening on PORT`; xinetd and tcpserver are given a free port and
fork+exec the C responder (bench/c/responder.c) per connection.
"""

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness.network import LOOPBACK, free_port
from bench.harness.places import ROOT
from bench.harness.processes import Proc, Processes


@dataclass
class Contender:
    """A started contender: where the load goes and whose process tree is accounted."""

    key: str
    label: str
    proc: Proc | None  # None: the fork floor, a program run per round
    port: int = 0  # where the load goes
    pid: int = 0  # the process whose tree is accounted
    ports: dict[str, int] = field(default_factory=dict)  # a supervisor's servers
    metrics_port: int | None = None


class Unavailable(Exception):
    """A contender that cannot start or does not serve; the message says why."""


def start_printing_port(procs: Processes, key: str, label: str, argv: Sequence[str]) -> Contender:
    """A server that prints `listening on PORT` on stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    proc = procs.start(key, argv, env)
    item = proc.wait_line(lambda line: line.startswith("listening on "), 30)
    if item is None:
        procs.stop(proc)
        raise Unavailable(proc.tail[-1] if proc.tail else "no port printed")
    return Contender(key, label, proc, port=int(item[1].split()[-1]), pid=proc.pid)


def xinetd_config(port: int, responder: Path) -> str:
    """xinetd's configuration: one service on `port`, its limits lifted, nothing logged."""
    unlimited = [
        "    instances = UNLIMITED",
        "    per_source = UNLIMITED",
        "    cps = 100000 1",  # never disables the service for a burst of connections
    ]
    return "\n".join(
        [
            "defaults",
            "{",
            *unlimited,
            "    log_on_success =",
            "    log_on_failure =",
            "}",
            "service bench",
            "{",
            "    type = UNLISTED",
            "    socket_type = stream",
            "    protocol = tcp",
            "    wait = no",
            "    user = root",
            f"    bind = {LOOPBACK}",
            f"    port = {port}",
            f"    server = {responder}",
            *unlimited,
            "    log_on_success =",
            "    log_on_failure =",
            "}",
            "",
        ]
    )


def start_xinetd(procs: Processes, workdir: Path, responder: Path) -> Contender:
    xinetd = shutil.which("xinetd") or "/usr/sbin/xinetd"
    if not Path(xinetd).exists():
        raise Unavailable("xinetd is not installed")
    if os.geteuid() != 0:
        raise Unavailable("xinetd with user = root needs root")
    port = free_port()
    config = workdir / "xinetd.conf"
    config.write_text(xinetd_config(port, responder), encoding="utf-8")
    argv = [xinetd, "-dontfork", "-f", str(config), "-pidfile", str(workdir / "xinetd.pid")]
    proc = procs.start("xinetd", argv)
    return Contender("xinetd", "xinetd + C responder", proc, port=port, pid=proc.pid)


def start_tcpserver(procs: Processes, responder: Path) -> Contender:
    if shutil.which("tcpserver") is None:
        raise Unavailable("tcpserver (ucspi-tcp) is not installed")
    port = free_port()
    argv = ["tcpserver", "-c", "1000", "-b", "1024", "-H", "-R", "-l", "0", LOOPBACK, str(port)]
    proc = procs.start("tcpserver", [*argv, str(responder)])
    return Contender("tcpserver", "tcpserver + C responder", proc, port=port, pid=proc.pid)
