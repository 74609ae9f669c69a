"""Fixtures that run a real supervisor process on loopback and clean up after it."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import psutil
import pytest

from tests.configs import METRICS_ANY_PORT

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"([\w.-]+): listening on (\S+)")  # (after a journal's <6> too)
READY = "ready: "
FORK_SERVER_READY = r"fork server \d+: forking for \d+ servers"
STOP_TIMEOUT = 20.0
CLI_TIMEOUT = 30.0
# The suite runs as root on CI machines, where the supervisor refuses to run handlers as root
# unless told: the operator's escape hatch, for the whole session (tests of the refusal unset
# it with env={ALLOW_ROOT: None}).
ALLOW_ROOT = "SUPERVISOR_ALLOW_ROOT"
if os.geteuid() == 0:
    os.environ[ALLOW_ROOT] = "1"
# Without SUPERVISOR_CONFIG: a command given no -c must see the bundled example, as on a fresh
# machine, whatever the developer's shell has set.
CLI_ENV = {
    **{key: value for key, value in os.environ.items() if key != "SUPERVISOR_CONFIG"},
    "PYTHONPATH": str(ROOT),
    "PYTHONUNBUFFERED": "1",
}


Env = Mapping[str, str | None]  # extra environment variables; None: unset it


def with_env(extra: Env | None) -> dict[str, str]:
    """CLI_ENV with `extra` on top (a None value removes the variable)."""
    merged = {**CLI_ENV, **(extra or {})}
    return {key: value for key, value in merged.items() if value is not None}


class LoggedProcess:
    """A command started for a test, its stdout and stderr collected line by line."""

    def __init__(self, command: Sequence[str], extra_env: Env | None = None) -> None:
        env = with_env(extra_env)
        self.process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.pid = self.process.pid
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def running(self) -> bool:
        """Whether it may still print: False once its output is closed (it has exited)."""
        return self._reader.is_alive()

    def wait_for_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """Wait until a log line (from line `start` on) matches `pattern`; return the match.
        AssertionError when the deadline passes or the process has exited without it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    if match := regex.search(line):
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"no log line matches {pattern!r}; log:\n{self.log}")
                self._changed.wait(remaining)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        returncode = self.process.wait(timeout)
        self._reader.join(timeout)
        return returncode

    def stop(self) -> None:
        """Stop the process and everything it left behind, whatever state it is in."""
        try:
            descendants = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for process in descendants:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                continue
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


class Supervisor(LoggedProcess):
    """A running `python -m supervisor run` process, with its log collected line by line."""

    def __init__(
        self, config: Path, extra_env: Env | None = None, wrapper: Sequence[str] = ()
    ) -> None:
        super().__init__([*wrapper, *cli_command("run", "-c", str(config))], extra_env)
        self.config = config
        self.addresses: dict[str, str] = {}

    def wait_ready(self, timeout: float = 20.0, fork_server: bool | None = None) -> "Supervisor":
        """Wait for the ready line and, when the fork server is used (as the configuration
        implies, unless `fork_server` says), for the fork server too."""
        self.wait_for_log(READY, timeout)
        if fork_server is None:
            fork_server = uses_fork_server(self.config)
        if fork_server:  # ready a little later: then requests go through it
            self.wait_for_log(FORK_SERVER_READY, timeout)
        with self._changed:
            for line in self.lines:
                if match := LISTENING.search(line):
                    self.addresses[match.group(1)] = match.group(2)
        return self

    def inet(self, name: str) -> tuple[str, int]:
        """(host, port) of an IP server, as the supervisor reported it."""
        rest = self.addresses[name].split("://", 1)[1]
        host, _, port = rest.rpartition(":")
        return host.strip("[]"), int(port)

    def unix_path(self, name: str) -> str:
        return self.addresses[name].split("://", 1)[1]

    def fork_servers(self) -> list[psutil.Process]:
        """The supervisor's fork server processes (supervisor/forkserver.py), if running."""
        return [child for child in psutil.Process(self.pid).children() if is_fork_server(child)]

    def _children(self, zombie: bool) -> list[psutil.Process]:
        """The request children: the supervisor's own, and its fork servers'."""
        found = [child for child in children_of(self.pid, zombie) if not is_fork_server(child)]
        for fork_server in self.fork_servers():
            with contextlib.suppress(psutil.NoSuchProcess):
                found += children_of(fork_server.pid, zombie)
        return found

    def live_children(self) -> list[psutil.Process]:
        """Children that are running (not zombies)."""
        return self._children(zombie=False)

    def zombies(self) -> list[psutil.Process]:
        """Children that have exited and are not reaped yet."""
        return self._children(zombie=True)


