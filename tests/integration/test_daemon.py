"""`supervisor run --daemon`: detaching, the pidfile, stale pidfiles, the log file and signals.

A daemon is orphaned on purpose. For the length of each test, the test process makes itself a
child subreaper (prctl PR_SET_CHILD_SUBREAPER), so every process the test detaches is re-parented
to it: the test can then wait for a daemon's exit status (the machine's PID 1 reaps only now and
then), and the `reaper` fixture kills and reaps whatever is left, even when the test fails.
"""

import ctypes
import os
import re
import signal
import stat
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from supervisor import control
from tests.configs import ECHO, FAILING, METRICS_ANY_PORT, supervisor_table
from tests.conftest import LISTENING, ROOT, cli_command, exchange, run_cli, with_env

PR_SET_CHILD_SUBREAPER = 36
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_OSERR = 71
EX_CONFIG = 78
WAIT = 10.0  # deadline for anything the daemon does
POLL = 0.02  # how often a log file is re-read while waiting for a line


def write_config(
    path: Path, pidfile: Path | str | None, log_file: Path | str | None, servers: str = ECHO
) -> Path:
    settings = {"pidfile": pidfile, "log_file": log_file}
    given = {key: str(value) for key, value in settings.items() if value is not None}
    path.write_text(supervisor_table(**given) + textwrap.dedent(servers) + METRICS_ANY_PORT)
    return path


def set_subreaper(enabled: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def kill_and_reap(spared: frozenset[int]) -> None:
    """SIGKILL every child of this process not in `spared`, their descendants too, and reap."""
    me = psutil.Process()
    for _ in range(5):  # killing a daemon re-parents its own children to us: another round
        children = [child for child in me.children() if child.pid not in spared]
        if not children:
            return
        for child in children:
            try:
                doomed = [child, *child.children(recursive=True)]
            except psutil.NoSuchProcess:
                doomed = [child]
            for process in doomed:
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    continue
        psutil.wait_procs(children, timeout=WAIT)


def our_children() -> set[int]:
    return {child.pid for child in psutil.Process().children()}


@pytest.fixture
def reaper() -> Iterator[frozenset[int]]:
    """Detached processes come back to this process; all are killed and reaped at the end.

    Yields the children this process had before, which are left alone."""
    spared = frozenset(our_children())
    set_subreaper(True)
    try:
        yield spared
    finally:
        try:
            kill_and_reap(spared)
        finally:
            set_subreaper(False)


class LogFile:
    """A log file written by another process, re-read until a line shows up."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, offset: int = 0, timeout: float = WAIT) -> re.Match[str]:
        """The first match of `pattern` (multiline) from character `offset` on, within `timeout`."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if match := regex.search(text, offset):
                return match
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.path}: no line matches {pattern!r}; log:\n{text}")
            time.sleep(POLL)


@dataclass
class Daemon:
    pid: int
    pidfile: Path
    log: LogFile
    addresses: dict[str, str]

    @property
    def control_socket(self) -> Path:
        return self.pidfile.with_suffix(".sock")

    def inet(self, name: str) -> tuple[str, int]:
        host, _, port = self.addresses[name].split("://", 1)[1].rpartition(":")
        return host, int(port)


StartDaemon = Callable[[Path, Path, Path], Daemon]


def wait_ready(pidfile: Path, log: LogFile, offset: int = 0) -> Daemon:
    """The daemon whose `ready:` line appears in `log` after `offset`, with its addresses."""
    ready = log.wait_for(r"ready: \d+ servers, pid (\d+)$", offset)
    text = log.text()[offset : ready.end()]
    addresses = {match.group(1): match.group(2) for match in LISTENING.finditer(text)}
    return Daemon(int(ready.group(1)), pidfile, log, addresses)


@pytest.fixture
def start_daemon(reaper: frozenset[int]) -> StartDaemon:
    """`run --daemon -c CONFIG`: the command must return 0 at once; then wait for `ready:`."""

    def start(config: Path, pidfile: Path, log_file: Path) -> Daemon:
        log = LogFile(log_file)
        offset = len(log.text())
        started = time.monotonic()
        result = run_cli("run", "--daemon", "-c", str(config))
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert time.monotonic() - started < WAIT, "run --daemon did not return promptly"
        return wait_ready(pidfile, log, offset)

    return start


# --- detaching ----------------------------------------------------------------------------


