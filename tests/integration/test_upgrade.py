"""`supervisor upgrade`: the code now installed takes over the sockets; nothing is refused.

The supervisor runs with PYTHONPATH naming a directory whose `supervisor` entry is a symlink:
to the source tree at first, then (to "install" another version) to a copy of it with another
`__version__`, or with broken code. Clients keep connecting to every mode and address kind
while the upgrades happen, and count every failure.
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.configs import metrics_table, server_table, supervisor_table
from tests.conftest import (
    ROOT,
    StartSupervisor,
    Supervisor,
    cli_command,
    connect,
    finish,
    readline,
    run_cli,
    with_env,
)
from tests.integration.test_metrics import scrape, scrape_until
from tests.integration.test_pid1 import UNSHARE, Pid1Supervisor, _unshare_works

unshare = pytest.mark.skipif(
    not _unshare_works(), reason="unshare --pid needs root (or user namespaces) and util-linux"
)

UPGRADE_TIMEOUT = 120.0


class Code:
    """The directory on the supervisor's PYTHONPATH, and which code `supervisor` is there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        (path / "tests").symlink_to(ROOT / "tests")
        self._link(ROOT / "supervisor")

    @property
    def env(self) -> dict[str, str]:
        """PYTHONPATH, and a handover to a new process: the test is the parent that waits,
        which would otherwise make the supervisor exec in place (inplace.in_place)."""
        return {"PYTHONPATH": str(self.path), "SUPERVISOR_UPGRADE_MODE": "handover"}

    @property
    def wrapper(self) -> list[str]:
        """Run from this directory: `python -m` puts the current one first on sys.path (the
        source tree, for the suite), and an upgrade imports what the first start did."""
        return ["env", "-C", str(self.path)]

    def _link(self, target: Path) -> None:
        """Point `supervisor` at `target`, in one rename (as a package manager would)."""
        new = self.path / "supervisor.new"
        new.symlink_to(target)
        new.rename(self.path / "supervisor")

    def install(self, version: str, change: Callable[[Path], None] | None = None) -> None:
        """A copy of the package with `__version__ = version`, changed by `change`."""
        copy = self.path / f"v{version}" / "supervisor"
        shutil.copytree(ROOT / "supervisor", copy, ignore=shutil.ignore_patterns("__pycache__"))
        init = copy / "__init__.py"
        text = re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text())
        init.write_text(text)
        if change is not None:
            change(copy)
        self._link(copy)


@pytest.fixture
def code(tmp_path: Path) -> Code:
    return Code(tmp_path / "code")


@pytest.fixture
def start(start_supervisor: StartSupervisor) -> Iterator[StartSupervisor]:
    """start_supervisor, and at the end the supervisors that took over are stopped too (with
    their children), before start_supervisor stops the first one: it has let go of them."""
    started: list[Supervisor] = []

    def start(toml: str, **keys: object) -> Supervisor:
        supervisor = start_supervisor(toml, **keys)
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        for line in supervisor.lines:
            if match := re.search(r"supervisor\[(\d+)\]: ready: ", line):
                stop_tree(int(match.group(1)))


