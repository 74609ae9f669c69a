"""The supervisor as PID 1 of a new PID namespace, as in a container, without a container.

`unshare --pid --fork --mount-proc` runs it as PID 1 with its own /proc. PID 1 has no default
signal actions (a signal without a handler is ignored), and every orphan in the namespace is
re-parented to it, so it must handle SIGTERM and SIGINT itself and reap what it did not fork.
"""

import os
import signal
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.configs import server_table, supervisor_table
from tests.conftest import Supervisor, children_of, connect, exchange, readline

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def _unshare_works() -> bool:
    try:
        done = subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30, check=False)
    except FileNotFoundError:
        return False
    return done.returncode == 0


pytestmark = pytest.mark.skipif(
    not _unshare_works(), reason="unshare --pid needs root (or user namespaces) and util-linux"
)


class Pid1Supervisor(Supervisor):
    """A supervisor that is PID 1 of its own PID namespace; `self.pid` is unshare's."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(config, env, wrapper=UNSHARE)

    @property
    def host_pid(self) -> int:
        """The supervisor's pid as seen from the test (outside the namespace)."""
        (inner,) = psutil.Process(self.pid).children()
        return inner.pid

    def send(self, signum: int) -> None:
        """Signal the supervisor itself: unshare does not forward signals."""
        psutil.Process(self.host_pid).send_signal(signum)

    def namespace_zombies(self) -> list[psutil.Process]:
        """Every zombie in the namespace (all of them descend from the supervisor)."""
        return children_of(self.host_pid, zombie=True, recursive=True)

    def stop(self) -> None:
        if self.running():
            try:
                self.send(signal.SIGTERM)
                self.wait()
            except (psutil.NoSuchProcess, ValueError, subprocess.TimeoutExpired):
                pass  # already gone, or stuck: unshare is killed below, and --kill-child with it
        super().stop()


StartPid1 = Callable[..., Pid1Supervisor]


@pytest.fixture
def start_pid1(tmp_path: Path) -> Iterator[StartPid1]:
    started: list[Pid1Supervisor] = []

    def start(toml: str, env: dict[str, str] | None = None, ready: bool = True) -> Pid1Supervisor:
        config = tmp_path / "supervisor.toml"
        config.write_text(textwrap.dedent(toml) + "\n[metrics]\nenabled = false\n")
        supervisor = Pid1Supervisor(config, env)
        started.append(supervisor)
        if ready:
            supervisor.wait_ready()
            assert "pid 1" in supervisor.wait_for_log("ready: ").string
        return supervisor

    yield start
    for supervisor in started:
        supervisor.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_pid1_stops_on_a_signal_after_the_request_in_flight(
    start_pid1: StartPid1, signum: int
) -> None:
    supervisor = start_pid1(
        supervisor_table(shutdown_timeout=10) + server_table("hold", "PidHandler")
    )
    with connect(supervisor.inet("hold")) as client:
        readline(client)  # the child runs the request
        supervisor.send(signum)
        supervisor.wait_for_log(r"stopping; 1 requests in progress")
        client.sendall(b"finish\n")
        assert readline(client) == b"bye\n"
    assert supervisor.wait() == 0
    assert "stopped" in supervisor.log


def test_pid1_a_sigterm_while_starting_is_not_lost(start_pid1: StartPid1, tmp_path: Path) -> None:
    """PID 1 ignores a signal it has no handler for: one that arrives before the loop is set
    up must wait for it, not vanish (then `docker stop` would end in SIGKILL)."""
    fifo = tmp_path / "import.fifo"
    os.mkfifo(fifo)
    supervisor = start_pid1(
        server_table("late", "tests.blocking_import:Handler"),
        env={"BLOCKING_IMPORT_FIFO": str(fifo)},
        ready=False,
    )
    supervisor.wait_for_log("blocking import: waiting")  # starting: its handlers are importing
    supervisor.send(signal.SIGTERM)
    with fifo.open("wb") as release:
        release.write(b"x")
    assert supervisor.wait() == 0
    supervisor.wait_for_log("ready: ")
    supervisor.wait_for_log("SIGTERM: stopping; 0 requests in progress")


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_pid1_reaps_an_orphan_a_handler_left_behind(start_pid1: StartPid1, mode: str) -> None:
    supervisor = start_pid1(
        supervisor_table(log_level="debug")
        + server_table("daemonizer", "DoubleForkHandler", mode=mode)
    )
    with connect(supervisor.inet("daemonizer")) as client:
        client.sendall(b"go\n")  # nothing is read until the orphan exists
        orphan = int(readline(client).split()[1])
        # The orphan's parent is now PID 1: the supervisor, which did not fork it.
        client.sendall(b"release\n")
        assert readline(client) == b"released\n"
    supervisor.wait_for_log(rf"reaped pid {orphan}, not a child of ours: exited with status 0")
    if mode == "fork":  # the request's own child may exit just after the orphan: reaped too
        supervisor.wait_for_log(r"daemonizer: child \d+ exited with status 0")
    assert supervisor.namespace_zombies() == []
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait() == 0


def test_pid1_leaves_a_handler_threads_subprocess_to_it(start_pid1: StartPid1) -> None:
    """As PID 1 the supervisor reaps processes it did not fork; a thread-mode handler's own
    subprocess must still get its exit status (3), not lose it to that reaper."""
    supervisor = start_pid1(server_table("shell", "PendingSubprocessHandler", mode="thread"))
    statuses = [exchange(supervisor.inet("shell"), b"go\n") for _ in range(10)]
    assert statuses == [b"3\n"] * 10
    assert "not a child of ours" not in supervisor.log