def test_daemon_detaches_and_serves(
    start_daemon: StartDaemon, tmp_path: Path, sockdir: Path
) -> None:
    pidfile, log_file = sockdir / "sv.pid", tmp_path / "sv.log"
    daemon = start_daemon(write_config(tmp_path / "sv.toml", pidfile, log_file), pidfile, log_file)

    assert pidfile.read_text() == f"{daemon.pid}\n"
    process = psutil.Process(daemon.pid)
    # Orphaned (re-parented to this subreaper: whatever started it has exited), in a session
    # and process group of its own, without a terminal, in /.
    assert process.ppid() == os.getpid()
    assert os.getsid(daemon.pid) != os.getsid(0)
    assert os.getpgid(daemon.pid) != os.getpgid(0)
    assert process.terminal() is None
    assert process.cwd() == "/"
    # Standard input from /dev/null; standard output and error are the log file.
    assert os.readlink(f"/proc/{daemon.pid}/fd/0") == os.devnull
    assert os.readlink(f"/proc/{daemon.pid}/fd/1") == str(log_file)
    assert os.readlink(f"/proc/{daemon.pid}/fd/2") == str(log_file)

    assert exchange(daemon.inet("echo"), b"ping") == b"base ping"
    host, port = daemon.inet("echo")
    assert re.search(
        rf"^\S+ \S+ INFO supervisor\[{daemon.pid}\]: echo: listening on "
        rf"tcp://{re.escape(host)}:{port} \(fork, ",
        daemon.log.text(),
        re.MULTILINE,
    )
    assert control.request(str(daemon.control_socket), "status")["pid"] == daemon.pid


def test_relative_paths_survive_the_change_to_root(reaper: frozenset[int], sockdir: Path) -> None:
    """pidfile and log_file relative to the configuration file, itself given relative to the
    working directory: a reload after the daemon has moved to / still reads the right file."""
    config = write_config(sockdir / "sv.toml", "run/sv.pid", "log/sv.log")
    relative = os.path.relpath(config, ROOT)
    pidfile, log_file = sockdir / "run" / "sv.pid", sockdir / "log" / "sv.log"
    log = LogFile(log_file)
    result = run_cli("run", "--daemon", "-c", relative)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    daemon = wait_ready(pidfile, log)
    assert pidfile.read_text() == f"{daemon.pid}\n"

    write_config(config, "run/sv.pid", "log/sv.log", ECHO + FAILING)
    result = run_cli("reload", "-c", relative)
    assert (result.returncode, result.stdout, result.stderr) == (0, "reloaded: added failing\n", "")
    log.wait_for(r"failing: listening on tcp://")


def test_run_daemon_returns_once_the_daemon_is_ready_and_its_pidfile_written(
    reaper: frozenset[int], tmp_path: Path, sockdir: Path
) -> None:
    """daemon(7): when `run --daemon` has exited 0, the pidfile already names the daemon,
    which has logged `ready:` and answers (nothing is waited for here)."""
    pidfile, log_file = sockdir / "sv.pid", tmp_path / "sv.log"
    result = run_cli(
        "run", "--daemon", "-c", str(write_config(tmp_path / "sv.toml", pidfile, log_file))
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    pid = int(pidfile.read_text())  # at once
    assert re.search(rf"ready: 1 servers, pid {pid}$", log_file.read_text(), re.MULTILINE)
    assert control.request(str(sockdir / "sv.sock"), "status")["pid"] == pid


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a user namespace where it is root)")
def test_an_error_after_detaching_reaches_the_caller(
    reaper: frozenset[int], tmp_path: Path
) -> None:
    """The privilege drop happens after the detach: in a user namespace (root there, but
    setgroups() denied) it fails, and `run --daemon` exits with the daemon's status and line."""
    if subprocess.run(["unshare", "--user", "--map-root-user", "true"], check=False).returncode:
        pytest.skip("no user namespaces here")
    config = tmp_path / "sv.toml"
    config.write_text(
        supervisor_table(
            user="root", pidfile=f"{tmp_path}/run/sv.pid", log_file=f"{tmp_path}/sv.log"
        )
        + ECHO
        + METRICS_ANY_PORT
    )
    result = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            *cli_command("run", "--daemon", "-c", str(config)),
        ],
        capture_output=True,
        text=True,
        env=with_env({}),
        cwd=ROOT,
        timeout=WAIT,
        check=False,
    )
    error = f"{config}: supervisor.user: cannot switch to root:root (Operation not permitted)"
    assert (result.returncode, result.stdout, result.stderr) == (EX_OSERR, "", error + "\n")
    assert error in (tmp_path / "sv.log").read_text()  # the daemon's own log says it too
    assert not (tmp_path / "run" / "sv.pid").exists()