def stop_tree(pid: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        process = psutil.Process(pid)
        descendants = process.children(recursive=True)
        process.terminate()
        with contextlib.suppress(psutil.TimeoutExpired):
            process.wait(20)
        for each in [process, *descendants]:
            with contextlib.suppress(psutil.NoSuchProcess):
                each.kill()


def upgrade(config: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("upgrade", "-c", str(config), timeout=UPGRADE_TIMEOUT)


def main_pid(config: Path) -> int:
    """The pid the pidfile names, as `supervisor status` reports it."""
    status = run_cli("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    match = re.search(r"pid (\d+)", status.stdout)
    assert match is not None, status.stdout
    return int(match.group(1))


# -- load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """Clients in threads, each asking one server again and again until told to stop."""

    failures: list[str] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)
    seen: dict[str, set[str]] = field(default_factory=dict)  # server -> versions answered
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sockets: list[socket.socket] = field(default_factory=list)

    def stream(self, name: str, address: tuple[str, int] | str) -> None:
        def ask() -> str:
            with connect(address, timeout=10) as sock:
                sock.sendall(b"hello\n")
                return readline(sock).decode()

        self._start(name, ask)

    def datagram(self, name: str, address: tuple[str, int]) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sockets.append(sock)
        sock.settimeout(5)
        counter = iter(range(10**9))

        def ask() -> str:
            token = f"d{next(counter)}".encode()
            sock.sendto(token, address)
            while True:  # (an answer to an earlier datagram, late: not this one's)
                reply = sock.recv(1024)
                if reply.split()[0] == token:
                    return reply.decode().partition(" ")[2] + "\n"

        self._start(name, ask)

    def _start(self, name: str, ask: Callable[[], str]) -> None:
        self.answers[name] = 0
        self.seen[name] = set()

        def run() -> None:
            while not self._stop.is_set():
                try:
                    answer = ask()
                except OSError as exc:
                    with self._lock:
                        self.failures.append(f"{name}: {exc!r}")
                    return  # (one is enough: the test fails)
                if not answer.endswith("\n"):
                    with self._lock:
                        self.failures.append(f"{name}: incomplete answer {answer!r}")
                    return
                with self._lock:
                    self.answers[name] += 1
                    self.seen[name].add(answer.split()[0])

        thread = threading.Thread(target=run, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        for sock in self._sockets:
            sock.close()

    def wait_for_answers(self, count: int, timeout: float = 30.0) -> None:
        """Until every client has had `count` more answers (the load really runs)."""
        start = dict(self.answers)
        deadline = time.monotonic() + timeout
        while any(self.answers[name] < start[name] + count for name in start):
            assert not self.failures, self.failures
            assert time.monotonic() < deadline, (self.answers, self.failures)
            time.sleep(0.01)


@contextlib.contextmanager
def load_on(supervisor: Supervisor, streams: list[str], datagrams: list[str]) -> Iterator[Load]:
    load = Load()
    try:
        for name in streams:
            address = supervisor.addresses[name]
            if address.startswith("unix://"):
                load.stream(name, supervisor.unix_path(name))
            else:
                load.stream(name, supervisor.inet(name))
        for name in datagrams:
            load.datagram(name, supervisor.inet(name))
        load.wait_for_answers(3)
        yield load
    finally:
        load.stop()


# -- the configuration --------------------------------------------------------------------

STREAMS = ["fork", "thread", "inline", "prefork", "unix"]
HELD = ["held_fork", "held_thread", "held_prefork"]


def everything(tmp_path: Path, sockdir: Path) -> str:
    return (
        supervisor_table(pidfile=str(tmp_path / "run" / "supervisor.pid"), shutdown_timeout=30)
        + server_table("fork", "VersionHandler", mode="fork")
        + server_table("thread", "VersionHandler", mode="thread")
        + server_table("inline", "VersionHandler", mode="inline")
        + server_table("prefork", "VersionHandler", mode="prefork", workers=2)
        + server_table("unix", "VersionHandler", mode="thread", address=f"unix://{sockdir}/u")
        + server_table("udp", "VersionDatagramHandler", mode="thread", address="udp://127.0.0.1:0")
        + server_table("held_fork", "PidHandler", mode="fork")
        + server_table("held_thread", "PidHandler", mode="thread")
        + server_table("held_prefork", "PidHandler", mode="prefork", workers=2)
    )


def hold(supervisor: Supervisor) -> list[socket.socket]:
    """A request in progress on each HELD server (its pid line read)."""
    held = []
    for name in HELD:
        sock = connect(supervisor.inet(name), timeout=30)
        assert readline(sock).strip().isdigit()
        held.append(sock)
    return held


# -- the tests ----------------------------------------------------------------------------


def test_ten_upgrades_under_load_refuse_nothing_and_finish_every_request(
    start: StartSupervisor, tmp_path: Path, sockdir: Path, code: Code
) -> None:
    supervisor = start(everything(tmp_path, sockdir), env=code.env, wrapper=code.wrapper)
    first = main_pid(supervisor.config)
    pids = [first]
    with load_on(supervisor, STREAMS, ["udp"]) as load:
        for number in range(10):
            if number == 5:
                code.install("9.9.9")
            held = hold(supervisor)
            done = upgrade(supervisor.config)
            assert done.returncode == 0, done.stderr
            assert re.match(r"upgraded: pid \d+ \(version [\d.]+\) took over", done.stdout)
            pids.append(main_pid(supervisor.config))
            assert pids[-1] != pids[-2]
            for sock in held:
                finish(sock)  # the request the old supervisor had still completes
            load.wait_for_answers(3)
    assert load.failures == []
    assert len(set(pids)) == 11
    for name in [*STREAMS, "udp"]:
        assert load.seen[name] == {"0.1.0", "9.9.9"}, name  # workers, fork servers: new code
    # Every datagram the supervisors received was answered, and counted: the counters carry.
    current = scrape_until(
        supervisor, lambda s: s.value("supervisor_requests_total", server="udp") > 0
    )
    assert current.value("supervisor_requests_total", server="udp") == load.answers["udp"]
    assert current.value("supervisor_upgrades_total", result="ok") == 10
    assert current.value("supervisor_upgrades_total", result="failed") == 0
    assert current.value("supervisor_build_info", version="9.9.9") == 1
    # Every old supervisor has exited once drained; the live one is the last.
    for pid in pids[:-1]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_counters_continue_across_an_upgrade(
    start: StartSupervisor, tmp_path: Path, code: Code
) -> None:
    supervisor = start(
        supervisor_table(pidfile=str(tmp_path / "supervisor.pid"))
        + server_table("held", "PidHandler", mode="fork"),
        env=code.env,
        wrapper=code.wrapper,
    )
    for _ in range(3):
        sock = connect(supervisor.inet("held"))
        assert readline(sock).strip().isdigit()
        finish(sock)
    held = connect(supervisor.inet("held"))
    assert readline(held).strip().isdigit()
    before = scrape_until(
        supervisor,
        lambda s: s.value("supervisor_request_duration_seconds_count", server="held") == 3,
    )
    assert before.value("supervisor_requests_total", server="held") == 4
    assert upgrade(supervisor.config).returncode == 0
    after = scrape(supervisor)
    assert after.value("supervisor_requests_total", server="held") == 4
    assert after.value("supervisor_request_duration_seconds_count", server="held") == 3
    finish(held)  # ends in the old supervisor, which sends what it counted when it is done
    final = scrape_until(
        supervisor,
        lambda s: s.value("supervisor_request_duration_seconds_count", server="held") == 4,
    )
    assert final.value("supervisor_child_exits_total", server="held", outcome="ok") == 4
    assert final.value("supervisor_upgrades_total", result="ok") == 1
    supervisor.wait_for_log(r"upgrade: pid \d+ \(version 0\.1\.0\) took over from pid")


def syntax_error_in_core(package: Path) -> None:
    with (package / "core.py").open("a") as core:
        core.write("\ndef broken(:\n")


def import_error_in_init(package: Path) -> None:
    with (package / "__init__.py").open("a") as init:
        init.write("\nimport no_such_module_for_the_upgrade\n")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (syntax_error_in_core, r"cannot import the new supervisor code \(SyntaxError: "),
        (import_error_in_init, r"No module named 'no_such_module_for_the_upgrade'"),
    ],
)
def test_an_upgrade_to_code_that_does_not_import_changes_nothing(  # noqa: PLR0917
    start: StartSupervisor,
    tmp_path: Path,
    sockdir: Path,
    code: Code,
    change: Callable[[Path], None],
    reason: str,
) -> None:
    supervisor = start(everything(tmp_path, sockdir), env=code.env, wrapper=code.wrapper)
    pid = main_pid(supervisor.config)
    code.install("6.6.6", change)
    with load_on(supervisor, STREAMS, ["udp"]) as load:
        held = hold(supervisor)
        done = upgrade(supervisor.config)
        for sock in held:
            finish(sock)
        load.wait_for_answers(3)
    assert done.returncode == 70, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert re.search(reason, done.stderr), done.stderr
    assert f"still running pid {pid} (version 0.1.0)" in done.stderr
    assert load.failures == []
    assert main_pid(supervisor.config) == pid
    current = scrape(supervisor)
    assert current.value("supervisor_upgrades_total", result="failed") == 1
    assert current.value("supervisor_upgrades_total", result="ok") == 0
    assert all(seen == {"0.1.0"} for seen in load.seen.values())


def test_an_upgrade_meeting_a_handler_with_a_syntax_error_changes_nothing(
    start: StartSupervisor, tmp_path: Path, code: Code
) -> None:
    module = code.path / "upgrade_handler.py"
    module.write_text((ROOT / "tests" / "handlers.py").read_text())
    supervisor = start(
        supervisor_table(pidfile=str(tmp_path / "supervisor.pid"))
        + server_table("echo", "upgrade_handler:LineEchoHandler", mode="fork"),
        env=code.env,
        wrapper=code.wrapper,
    )
    pid = main_pid(supervisor.config)
    with module.open("a") as file:
        file.write("\nclass Broken(:\n")
    done = upgrade(supervisor.config)
    assert done.returncode == 78, done.stderr
    assert "servers.echo.handler: cannot import 'upgrade_handler'" in done.stderr
    assert "SyntaxError" in done.stderr
    assert main_pid(supervisor.config) == pid
    with connect(supervisor.inet("echo")) as sock:
        sock.sendall(b"still here\n")
        assert readline(sock).endswith(b" still here\n")


def start_echo(start: StartSupervisor, tmp_path: Path, code: Code) -> Supervisor:
    """One echo server, with a pidfile for the commands, on `code`."""
    return start(
        supervisor_table(pidfile=str(tmp_path / "supervisor.pid"))
        + server_table("echo", "LineEchoHandler"),
        env=code.env,
        wrapper=code.wrapper,
    )


def test_an_upgrade_meeting_a_broken_configuration_changes_nothing(
    start: StartSupervisor, tmp_path: Path, code: Code
) -> None:
    supervisor = start_echo(start, tmp_path, code)
    pid = main_pid(supervisor.config)
    text = supervisor.config.read_text()
    handler = 'handler = "tests.handlers:LineEchoHandler"\n'
    supervisor.config.write_text(text.replace(handler, handler + "max_children = 0\n"))
    done = upgrade(supervisor.config)
    assert done.returncode == 78, done.stderr
    assert "servers.echo.max_children: must be an integer" in done.stderr
    assert main_pid(supervisor.config) == pid
    supervisor.config.write_text(text)
    assert upgrade(supervisor.config).returncode == 0
    assert main_pid(supervisor.config) != pid


def test_sigusr2_upgrades_and_a_second_request_meanwhile_is_refused(
    start: StartSupervisor, tmp_path: Path, code: Code
) -> None:
    supervisor = start_echo(start, tmp_path, code)
    supervisor.signal(signal.SIGUSR2)
    again = upgrade(supervisor.config)  # (while the first one is in progress, or after it)
    match = supervisor.wait_for_log(r"upgrade: pid (\d+) \(version 0\.1\.0\) took over from")
    if again.returncode == 0:  # the first one was done already: this one is a second one
        (pid,) = re.findall(r"upgraded: pid (\d+) ", again.stdout)
        assert main_pid(supervisor.config) == int(pid)
    else:
        assert again.returncode == 69, again.stderr
        assert "cannot upgrade: one is in progress" in again.stderr
        assert main_pid(supervisor.config) == int(match.group(1))


def test_a_daemon_upgrades_and_its_pidfile_names_the_new_process(
    tmp_path: Path, code: Code
) -> None:
    pidfile = tmp_path / "run" / "supervisor.pid"
    config = tmp_path / "supervisor.toml"
    config.write_text(
        supervisor_table(pidfile=str(pidfile), log_file=str(tmp_path / "supervisor.log"))
        + server_table("echo", "LineEchoHandler")
        + server_table("unix", "LineEchoHandler", address=f"unix://{tmp_path}/echo.sock")
        + metrics_table(address="tcp://127.0.0.1:0")
    )
    started = run_cli("run", "--daemon", "-c", str(config), env=code.env)
    assert started.returncode == 0, started.stderr
    try:
        old = int(pidfile.read_text())
        done = upgrade(config)
        assert done.returncode == 0, done.stderr
        new = int(pidfile.read_text())
        assert new != old
        assert f"pid {new} " in done.stdout
        psutil.Process(old).wait(30)  # the old one drained (nothing to drain) and exited
        with connect(str(tmp_path / "echo.sock")) as sock:
            sock.sendall(b"after\n")
            assert readline(sock).endswith(b" after\n")
        assert main_pid(config) == new
    finally:
        stopped = run_cli("stop", "-c", str(config))
    assert stopped.returncode == 0, stopped.stderr
    assert not pidfile.exists()
    assert not (tmp_path / "echo.sock").exists()  # the new one removed what the old one made


# -- in place, as PID 1 -------------------------------------------------------------------


class Pid1At(Pid1Supervisor):
    """PID 1 of its namespace, run from the directory of `code` (see Code.wrapper)."""

    def __init__(self, config: Path, code: Code) -> None:
        Supervisor.__init__(self, config, code.env, wrapper=[*UNSHARE, *code.wrapper])


@pytest.fixture
def start_pid1_with(tmp_path: Path) -> Iterator[Callable[[str, Code], Pid1Supervisor]]:
    started: list[Pid1Supervisor] = []

    def start_one(toml: str, code: Code) -> Pid1Supervisor:
        config = tmp_path / "supervisor.toml"
        config.write_text(toml + metrics_table(address="tcp://127.0.0.1:0"))
        supervisor = Pid1At(config, code)
        started.append(supervisor)
        supervisor.wait_ready()
        return supervisor

    yield start_one
    for supervisor in started:
        supervisor.stop()


PID1_SERVERS = (
    server_table("fork", "VersionHandler", mode="fork")
    + server_table("thread", "VersionHandler", mode="thread")
    + server_table("inline", "VersionHandler", mode="inline")
    + server_table("prefork", "VersionHandler", mode="prefork", workers=2)
    + server_table("udp", "VersionDatagramHandler", mode="thread", address="udp://127.0.0.1:0")
    + server_table("held_fork", "PidHandler", mode="fork")
    + server_table("held_thread", "PidHandler", mode="thread")
)


@unshare
def test_as_pid1_an_upgrade_execs_in_place_after_its_threads_and_refuses_nothing(
    start_pid1_with: Callable[[str, Code], Pid1Supervisor], code: Code, tmp_path: Path
) -> None:
    pidfile = tmp_path / "run" / "supervisor.pid"
    supervisor = start_pid1_with(
        supervisor_table(shutdown_timeout=30, pidfile=str(pidfile)) + PID1_SERVERS, code
    )
    host_pid = supervisor.host_pid
    code.install("9.9.9")
    with load_on(supervisor, ["fork", "thread", "inline", "prefork"], ["udp"]) as load:
        held = [connect(supervisor.inet(name), timeout=60) for name in HELD[:2]]
        assert all(readline(sock).strip().isdigit() for sock in held)
        start = len(supervisor.lines)
        # The command, run in the supervisor's namespace (the pidfile says pid 1 there).
        command = subprocess.Popen(
            [
                "nsenter",
                "--target",
                str(host_pid),
                "--pid",
                "--mount",
                "--",
                *cli_command("upgrade", "-c", str(supervisor.config)),
            ],
            env=with_env(None),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The new code is checked in a child, then nothing is accepted while the request
        # thread runs (clients wait in the listen queue); the forked child needs no waiting.
        supervisor.wait_for_log(r"upgrade: the new code checked", start=start, timeout=60)
        for sock in held:
            finish(sock)
        out, err = command.communicate(timeout=UPGRADE_TIMEOUT)
        supervisor.wait_for_log(
            r"supervisor\[1\]: upgrade: pid 1 \(version 9\.9\.9\) took over from pid 1 "
            r"\(version 0\.1\.0\)",
            start=start,
            timeout=60,
        )
        load.wait_for_answers(3)
    # The answer came from the new code, on the connection the old code was asked on.
    assert command.returncode == 0, err
    assert out == "upgraded: pid 1 (version 9.9.9) took over from pid 1 (version 0.1.0)\n"
    assert load.failures == []
    assert supervisor.host_pid == host_pid  # the same process, the new code
    for name in ["fork", "thread", "inline", "prefork", "udp"]:
        assert "9.9.9" in load.seen[name], name
    current = scrape(supervisor)
    assert current.value("supervisor_upgrades_total", result="ok") == 1
    assert current.value("supervisor_build_info", version="9.9.9") == 1
    # What the old code left running (prefork workers, the fork server) is reaped.
    deadline = time.monotonic() + 30
    while supervisor.namespace_zombies():
        assert time.monotonic() < deadline, supervisor.namespace_zombies()
        time.sleep(0.05)


@unshare
def test_as_pid1_an_upgrade_to_broken_code_is_refused_before_the_exec(
    start_pid1_with: Callable[[str, Code], Pid1Supervisor], code: Code
) -> None:
    supervisor = start_pid1_with(PID1_SERVERS, code)
    code.install("6.6.6", syntax_error_in_core)
    with load_on(supervisor, ["fork", "thread", "inline", "prefork"], ["udp"]) as load:
        start = len(supervisor.lines)
        supervisor.send(signal.SIGUSR2)
        failed = supervisor.wait_for_log(
            r"upgrade failed, still running pid 1 \(version 0\.1\.0\): (.*)", start=start
        )
        load.wait_for_answers(3)
    assert "SyntaxError" in failed.group(1)
    assert load.failures == []
    assert all(seen == {"0.1.0"} for seen in load.seen.values())
    assert scrape(supervisor).value("supervisor_upgrades_total", result="failed") == 1


def test_a_stop_during_an_upgrade_kills_the_new_process_and_stops(
    start: StartSupervisor, tmp_path: Path, code: Code
) -> None:
    fifo = tmp_path / "import.fifo"
    os.mkfifo(fifo)
    supervisor = start(
        supervisor_table(pidfile=str(tmp_path / "supervisor.pid"))
        + server_table("late", "tests.blocking_import:Handler", mode="thread"),
        ready=False,
        env={**code.env, "BLOCKING_IMPORT_FIFO": str(fifo)},
        wrapper=code.wrapper,
    )
    supervisor.wait_for_log("blocking import: waiting")
    with fifo.open("wb") as release:
        release.write(b"x")
    supervisor.wait_ready()
    pid = main_pid(supervisor.config)
    start_line = len(supervisor.lines)
    supervisor.signal(signal.SIGUSR2)
    supervisor.wait_for_log("blocking import: waiting", start=start_line)  # the new one, stuck
    # (an orphan since the bootstrap forked, not the old one's child: found by its command line)
    (new,) = [
        each
        for each in psutil.process_iter(["pid", "cmdline"])
        if each.info["pid"] != pid
        and "-P" in (each.info["cmdline"] or [])
        and str(supervisor.config) in (each.info["cmdline"] or [])
    ]
    supervisor.signal(signal.SIGTERM)
    assert supervisor.process.wait(30) == 0
    supervisor.wait_for_log(
        r"upgrade failed, still running pid \d+ \(version 0\.1\.0\): called off by SIGTERM"
    )
    with contextlib.suppress(psutil.NoSuchProcess):
        new.wait(10)  # killed (TimeoutExpired if it were still alive)


def test_under_a_parent_that_waits_an_upgrade_execs_in_place(
    start: StartSupervisor, tmp_path: Path, code: Code
) -> None:
    """Without systemd following MAINPID and with a parent other than init (this test, as a
    shell or tini would be), the new code runs in the same process: the parent never sees its
    child exit."""
    env = {**code.env, "SUPERVISOR_UPGRADE_MODE": None}
    supervisor = start(
        supervisor_table(pidfile=str(tmp_path / "supervisor.pid")) + PID1_SERVERS,
        env=env,
        wrapper=code.wrapper,
    )
    code.install("9.9.9")
    with load_on(supervisor, ["fork", "thread", "inline", "prefork"], ["udp"]) as load:
        done = upgrade(supervisor.config)
        load.wait_for_answers(3)
    assert done.returncode == 0, done.stderr
    pid = supervisor.pid
    assert (
        done.stdout
        == f"upgraded: pid {pid} (version 9.9.9) took over from pid {pid} (version 0.1.0)\n"
    )
    assert supervisor.process.poll() is None
    assert main_pid(supervisor.config) == pid
    assert load.failures == []
    assert all("9.9.9" in seen for seen in load.seen.values())
    # The old code's fork server and prefork workers are reaped, though the table never knew them.
    deadline = time.monotonic() + 30
    while supervisor.zombies():
        assert time.monotonic() < deadline, supervisor.zombies()
        time.sleep(0.05)


def test_an_upgrade_in_place_refuses_a_changed_configuration(
    start: StartSupervisor, tmp_path: Path, code: Code
) -> None:
    """The exec'd code has nothing to fall back on: a file that changed since it was loaded
    (a new address that may not bind, a check that may refuse it) is reloaded first."""
    supervisor = start(
        supervisor_table(pidfile=str(tmp_path / "supervisor.pid"))
        + server_table("echo", "LineEchoHandler"),
        env={**code.env, "SUPERVISOR_UPGRADE_MODE": "exec"},
        wrapper=code.wrapper,
    )
    supervisor.config.write_text(
        supervisor.config.read_text() + server_table("added", "LineEchoHandler")
    )
    done = upgrade(supervisor.config)
    assert done.returncode == 78, done.stderr
    assert "has changed since it was loaded" in done.stderr
    assert "supervisor reload first" in done.stderr
    assert supervisor.process.poll() is None
    assert run_cli("reload", "-c", str(supervisor.config)).returncode == 0
    assert upgrade(supervisor.config).returncode == 0
    assert main_pid(supervisor.config) == supervisor.pid


def test_sigusr2_to_the_workers_and_the_fork_server_upgrades_only_the_supervisor(
    start: StartSupervisor, tmp_path: Path, sockdir: Path, code: Code
) -> None:
    """`killall -USR2 supervisor` reaches the prefork workers (they share its name), a signal
    to the process group the fork server too: only the supervisor acts on it. (A request's
    own process keeps the default actions, as under socketserver.)"""
    supervisor = start(everything(tmp_path, sockdir), env=code.env, wrapper=code.wrapper)
    held = hold(supervisor)
    tree = psutil.Process(supervisor.pid).children()
    assert len(tree) == 5  # 4 prefork workers, the fork server
    start_line = len(supervisor.lines)
    for process in [*tree, psutil.Process(supervisor.pid)]:
        process.send_signal(signal.SIGUSR2)
    supervisor.wait_for_log(r"upgrade: pid \d+ \(version [\d.]+\) took over", start=start_line)
    for sock in held:
        finish(sock)  # the held requests' processes and threads lived on
    assert not [line for line in supervisor.lines[start_line:] if "SIGUSR2" in line]


def test_a_supervisor_that_took_over_stops_only_once_the_old_one_has_drained(
    start: StartSupervisor, tmp_path: Path, code: Code
) -> None:
    """systemd kills what is left of a service once its main process exits (KillMode): the
    new supervisor, stopped while the old one still finishes a request, waits for it."""
    supervisor = start(
        supervisor_table(pidfile=str(tmp_path / "supervisor.pid"), shutdown_timeout=30)
        + server_table("held", "PidHandler", mode="fork"),
        env=code.env,
        wrapper=code.wrapper,
    )
    held = connect(supervisor.inet("held"), timeout=60)
    assert readline(held).strip().isdigit()
    assert upgrade(supervisor.config).returncode == 0
    new = psutil.Process(main_pid(supervisor.config))
    start_line = len(supervisor.lines)
    new.terminate()
    supervisor.wait_for_log(
        rf"supervisor\[{new.pid}\]: waiting for the old supervisor \(pid {supervisor.pid}\) "
        "to finish its requests",
        start=start_line,
    )
    assert new.status() != psutil.STATUS_ZOMBIE  # still there: the old one is not done
    finish(held)
    new.wait(30)
    supervisor.wait_for_log(rf"supervisor\[{new.pid}\]: stopped", start=start_line)
