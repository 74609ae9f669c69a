"""The admission guards (allow/deny, max_per_source, rate, source_rate, banner_fail) and
request_timeout, with real clients on loopback (IPv4 and IPv6) and on unix sockets.

A rejected client must cost no fork: every forked child is reaped and counted in
supervisor_child_exits_total, so with no request left running, the sum of its outcomes is
the number of forks the server ever made.
"""

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from supervisor.stats import OUTCOMES
from tests.configs import server_table, supervisor_table
from tests.conftest import StartSupervisor, Supervisor, connect, exchange, finish, readline
from tests.integration.test_metrics import Scrape, scrape, scrape_until
from tests.integration.test_modes import has_ipv6_loopback
from tests.integration.test_reload import reload

BANNER = b"421 go away\r\n"


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")


def connect_from(source: str, address: tuple[str, int]) -> socket.socket:
    """A connection from a chosen loopback address (all of 127.0.0.0/8 is ours)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(address)
    return sock


def turned_away(sock: socket.socket) -> bytes:
    """What a rejected client reads before the supervisor closes the connection."""
    chunks = []
    try:
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    return b"".join(chunks)


def forks(current: Scrape, server: str) -> float:
    """Children forked for `server` so far (all reaped: see the module docstring)."""
    return sum(
        current.value("supervisor_child_exits_total", server=server, outcome=outcome)
        for outcome in OUTCOMES
    )


def rejected(current: Scrape, server: str, reason: str) -> float:
    return current.value("supervisor_rejected_total", server=server, reason=reason)


def settled(supervisor: Supervisor, server: str) -> Scrape:
    """A scrape once the server has no request running."""
    return scrape_until(
        supervisor, lambda current: current.value("supervisor_children", server=server) == 0
    )


@pytest.mark.parametrize("fork_server", [True, False])
def test_denied_clients_get_the_banner_and_cost_no_fork(
    start_supervisor: StartSupervisor, fork_server: bool
) -> None:
    supervisor = start_supervisor(
        supervisor_table(fork_server=fork_server)
        + server_table(
            "echo",
            "LineEchoHandler",
            allow=["127.0.0.0/8"],
            deny=["127.0.0.2"],
            banner_fail="421 go away",
        )
    )
    address = supervisor.inet("echo")
    for _ in range(20):
        assert turned_away(connect_from("127.0.0.2", address)) == BANNER
    supervisor.wait_for_log(r"echo: rejected client \('127.0.0.2', \d+\) \(not allowed by allow/")
    after_rejections = settled(supervisor, "echo")
    assert rejected(after_rejections, "echo", "denied") == 20
    assert forks(after_rejections, "echo") == 0
    assert after_rejections.value("supervisor_requests_total", server="echo") == 0
    # Deny wins over allow, but the rest of the allowed network is served, each by a child.
    with connect_from("127.0.0.3", address) as sock:
        sock.sendall(b"ping\n")
        assert readline(sock).endswith(b"ping\n")
    assert forks(settled(supervisor, "echo"), "echo") == 1
    # One log line per reason and LOG_EVERY seconds, not one per rejected client.
    assert supervisor.log.count("echo: rejected client") == 1


@needs_ipv6
def test_ipv6_clients_are_matched_against_ipv6_networks(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        supervisor_table(allow=["127.0.0.0/8", "::1"])
        + server_table("open", "LineEchoHandler", address="tcp://[::1]:0", mode="thread")
        + server_table(
            "closed",
            "LineEchoHandler",
            address="tcp://[::1]:0",
            allow=["2001:db8::/32"],
            banner_fail="421 go away",
        )
    )
    assert exchange(supervisor.inet("open"), b"ping\n").endswith(b"ping\n")
    assert turned_away(connect(supervisor.inet("closed"))) == BANNER
    supervisor.wait_for_log(r"closed: rejected client \('::1', \d+, 0, 0\)")
    current = settled(supervisor, "closed")
    assert rejected(current, "closed", "denied") == 1
    assert rejected(current, "open", "denied") == 0
    assert forks(current, "closed") == 0


def test_unix_socket_peers_are_matched_by_uid_and_gid(
    start_supervisor: StartSupervisor, sockdir: object
) -> None:
    supervisor = start_supervisor(
        server_table(
            "ours",
            "LineEchoHandler",
            address=f"unix://{sockdir}/ours.sock",
            allow=[f"uid:{os.getuid()}"],
            deny=["gid:65534"],
        )
        + server_table(
            "others",
            "LineEchoHandler",
            address=f"unix://{sockdir}/others.sock",
            mode="thread",
            deny=[f"gid:{os.getgid()}"],
            banner_fail="421 go away",
        )
    )
    assert exchange(supervisor.unix_path("ours"), b"ping\n").endswith(b"ping\n")
    assert turned_away(connect(supervisor.unix_path("others"))) == BANNER
    supervisor.wait_for_log(
        rf"others: rejected client uid {os.getuid()} \(not allowed by allow/deny\)"
    )
    current = scrape(supervisor)
    assert rejected(current, "others", "denied") == 1
    assert rejected(current, "ours", "denied") == 0


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_max_per_source_counts_running_requests_per_client_address(
    start_supervisor: StartSupervisor, mode: str
) -> None:
    supervisor = start_supervisor(server_table("pids", "PidHandler", mode=mode, max_per_source=2))
    address = supervisor.inet("pids")
    held = [connect_from("127.0.0.1", address) for _ in range(2)]
    try:
        for sock in held:
            assert int(readline(sock)) > 0  # both running
        assert turned_away(connect_from("127.0.0.1", address)) == b""  # closed at once
        with connect_from("127.0.0.5", address) as other:  # another source: its own count
            assert int(readline(other)) > 0
            finish(other)
        finish(held[0])
        # The finished request no longer counts: the source may run one more.
        scrape_until(supervisor, lambda current: current.value(
            "supervisor_children", server="pids") == 1)  # fmt: skip
        with connect_from("127.0.0.1", address) as again:
            assert int(readline(again)) > 0
            finish(again)
    finally:
        for sock in held:
            sock.close()
    current = settled(supervisor, "pids")
    assert rejected(current, "pids", "per_source") == 1
    assert current.value("supervisor_requests_total", server="pids") == 4
    if mode == "fork":
        assert forks(current, "pids") == 4
    supervisor.wait_for_log(r"pids: rejected client \('127.0.0.1', \d+\) \(max_per_source reached")


SEQUENTIAL = 1000


@pytest.mark.parametrize(
    ("mode", "fork_server"),
    [("fork", True), ("fork", False), ("thread", True), ("inline", True)],
    ids=["fork-server", "supervisor-fork", "thread", "inline"],
)
def test_max_per_source_never_refuses_a_client_that_waits_for_each_answer(
    start_supervisor: StartSupervisor, mode: str, fork_server: bool
) -> None:
    """max_per_source = 1 and one client making 1,000 requests one after the other, each
    begun once the last answer has ended: none may be refused (a request stops counting when
    its handler returns, before the client can see the end of its answer)."""
    supervisor = start_supervisor(
        supervisor_table(fork_server=fork_server)
        + server_table("echo", "LineEchoHandler", mode=mode, max_per_source=1)
    )
    address = supervisor.inet("echo")
    expected = b"%s ping\n" % repr(address).encode()
    answers = [exchange(address, b"ping\n") for _ in range(SEQUENTIAL)]
    assert answers.count(expected) == SEQUENTIAL
    current = settled(supervisor, "echo")
    assert rejected(current, "echo", "per_source") == 0
    assert current.value("supervisor_requests_total", server="echo") == SEQUENTIAL


def test_rate_and_source_rate_are_token_buckets_with_a_burst(
    start_supervisor: StartSupervisor,
) -> None:
    # Rates so low that no token comes back during the test: exactly the bursts get through.
    supervisor = start_supervisor(
        server_table("server_rate", "LineEchoHandler", mode="inline", rate=0.001, rate_burst=3)
        + server_table("source_rate", "LineEchoHandler", source_rate=0.001, source_rate_burst=2)
    )

    def served(source: str, server: str) -> bool:
        with connect_from(source, supervisor.inet(server)) as sock:
            sock.sendall(b"ping\n")
            try:
                return readline(sock).endswith(b"ping\n")
            except ConnectionResetError:  # closed with the line unread: a reset
                return False

    assert [served("127.0.0.1", "server_rate") for _ in range(5)] == [True] * 3 + [False] * 2
    assert not served("127.0.0.9", "server_rate")  # the whole server's bucket is empty
    assert [served("127.0.0.1", "source_rate") for _ in range(4)] == [True] * 2 + [False] * 2
    assert [served("127.0.0.9", "source_rate") for _ in range(3)] == [True] * 2 + [False]
    current = settled(supervisor, "source_rate")
    assert rejected(current, "server_rate", "rate") == 3
    assert rejected(current, "source_rate", "source_rate") == 3
    assert forks(current, "source_rate") == 4


@pytest.mark.parametrize("fork_server", [True, False])
def test_request_timeout_terminates_then_kills_a_child(
    start_supervisor: StartSupervisor, fork_server: bool
) -> None:
    supervisor = start_supervisor(
        supervisor_table(kill_grace=0.3, fork_server=fork_server)
        + server_table("slow", "PidHandler", request_timeout=0.5)
        + server_table("stubborn", "StubbornHandler", request_timeout=0.5)
    )
    with connect(supervisor.inet("slow")) as slow, connect(supervisor.inet("stubborn")) as stuck:
        slow_pid, stuck_pid = int(readline(slow)), int(readline(stuck))
        assert slow.recv(1) == b""  # SIGTERM: the child is gone and its connection closed
        assert stuck.recv(1) == b""  # it ignored SIGTERM: SIGKILL kill_grace later
    supervisor.wait_for_log(
        rf"slow: child {slow_pid} ran over request_timeout \(0.5s\) after 0\.5\d\ds; sent SIGTERM"
    )
    supervisor.wait_for_log(
        rf"slow: child {slow_pid} killed by signal SIGTERM after 0\.5\d\ds \(request_timeout\)"
    )
    supervisor.wait_for_log(rf"stubborn: child {stuck_pid} still running 0\.\d+s after request_")
    supervisor.wait_for_log(rf"stubborn: child {stuck_pid} killed by signal SIGKILL after 0\.")
    current = settled(supervisor, "stubborn")
    for server in ("slow", "stubborn"):
        assert current.value(
            "supervisor_child_exits_total", server=server, outcome="killed"
        ) == 1  # fmt: skip
    # A quick request on the same server is not touched.
    with connect(supervisor.inet("slow")) as quick:
        assert int(readline(quick)) > 0
        finish(quick)


@pytest.mark.parametrize("mode", ["thread", "inline", "prefork"])
def test_request_timeout_is_a_socket_timeout_without_a_child_per_request(
    start_supervisor: StartSupervisor, mode: str
) -> None:
    workers = {"workers": 1} if mode == "prefork" else {}
    supervisor = start_supervisor(
        server_table("pids", "PidHandler", mode=mode, request_timeout=0.3, **workers)
    )
    with connect(supervisor.inet("pids")) as sock:
        pid = int(readline(sock))
        assert sock.recv(1) == b""  # the handler's read timed out: the request is over
    supervisor.wait_for_log(r"pids: client \('127.0.0.1', \d+\) timed out \(request_timeout 0.3s\)")
    # The process that served it (the supervisor, or the prefork worker) serves on.
    with connect(supervisor.inet("pids")) as again:
        assert int(readline(again)) == pid
        finish(again)


@pytest.fixture
def flood_stop() -> Iterator[threading.Event]:
    stop = threading.Event()
    yield stop
    stop.set()


def test_a_flood_of_rejected_clients_does_not_hold_up_another_server(
    start_supervisor: StartSupervisor, flood_stop: threading.Event
) -> None:
    supervisor = start_supervisor(
        server_table("closed", "LineEchoHandler", deny=["0.0.0.0/0"], banner_fail="421 go away")
        + server_table("echo", "LineEchoHandler", mode="inline")
    )
    closed, echo = supervisor.inet("closed"), supervisor.inet("echo")
    flooded = [0] * 4

    def flood(index: int) -> None:
        for _ in range(1500):  # bounded, whatever happens
            if flood_stop.is_set():
                return
            assert turned_away(connect(closed)) == BANNER
            flooded[index] += 1

    threads = [threading.Thread(target=flood, args=(index,)) for index in range(len(flooded))]
    for thread in threads:
        thread.start()
    try:
        while sum(flooded) < 200:  # the flood is on
            assert all(thread.is_alive() for thread in threads), "the flood ended early"
            time.sleep(0.01)
        round_trips = []
        during = sum(flooded)
        for _ in range(50):
            started = time.monotonic()
            assert exchange(echo, b"ping\n", timeout=5).endswith(b" ping\n")
            round_trips.append(time.monotonic() - started)
        # Both went on together: the flood made progress while echo answered all 50.
        assert sum(flooded) > during
        assert all(thread.is_alive() for thread in threads), "the flood ended early"
    finally:
        flood_stop.set()
        for thread in threads:
            thread.join(30)
    round_trips.sort()
    print(
        f"echo during a flood of {sum(flooded)} rejected clients: median "
        f"{round_trips[25] * 1000:.2f} ms, max {round_trips[-1] * 1000:.2f} ms"
    )
    current = settled(supervisor, "closed")
    assert rejected(current, "closed", "denied") == sum(flooded)
    assert forks(current, "closed") == 0
    assert supervisor.process.poll() is None


def test_guards_follow_a_reload_and_keep_counting_running_requests(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(server_table("pids", "PidHandler"))
    address = supervisor.inet("pids")
    same_port = f"tcp://127.0.0.1:{address[1]}"
    before = connect_from("127.0.0.1", address)  # admitted before any guard: never counted
    held = None
    try:
        assert int(readline(before)) > 0
        guarded = server_table(
            "pids", "PidHandler", address=same_port, max_per_source=1, deny=["127.0.0.3"]
        )
        reload(supervisor, guarded)
        assert turned_away(connect_from("127.0.0.3", address)) == b""
        held = connect_from("127.0.0.1", address)
        assert int(readline(held)) > 0
        assert turned_away(connect_from("127.0.0.1", address)) == b""  # `held` counts
        # New limits (a new guard): the request still running keeps counting.
        rate_added = server_table(
            "pids", "PidHandler", address=same_port, max_per_source=1, rate=50, deny=["127.0.0.3"]
        )
        reload(supervisor, rate_added)
        assert turned_away(connect_from("127.0.0.1", address)) == b""
        reload(supervisor, server_table("pids", "PidHandler", address=same_port))  # no guard
        with connect_from("127.0.0.3", address) as now_allowed:
            assert int(readline(now_allowed)) > 0
    finally:
        before.close()
        if held is not None:
            held.close()
    current = settled(supervisor, "pids")
    assert rejected(current, "pids", "denied") == 1
    assert rejected(current, "pids", "per_source") == 2


def test_prefork_workers_check_allow_and_deny_themselves(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        server_table(
            "pool",
            "LineEchoHandler",
            mode="prefork",
            workers=1,
            deny=["127.0.0.2"],
            banner_fail="421 go away",
        )
    )
    address = supervisor.inet("pool")
    for _ in range(3):
        assert turned_away(connect_from("127.0.0.2", address)) == BANNER
    with connect_from("127.0.0.1", address) as sock:
        sock.sendall(b"ping\n")
        assert readline(sock).endswith(b" ping\n")  # (and the worker reports what it did)
    current = scrape_until(
        supervisor,
        lambda current: current.value("supervisor_requests_total", server="pool") == 1,
    )
    assert rejected(current, "pool", "denied") == 3
    supervisor.wait_for_log(r"pool: rejected client \('127.0.0.2', \d+\) \(not allowed")


def test_a_timed_out_child_counts_as_killed_even_if_it_exits_cleanly(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(server_table("graceful", "GracefulHandler", request_timeout=0.2))
    with connect(supervisor.inet("graceful")) as sock:
        pid = int(readline(sock))
        assert sock.recv(1) == b""
    supervisor.wait_for_log(
        rf"graceful: child {pid} exited with status 0 after .* \(request_timeout\)"
    )
    current = settled(supervisor, "graceful")
    assert current.value("supervisor_child_exits_total", server="graceful", outcome="killed") == 1
    assert current.value("supervisor_child_exits_total", server="graceful", outcome="ok") == 0


@needs_ipv6
def test_max_per_source_with_ipv6_clients(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(
        server_table("pids", "PidHandler", address="tcp://[::1]:0", max_per_source=1)
    )
    address = supervisor.inet("pids")
    with connect(address) as held:
        assert int(readline(held)) > 0
        assert turned_away(connect(address)) == b""
        finish(held)
    supervisor.wait_for_log(r"pids: rejected client \('::1', \d+, 0, 0\) \(max_per_source")
    assert rejected(settled(supervisor, "pids"), "pids", "per_source") == 1


def test_a_reload_onto_a_unix_socket_gives_the_server_a_unix_guard(
    start_supervisor: StartSupervisor, sockdir: object
) -> None:
    supervisor = start_supervisor(server_table("pids", "PidHandler", max_per_source=1))
    reload(
        supervisor,
        server_table("pids", "PidHandler", address=f"unix://{sockdir}/pids.sock", max_per_source=1),
    )
    path = f"{sockdir}/pids.sock"
    with connect(path) as held:  # the source is now the peer's uid
        assert int(readline(held)) > 0
        assert turned_away(connect(path)) == b""
    supervisor.wait_for_log(rf"pids: rejected client uid {os.getuid()} \(max_per_source")
