"""Prefork mode: long-lived workers that accept on the shared socket, with real connections."""

import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.configs import TomlValue, server_table, supervisor_table
from tests.conftest import StartSupervisor, Supervisor, connect, exchange, readline


def prefork(**settings: TomlValue) -> str:
    """The `pids` server, in prefork mode with `settings`."""
    return server_table("pids", "PidHandler", mode="prefork", **settings)


def ask_pid(supervisor: Supervisor) -> int:
    """One request to the PidHandler: which process served it."""
    with connect(supervisor.inet("pids")) as client:
        pid = int(readline(client))
        client.sendall(b"done\n")
        assert readline(client) == b"bye\n"
    return pid


def scrape_value(supervisor: Supervisor, name: str) -> float:
    import urllib.request  # noqa: PLC0415

    host, port = supervisor.inet("metrics")
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in the scrape"
    return float(match.group(1))


def settled_value(supervisor: Supervisor, name: str, expected: float) -> float:
    """The metric once it reaches `expected` (workers report in batches, and the parent reads
    them in its loop: the count can trail the replies for a moment), or its value at the
    deadline. Over-counting never settles on `expected` either."""
    deadline = time.monotonic() + 5
    while (value := scrape_value(supervisor, name)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def test_workers_serve_many_requests_each_and_report_every_one(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(prefork(workers=2))
    supervisor.wait_for_log(r"pids: listening on .* \(prefork, .*workers=2, max_children=40\)")
    workers = {child.pid for child in supervisor.live_children()}
    assert len(workers) == 2
    served_by = [ask_pid(supervisor) for _ in range(20)]
    assert set(served_by) <= workers  # no process per request: the same two serve them all
    assert {child.pid for child in supervisor.live_children()} == workers
    # Every request reached the parent's metrics through the workers' report pipes.
    assert scrape_value(supervisor, 'supervisor_requests_total{server="pids"}') == 20
    assert (
        scrape_value(supervisor, 'supervisor_request_duration_seconds_count{server="pids"}') == 20
    )
    assert scrape_value(supervisor, 'supervisor_children{server="pids"}') == 2


def test_a_burst_of_requests_is_counted_exactly(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(
        server_table("echo", "LineEchoHandler", mode="prefork", workers=2)
    )
    address = supervisor.inet("echo")
    with ThreadPoolExecutor(max_workers=16) as pool:  # busy workers: reports go in batches
        replies = list(pool.map(lambda i: exchange(address, b"%d\n" % i), range(500)))
    assert all(reply.endswith(b" %d\n" % i) for i, reply in enumerate(replies))
    assert settled_value(supervisor, 'supervisor_requests_total{server="echo"}', 500) == 500
    histogram = 'supervisor_request_duration_seconds_count{server="echo"}'
    assert settled_value(supervisor, histogram, 500) == 500


def test_a_worker_is_recycled_after_max_requests(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(prefork(workers=1, max_requests=3, max_requests_jitter=0))
    served_by = [ask_pid(supervisor) for _ in range(7)]
    first, second, third = dict.fromkeys(served_by)  # three workers, in order
    assert served_by == [first] * 3 + [second] * 3 + [third]
    supervisor.wait_for_log(rf"pids: worker {second} recycled after 3 requests")
    exits = 'supervisor_child_exits_total{server="pids",outcome="ok"}'
    assert settled_value(supervisor, exits, 2) == 2
    assert settled_value(supervisor, 'supervisor_requests_total{server="pids"}', 7) == 7


def test_a_dead_worker_is_replaced_at_once(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(supervisor_table(log_level="debug") + prefork(workers=1))
    (victim,) = (child.pid for child in supervisor.live_children())
    supervisor.wait_for_log(rf"pids: worker {victim} ready")
    psutil.Process(victim).kill()
    killed = supervisor.wait_for_log(rf"pids: child {victim} killed by signal SIGKILL").string
    after = supervisor.lines.index(killed) + 1
    replaced = int(supervisor.wait_for_log(r"pids: worker (\d+) ready", start=after).group(1))
    assert ask_pid(supervisor) == replaced  # the only worker now, and it serves
    assert {child.pid for child in supervisor.live_children()} == {replaced}
    # A worker's death is an exit, not a handler error (no request of it failed).
    exits = 'supervisor_child_exits_total{server="pids",outcome="signal"}'
    assert settled_value(supervisor, exits, 1) == 1
    assert scrape_value(supervisor, 'supervisor_handler_errors_total{server="pids"}') == 0


def test_a_hangup_meant_for_the_supervisor_leaves_workers_alone(
    start_supervisor: StartSupervisor,
) -> None:
    # `killall -HUP supervisor` signals the workers too: they share its name.
    supervisor = start_supervisor(prefork(workers=1))
    (worker,) = supervisor.live_children()
    with connect(supervisor.inet("pids")) as held:
        assert int(readline(held)) == worker.pid  # mid-request
        worker.send_signal(signal.SIGHUP)
        worker.send_signal(signal.SIGUSR1)
        held.sendall(b"done\n")
        assert readline(held) == b"bye\n"
    assert ask_pid(supervisor) == worker.pid


def test_workers_that_die_at_start_are_replaced_with_a_back_off(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        supervisor_table(log_level="debug")
        + server_table("broken", "tests.dying_workers:Handler", mode="prefork", workers=2)
    )
    supervisor.wait_for_log(
        r"broken: workers die before they are ready; starting the next in 0\.8s"
    )
    assert scrape_value(supervisor, 'supervisor_handler_errors_total{server="broken"}') == 0
    # 0.1 + 0.2 + 0.4 s of waiting so far: a handful of forks, not a fork loop.
    deaths = len(re.findall(r"broken: child \d+ exited with status 3", supervisor.log))
    assert 3 <= deaths <= 8


def test_reload_replaces_the_workers_and_lets_the_old_ones_finish(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        supervisor_table(log_level="debug")
        + server_table("greet", "GreetingHandler", mode="prefork", workers=2)
        + prefork(workers=1)
    )
    old_workers = {child.pid for child in supervisor.live_children()}
    with connect(supervisor.inet("pids")) as held:
        old = int(readline(held))  # an old worker is in the middle of a request
        supervisor.config.write_text(
            supervisor.config.read_text().replace("GreetingHandler", "OtherGreetingHandler")
        )
        supervisor.signal(signal.SIGHUP)
        supervisor.wait_for_log("reloaded: changed greet")
        with connect(supervisor.inet("greet")) as client:
            client.sendall(b"there\n")
            assert readline(client) == b"howdy there\n"  # a new worker, new code
        assert ask_pid(supervisor) not in old_workers  # the busy old worker takes no more
        held.sendall(b"finish\n")
        assert readline(held) == b"bye\n"  # ... but finishes the request it had
    supervisor.wait_for_log(rf"pids: child {old} exited with status 0")
    live = {child.pid for child in supervisor.live_children()}
    assert len(live) == 3
    assert not live & old_workers


def test_stop_lets_the_workers_finish_their_requests(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(prefork(workers=2))
    address = supervisor.inet("pids")
    with connect(address) as held:
        readline(held)
        supervisor.signal(signal.SIGTERM)
        supervisor.wait_for_log(
            "stopping; 0 requests in progress, 2 prefork workers finishing theirs"
        )
        # The busy worker still holds the listening socket, but it no longer listens: a new
        # client is refused at once instead of waiting in a queue nobody will take.
        with pytest.raises(ConnectionRefusedError):
            connect(address, timeout=5).close()
        held.sendall(b"finish\n")
        assert readline(held) == b"bye\n"
    assert supervisor.wait() == 0
    assert "killed" not in supervisor.log


def test_workers_do_not_outlive_a_killed_supervisor(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(prefork(workers=3))
    workers = supervisor.live_children()
    supervisor.process.kill()  # SIGKILL: no chance to stop them
    supervisor.wait()
    # Their stop pipes' other end is gone with it: each sees EOF and exits.
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []


def test_a_prefork_server_on_a_unix_socket(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(prefork(address=f"unix://{sockdir}/pids.sock", workers=2))
    with connect(supervisor.unix_path("pids")) as client:
        pid = int(readline(client))
        client.sendall(b"x\n")
        assert readline(client) == b"bye\n"
    assert pid in {child.pid for child in supervisor.live_children()}