# --- one instance per pidfile -------------------------------------------------------------


@pytest.mark.parametrize("detach", [True, False], ids=["daemon", "foreground"])
def test_a_second_instance_on_a_live_pidfile_is_refused(
    start_daemon: StartDaemon,
    reaper: frozenset[int],
    tmp_path: Path,
    sockdir: Path,
    detach: bool,
) -> None:
    pidfile, log_file = sockdir / "sv.pid", tmp_path / "sv.log"
    config = write_config(tmp_path / "sv.toml", pidfile, log_file)
    daemon = start_daemon(config, pidfile, log_file)
    daemon.log.wait_for(r"fork server \d+: forking for 1 servers$")  # (logged after ready)
    logged = daemon.log.text()
    session_leader = os.getsid(daemon.pid)  # python-daemon's first child, exited

    result = run_cli("run", *(["--daemon"] if detach else []), "-c", str(config))

    assert result.returncode == EX_UNAVAILABLE
    assert result.stdout == ""
    assert result.stderr == f"{pidfile}: supervisor already running as pid {daemon.pid}\n"
    # Nothing was detached, and the first instance is untouched.
    assert our_children() - reaper <= {daemon.pid, session_leader}
    assert daemon.log.text() == logged
    assert pidfile.read_text() == f"{daemon.pid}\n"
    assert stat.S_ISSOCK(daemon.control_socket.stat().st_mode)
    assert control.request(str(daemon.control_socket), "status")["pid"] == daemon.pid
    assert exchange(daemon.inet("echo"), b"ping") == b"base ping"


@pytest.mark.parametrize("stale", ["dead pid", "unrelated live pid", "garbage"])
def test_a_stale_pidfile_is_replaced(
    start_daemon: StartDaemon,
    tmp_path: Path,
    sockdir: Path,
    unrelated_process: subprocess.Popen[bytes],
    stale: str,
) -> None:
    if stale == "dead pid":
        gone = subprocess.Popen(["true"])
        gone.wait()
        content = f"{gone.pid}\n"
    elif stale == "unrelated live pid":
        content = f"{unrelated_process.pid}\n"
    else:
        content = "not a pid\n"
    pidfile, log_file = sockdir / "sv.pid", tmp_path / "sv.log"
    pidfile.write_text(content)

    daemon = start_daemon(write_config(tmp_path / "sv.toml", pidfile, log_file), pidfile, log_file)

    assert pidfile.read_text() == f"{daemon.pid}\n"
    assert exchange(daemon.inet("echo"), b"ping") == b"base ping"
    assert unrelated_process.poll() is None, "the process named by the stale pidfile was touched"


def test_a_killed_daemons_pidfile_and_control_socket_are_taken_over(
    start_daemon: StartDaemon, tmp_path: Path, sockdir: Path
) -> None:
    pidfile, log_file = sockdir / "sv.pid", tmp_path / "sv.log"
    config = write_config(tmp_path / "sv.toml", pidfile, log_file)
    first = start_daemon(config, pidfile, log_file)
    killed = psutil.Process(first.pid)
    killed.kill()
    assert killed.wait(WAIT) == -signal.SIGKILL
    assert pidfile.read_text() == f"{first.pid}\n"  # left behind, with the socket file
    assert stat.S_ISSOCK(first.control_socket.stat().st_mode)

    second = start_daemon(config, pidfile, log_file)

    assert second.pid != first.pid
    assert pidfile.read_text() == f"{second.pid}\n"
    assert control.request(str(second.control_socket), "status")["pid"] == second.pid
    assert exchange(second.inet("echo"), b"ping") == b"base ping"


# --- configuration errors -----------------------------------------------------------------


@pytest.mark.parametrize("missing", ["pidfile", "log_file"])
def test_daemon_needs_a_pidfile_and_a_log_file(
    reaper: frozenset[int], tmp_path: Path, sockdir: Path, missing: str
) -> None:
    pidfile, log_file = sockdir / "sv.pid", tmp_path / "sv.log"
    config = write_config(
        tmp_path / "sv.toml",
        None if missing == "pidfile" else pidfile,
        None if missing == "log_file" else log_file,
    )
    result = run_cli("run", "--daemon", "-c", str(config))
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    assert result.stderr == f"{config}: supervisor: run --daemon needs both pidfile and log_file\n"
    assert our_children() - reaper == set()
    assert not pidfile.exists()
    assert not log_file.exists()


