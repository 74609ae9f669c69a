"""The supervisor as a contender: its configuration, the process started, its ports read.

The loaded server is `bench` (bench.handler:Handler, unless the spec names other code), on port
0 like the metrics endpoint; the ports are read from the `listening on` log lines, up to the
`ready:` line.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.harness.contenders import Contender, Unavailable
from bench.harness.network import LOOPBACK
from bench.harness.places import ROOT, SUPERVISOR
from bench.harness.processes import Proc, Processes

LISTENING = re.compile(r"INFO supervisor\[\d+\]: (\S+): listening on tcp://127\.0\.0\.1:(\d+) ")


@dataclass(frozen=True)
class SupervisorSpec:
    """A supervisor configuration: the loaded server `bench`, and `idle` other servers."""

    mode: str
    idle: int = 0
    idle_mode: str = ""  # the idle servers' mode ("": the configuration's default, fork)
    code: str = 'handler = "bench.handler:Handler"'  # what serves `bench` (or `server = ...`)
    extra: str = ""  # more keys for `bench`
    servers: str = ""  # more [servers.*] tables

    def text(self) -> str:
        lines = [
            "[supervisor]",
            'log_level = "info"',
            "shutdown_timeout = 1",
            "kill_grace = 1",
            "",
            "[metrics]",
            f'address = "tcp://{LOOPBACK}:0"',
            "",
            "[servers.bench]",
            f'address = "tcp://{LOOPBACK}:0"',
            self.code,
            f'mode = "{self.mode}"',
            self.extra,
            "",
        ]
        for index in range(self.idle):
            lines += [
                f"[servers.idle{index:04d}]",
                f'address = "tcp://{LOOPBACK}:0"',
                'handler = "bench.handler:Handler"',
                *([f'mode = "{self.idle_mode}"'] if self.idle_mode else []),
                "",
            ]
        return "\n".join(lines) + self.servers


def start_supervisor(
    procs: Processes, workdir: Path, key: str, label: str, spec: SupervisorSpec
) -> Contender:
    path = workdir / f"{key}.toml"
    path.write_text(spec.text(), encoding="utf-8")
    proc = start_supervisor_file(procs, key, path)
    contender = Contender(key, label, proc, pid=proc.pid)
    ready = None
    while ready is None:
        item = proc.wait_line(lambda line: "listening on" in line or "ready:" in line, 120)
        if item is None:
            break
        if " ready: " in item[1]:
            ready = item
        elif match := LISTENING.search(item[1] + " "):
            if match.group(1) == "metrics":
                contender.metrics_port = int(match.group(2))
            else:
                contender.ports[match.group(1)] = int(match.group(2))
    if ready is None:
        reason = next(
            (line for line in reversed(proc.tail) if line.strip()), "no 'ready:' line within 120 s"
        )
        status = proc.popen.poll()
        procs.stop(proc)
        raise Unavailable(f"exit status {status}: {reason}" if status is not None else reason)
    contender.port = contender.ports.get("bench", 0)
    return contender


def supervisor_env() -> dict[str, str]:
    """The environment of a supervisor (and of its commands): this checkout's code. Run as root
    (it installs its tools), like the peers it is compared with: let it."""
    return dict(
        os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", SUPERVISOR_ALLOW_ROOT="1"
    )


def start_supervisor_file(procs: Processes, key: str, path: Path) -> Proc:
    return procs.start(key, [SUPERVISOR, "run", "-c", str(path)], supervisor_env())


def is_fork_server(process: psutil.Process) -> bool:
    """The supervisor's fork server (supervisor/forkserver.py), not a request's child."""
    try:
        return any(arg.endswith("forkserver.py") for arg in process.cmdline())
    except psutil.Error:  # gone, or a zombie: a child exiting
        return False