def uses_fork_server(config: Path) -> bool:
    """Whether the configuration has fork-mode stream servers and the fork server is on."""
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    if not data.get("supervisor", {}).get("fork_server", True):
        return False
    return any(
        server.get("mode", "fork") == "fork"
        and str(server.get("address", "")).startswith(("tcp://", "unix://"))
        for server in data.get("servers", {}).values()
    )


def is_fork_server(process: psutil.Process) -> bool:
    try:
        return any(arg.endswith("forkserver.py") for arg in process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def children_of(pid: int, zombie: bool, recursive: bool = False) -> list[psutil.Process]:
    """The children of `pid` (all descendants if `recursive`) that are zombies, or that are not."""
    result = []
    for child in psutil.Process(pid).children(recursive=recursive):
        try:
            if (child.status() == psutil.STATUS_ZOMBIE) == zombie:
                result.append(child)
        except psutil.NoSuchProcess:
            continue
    return result


StartSupervisor = Callable[..., Supervisor]


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path holds 107 bytes; tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_supervisor(tmp_path: Path) -> Iterator[StartSupervisor]:
    """Start supervisors from TOML text; every one is stopped, with its children, at the end."""
    started: list[Supervisor] = []

    def start(
        toml: str,
        ready: bool = True,
        *,
        name: str = "supervisor.toml",
        env: Env | None = None,
        fork_server: bool | None = None,
        wrapper: Sequence[str] = (),
    ) -> Supervisor:
        config = tmp_path / name
        toml = textwrap.dedent(toml)
        if "[metrics]" not in toml:  # an ephemeral port: tests may run beside a supervisor
            toml += METRICS_ANY_PORT
        config.write_text(toml)
        supervisor = Supervisor(config, env, wrapper)
        started.append(supervisor)
        return supervisor.wait_ready(fork_server=fork_server) if ready else supervisor

    yield start
    for supervisor in started:
        supervisor.stop()


def connect(address: tuple[str, int] | str, timeout: float = 10.0) -> socket.socket:
    """A connected stream socket with a deadline on every operation."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        return sock
    return socket.create_connection(address, timeout=timeout)


def exchange(address: tuple[str, int] | str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data`, half-close, and read the whole reply."""
    with connect(address, timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def readline(sock: socket.socket) -> bytes:
    """Read one line from a socket without buffering beyond it."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return bytes(line)


def finish(sock: socket.socket) -> None:
    """End a PidHandler request (tests.handlers): send its line, read its `bye`, close."""
    with sock:
        sock.sendall(b"done\n")
        assert readline(sock) == b"bye\n"


# -- the command line ----------------------------------------------------------------------


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "supervisor", *args]


def run_cli(
    *args: str, timeout: float = CLI_TIMEOUT, env: Env | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m supervisor ARGS` from the source tree, as an operator types it (`env`: extra
    variables); a hang is killed at the timeout."""
    return subprocess.run(
        cli_command(*args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=with_env(env),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    """Check the failure shape (status, nothing on stdout, one stderr line); return the line."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert result.stderr.endswith("\n")
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.rstrip("\n")


@pytest.fixture
def unrelated_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that has nothing to do with the supervisor (its pid in a stale file)."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()