@pytest.mark.parametrize("args", [["run", "--daemon"], ["run"]], ids=" ".join)
def test_a_log_file_that_cannot_be_opened_is_reported_before_detaching(
    reaper: frozenset[int], tmp_path: Path, sockdir: Path, args: list[str]
) -> None:
    pidfile, blocker = sockdir / "sv.pid", tmp_path / "not-a-directory"
    blocker.write_text("")
    log_file = blocker / "sv.log"
    config = write_config(tmp_path / "sv.toml", pidfile, log_file)
    result = run_cli(*args, "-c", str(config))
    assert result.returncode == EX_CANTCREAT
    assert result.stderr == (
        f"{config}: supervisor.log_file: cannot open {log_file} (File exists)\n"
    )
    assert our_children() - reaper == set()  # nothing was left running
    assert not pidfile.exists()
    assert not (sockdir / "sv.sock").exists()


@pytest.mark.parametrize("args", [["run", "--daemon"], ["run"], ["check"]], ids=" ".join)
def test_a_control_socket_path_too_long_is_a_configuration_error(
    reaper: frozenset[int], tmp_path: Path, args: list[str]
) -> None:
    """The control socket goes next to the pidfile, and a unix socket path holds 107 bytes:
    a pidfile deeper than that must be refused like any other bad value, before detaching."""
    pidfile = tmp_path / ("d" * 100) / "sv.pid"
    log_file = tmp_path / "sv.log" if "--daemon" in args else None
    config = write_config(tmp_path / "sv.toml", pidfile, log_file)
    result = run_cli(*args, "-c", str(config), timeout=WAIT)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{config}: supervisor.pidfile: "), result.stderr
    assert our_children() - reaper == set()


# --- signals ------------------------------------------------------------------------------


def test_sigusr1_reopens_the_log_file(
    start_daemon: StartDaemon, tmp_path: Path, sockdir: Path
) -> None:
    pidfile, log_file = sockdir / "sv.pid", tmp_path / "sv.log"
    config = write_config(tmp_path / "sv.toml", pidfile, log_file, ECHO + FAILING)
    daemon = start_daemon(config, pidfile, log_file)
    rotated = tmp_path / "sv.log.1"
    log_file.rename(rotated)  # as logrotate does, without copytruncate
    rotated_text = rotated.read_text()
    assert f"pid {daemon.pid}" in rotated_text

    os.kill(daemon.pid, signal.SIGUSR1)
    new = LogFile(log_file)
    new.wait_for(rf"INFO supervisor\[{daemon.pid}\]: SIGUSR1: reopened {re.escape(str(log_file))}$")
    # The supervisor's own lines, and what a forked child writes on its stderr.
    assert exchange(daemon.inet("failing"), b"boom\n") == b""
    new.wait_for(r"^RuntimeError: handler failure on purpose: b'boom\\n'$")
    new.wait_for(rf"WARNING supervisor\[{daemon.pid}\]: failing: child \d+ exited with status 1")
    os.kill(daemon.pid, signal.SIGHUP)
    new.wait_for(rf"INFO supervisor\[{daemon.pid}\]: reloaded: no server changed$")

    assert rotated.read_text() == rotated_text
    assert "ready:" not in new.text()
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o640


def test_sigterm_stops_the_daemon_and_removes_its_files(
    start_daemon: StartDaemon, tmp_path: Path, sockdir: Path
) -> None:
    pidfile, log_file = sockdir / "sv.pid", tmp_path / "sv.log"
    daemon = start_daemon(write_config(tmp_path / "sv.toml", pidfile, log_file), pidfile, log_file)
    assert daemon.control_socket == sockdir / "sv.sock"
    assert stat.S_ISSOCK(daemon.control_socket.stat().st_mode)
    process = psutil.Process(daemon.pid)

    os.kill(daemon.pid, signal.SIGTERM)

    assert process.wait(WAIT) == 0  # its exit status: the daemon is our child, as subreaper
    assert not pidfile.exists()
    assert not daemon.control_socket.exists()
    assert os.listdir(sockdir) == []
    daemon.log.wait_for(rf"supervisor\[{daemon.pid}\]: SIGTERM: stopping; 0 requests in progress")
    daemon.log.wait_for(rf"supervisor\[{daemon.pid}\]: stopped$")
