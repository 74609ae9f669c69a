"""max_children is never exceeded, and a saturated server never stalls another one."""

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from tests.configs import server_table, supervisor_table
from tests.conftest import StartSupervisor, Supervisor, connect, exchange, readline

FLOOD_CLIENTS = 200


class ChildSampler:
    """Counts the supervisor's live children with psutil, continuously, in a thread."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.most = 0
        self.samples = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            # A scan of /proc is not atomic: a child that exits during it, and the one started
            # in its place, can both be listed. Those still alive after the scan were all
            # alive together at some instant: only they count.
            listed = self.supervisor.live_children()
            self.most = max(self.most, sum(1 for child in listed if still_running(child)))
            self.samples += 1

    def __enter__(self) -> "ChildSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(10)


def still_running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def flood(address: tuple[str, int], clients: int) -> list[bytes]:
    """`clients` concurrent requests; returns every reply."""
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(lambda _: exchange(address, b"go\n", timeout=30), range(clients)))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a state the supervisor reaches by itself (children reaped), with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_max_children_is_never_exceeded_under_a_flood(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(server_table("slow", "SleepHandler", max_children=5, backlog=512))
    with ChildSampler(supervisor) as sampler:
        replies = flood(supervisor.inet("slow"), FLOOD_CLIENTS)
    assert replies == [b"done\n"] * FLOOD_CLIENTS
    assert sampler.samples > 10
    assert 2 <= sampler.most <= 5
    wait_until(lambda: not supervisor.live_children())
    wait_until(lambda: not supervisor.zombies())


def test_the_global_cap_holds_across_servers(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(
        supervisor_table(max_children=3)
        + server_table("a", "SleepHandler", max_children=5, backlog=512)
        + server_table("b", "SleepHandler", mode="thread", max_children=5, backlog=512)
    )
    with ChildSampler(supervisor) as sampler, ThreadPoolExecutor(max_workers=2) as pool:
        both = pool.map(lambda name: flood(supervisor.inet(name), 60), ["a", "b"])
        assert [reply for replies in both for reply in replies] == [b"done\n"] * 120
    assert 1 <= sampler.most <= 3


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_a_saturated_server_does_not_stall_another(
    start_supervisor: StartSupervisor, mode: str
) -> None:
    supervisor = start_supervisor(
        server_table("full", "PidHandler", mode=mode, max_children=2)
        + server_table("other", "LineEchoHandler", max_children=1)
    )
    full = supervisor.inet("full")
    held = [connect(full) for _ in range(2)]
    waiting = [connect(full) for _ in range(3)]
    try:
        for sock in held:
            assert int(readline(sock)) > 0  # both requests are running: the server is full
        # The other server answers at once, many times over its own max_children of 1: its
        # children are reaped as they exit even though `full` is at its limit.
        round_trips = []
        for _ in range(20):
            started = time.monotonic()
            assert exchange(supervisor.inet("other"), b"ping\n", timeout=5).endswith(b" ping\n")
            round_trips.append(time.monotonic() - started)
        print(f"round trips while 'full' is saturated: max {max(round_trips) * 1000:.1f} ms")
        # The waiting clients sit in the listen queue, not accepted, until a slot frees.
        for sock in waiting:
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                sock.recv(1)
            sock.settimeout(10)
        for sock in held:
            sock.sendall(b"done\n")
            assert readline(sock) == b"bye\n"
        for sock in waiting:
            assert int(readline(sock)) > 0
            sock.sendall(b"done\n")
            assert readline(sock) == b"bye\n"
    finally:
        for sock in held + waiting:
            sock.close()
    if mode == "fork":
        wait_until(lambda: not supervisor.live_children() and not supervisor.zombies())


def test_no_zombie_after_load(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(server_table("echo", "LineEchoHandler", max_children=8))
    address = supervisor.inet("echo")
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda _: exchange(address, b"x\n"), range(300)))
    assert all(reply.endswith(b" x\n") for reply in replies)
    wait_until(lambda: not supervisor.live_children() and not supervisor.zombies())
