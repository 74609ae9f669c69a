"""`server = "module:callable"`: a whole socketserver server hosted, its own hooks honoured in
every mode, what it must not do refused, its state kept across reloads that leave it alone.
(Servers nobody here wrote: test_hosted_servers.py.)"""

import os
import re
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from tests.configs import hosted_table, server_table, supervisor_table
from tests.conftest import StartSupervisor, Supervisor, exchange, one_line_error, run_cli
from tests.integration.test_metrics import scrape, scrape_until
from tests.integration.test_reload import reload


def udp_exchange(address: tuple[str, int], data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(data, address)
        return sock.recv(65536)


MODES = ("fork", "thread", "inline", "prefork")
IN_PROCESS = ("thread", "inline")  # one shared object: state changes are seen by the next request


# A fork-mode server whose class overrides verify_request or service_actions is forked by the
# supervisor itself, from the object those hooks ran on (as ForkingMixIn), not by the fork server.
NO_FORK_SERVER = False


def prefork_keys(mode: str) -> dict[str, int | str]:
    return {"mode": mode, "workers": 1} if mode == "prefork" else {"mode": mode}


def counts(supervisor: Supervisor, name: str) -> dict[str, int]:
    return counts_of(exchange(supervisor.inet(name), b""))


def refused(address: tuple[str, int]) -> bool:
    """Whether the server closed the connection without an answer."""
    return exchange(address, b"") == b""


# -- hooks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_verify_request_refusals_are_counted_and_closed(
    start_supervisor: StartSupervisor, mode: str
) -> None:
    supervisor = start_supervisor(
        hosted_table("alt", "alternating", **prefork_keys(mode)), fork_server=NO_FORK_SERVER
    )
    address = supervisor.inet("alt")
    answers = [exchange(address, b"") for _ in range(6)]
    assert [bool(answer) for answer in answers] == [True, False] * 3
    if mode in IN_PROCESS:  # the same object verified and served them
        assert [counts_of(answer)["verified"] for answer in answers[::2]] == [1, 3, 5]
    # (a prefork worker's counts reach the supervisor a moment after its replies)
    scrape_until(
        supervisor,
        lambda metrics: (
            (
                metrics.value("supervisor_rejected_total", server="alt", reason="verify_request"),
                metrics.value("supervisor_requests_total", server="alt"),
            )
            == (3, 3)
        ),
    )


def counts_of(answer: bytes) -> dict[str, int]:
    return {key.decode(): int(value) for key, value in re.findall(rb"(\w+)=(\d+)", answer)}


@pytest.mark.parametrize("mode", MODES)
def test_own_handle_error_is_called_and_the_supervisor_still_logs_and_counts(
    start_supervisor: StartSupervisor, mode: str
) -> None:
    supervisor = start_supervisor(hosted_table("bad", "reports_errors", **prefork_keys(mode)))
    assert exchange(supervisor.inet("bad"), b"") == b"about to fail\n"
    supervisor.wait_for_log(r"own handle_error: RuntimeError\('handler failed on purpose'\)")
    supervisor.wait_for_log(r"bad: handler tests\.hooked:FailingHandler failed for client")
    errors = "supervisor_handler_errors_total"  # (a child is counted once reaped)
    scrape_until(supervisor, lambda metrics: metrics.value(errors, server="bad") == 1)


@pytest.mark.parametrize("mode", MODES)
def test_service_actions_runs_about_every_half_second(
    start_supervisor: StartSupervisor, mode: str
) -> None:
    supervisor = start_supervisor(
        hosted_table("svc", "servicing", **prefork_keys(mode)), fork_server=NO_FORK_SERVER
    )
    first = supervisor.wait_for_log(r"service_actions 1 at ([\d.]+) pid (\d+)")
    fifth = supervisor.wait_for_log(r"service_actions 5 at ([\d.]+)")
    elapsed = float(fifth.group(1)) - float(first.group(1))
    # Where socketserver would run it: the process that accepts (prefork: the worker only).
    ran_in = {
        int(match) for match in re.findall(r"service_actions \d+ at \S+ pid (\d+)", supervisor.log)
    }
    assert ran_in == ({supervisor.pid} if mode != "prefork" else ran_in - {supervisor.pid})
    assert ran_in
    # Never more often than serve_forever's poll interval (it is a timer, not a busy loop).
    assert elapsed >= 4 * 0.5 - 0.05
    if mode in IN_PROCESS:
        assert counts(supervisor, "svc")["serviced"] >= 5  # the object the handlers see


def test_no_service_actions_no_wake_ups(start_supervisor: StartSupervisor) -> None:
    """A hosted server whose class has no service_actions of its own costs no timer (one that
    ran every 0.5 s would wake the loop 6 times in the window)."""
    supervisor = start_supervisor(
        hosted_table("a", "counting", mode="thread") + hosted_table("b", "counting", mode="inline")
    )
    assert counts(supervisor, "a")["served"] == 1
    assert counts(supervisor, "b")["served"] == 1
    process = psutil.Process(supervisor.pid)
    before = process.num_ctx_switches().voluntary
    time.sleep(3.0)  # an observation window, not a synchronisation
    woke = process.num_ctx_switches().voluntary - before
    # The end of the warm-up thread may still land in the window: allow that, and one more.
    assert woke <= 2, f"{woke} voluntary context switches in 3s while idle"


def test_a_hook_that_exits_does_not_end_the_supervisor(start_supervisor: StartSupervisor) -> None:
    """sys.exit() in verify_request refuses that client; in service_actions it is logged
    once; the supervisor and its other servers go on."""
    supervisor = start_supervisor(
        hosted_table("exits", "exits_in_hooks", mode="thread")
        + server_table("other", "LineEchoHandler", mode="thread")
    )
    supervisor.wait_for_log(r"exits: service_actions failed")
    for _ in range(2):
        assert refused(supervisor.inet("exits"))
    assert exchange(supervisor.inet("other"), b"hi\n").endswith(b" hi\n")
    assert supervisor.running()
    metrics = scrape(supervisor)
    assert metrics.value("supervisor_rejected_total", server="exits", reason="verify_request") == 2
    assert supervisor.log.count("service_actions failed") == 1


def test_a_hook_set_on_the_object_is_honoured(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(hosted_table("refuses", "refuses_by_instance", mode="inline"))
    assert refused(supervisor.inet("refuses"))
    metrics = scrape(supervisor)
    assert (
        metrics.value("supervisor_rejected_total", server="refuses", reason="verify_request") == 1
    )


# -- the object and its state ----------------------------------------------------------------


@pytest.mark.parametrize("mode", IN_PROCESS)
def test_one_shared_object_in_process(start_supervisor: StartSupervisor, mode: str) -> None:
    supervisor = start_supervisor(hosted_table("count", "counting", mode=mode))
    assert [counts(supervisor, "count")["served"] for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("mode", ["fork", "prefork"])
def test_children_get_a_copy(start_supervisor: StartSupervisor, mode: str) -> None:
    """fork: each child a copy of the object as built (ForkingMixIn); prefork: each worker its
    own copy, made before it was forked."""
    supervisor = start_supervisor(hosted_table("count", "counting", **prefork_keys(mode)))
    served = [counts(supervisor, "count") for _ in range(3)]
    if mode == "fork":
        assert [answer["served"] for answer in served] == [1, 1, 1]
        assert len({answer["pid"] for answer in served}) == 3
    else:
        assert [answer["served"] for answer in served] == [1, 2, 3]  # one worker


def test_the_object_is_kept_across_a_reload_that_leaves_it_alone(
    start_supervisor: StartSupervisor, tmp_path: Path
) -> None:
    module = tmp_path / "lib" / "sv_hosted_state.py"
    module.parent.mkdir()
    module.write_text("from tests.hooked import Counting\n\ndef make():\n    return Counting()\n")
    head = supervisor_table(path=[str(module.parent)])
    table = hosted_table("count", "sv_hosted_state:make", mode="thread")
    other = server_table("other", "LineEchoHandler")
    supervisor = start_supervisor(head + table)
    assert [counts(supervisor, "count")["served"] for _ in range(2)] == [1, 2]
    toml = supervisor.config.read_text()
    reload(supervisor, toml + other)  # another server added: this one untouched
    assert counts(supervisor, "count")["served"] == 3
    module.write_text(module.read_text() + "# changed\n")  # its module changed: made again
    reload(supervisor, toml + other)
    assert counts(supervisor, "count")["served"] == 1
    assert counts(supervisor, "count")["served"] == 2
    reload(supervisor, (toml + other).replace('mode = "thread"', 'mode = "inline"'))
    assert counts(supervisor, "count")["served"] == 1  # its table changed: made again


# -- the listening socket is the supervisor's -------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hosted", [False, True], ids=["handler", "server"])
def test_server_close_from_a_handler_leaves_the_listener_alone(
    start_supervisor: StartSupervisor, mode: str, hosted: bool
) -> None:
    keys = prefork_keys(mode)
    table = (
        hosted_table("closer", "closing", **keys)
        if hosted
        else server_table("closer", "tests.hooked:CloseHandler", **keys)
    )
    supervisor = start_supervisor(table + server_table("other", "LineEchoHandler"))
    for _ in range(3):  # the listener still accepts after each server_close()
        assert exchange(supervisor.inet("closer"), b"") == b"closed it\n"
    assert exchange(supervisor.inet("other"), b"hi\n").endswith(b" hi\n")
    assert supervisor.running()
    assert "accept failed" not in supervisor.log
    assert "Traceback" not in supervisor.log


@pytest.mark.parametrize("hosted", [False, True], ids=["handler", "server"])
def test_server_name_is_what_http_server_computes(
    start_supervisor: StartSupervisor, hosted: bool
) -> None:
    table = (
        hosted_table("named", "http_named", mode="thread")
        if hosted
        else server_table("named", "tests.hooked:NameHandler", mode="thread")
    )
    supervisor = start_supervisor(table)
    host, port = supervisor.inet("named")
    assert exchange((host, port), b"") == f"{socket.getfqdn(host)} {port}\n".encode()


def test_a_hook_the_supervisor_replaces_is_warned_of(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(hosted_table("warned", "warned", mode="thread"))
    assert counts(supervisor, "warned")["served"] == 1
    for hook in ("serve_forever", "process_request"):
        assert f"Warned overrides {hook}(), which is not used" in supervisor.log


def test_a_replaced_datagram_object_leaves_no_socket_behind(
    start_supervisor: StartSupervisor,
) -> None:
    """A datagram object's socket is the supervisor's dup of the listener: closed with the
    object even when its server_close() does not close it."""
    supervisor = start_supervisor(
        hosted_table("udp", "udp_counting", address="udp://127.0.0.1:0", mode="thread")
    )
    address = supervisor.inet("udp")
    assert udp_exchange(address, b"x") == b"served=1\n"
    process = psutil.Process(supervisor.pid)
    (listener,) = {c.fd for c in process.net_connections(kind="udp") if c.laddr == address}
    inode = os.readlink(f"/proc/{supervisor.pid}/fd/{listener}")

    def sockets_on_port() -> int:
        """The supervisor's descriptors of the listening socket (the listener and its dups)."""
        fds = Path(f"/proc/{supervisor.pid}/fd").iterdir()
        return sum(os.readlink(fd) == inode for fd in fds)

    before = sockets_on_port()
    toml = supervisor.config.read_text()
    for size in (4096, 2048):  # the table changed: a new object each time, the same socket
        start = len(supervisor.lines)
        reload(supervisor, toml.replace("\nmode =", f"\nmax_packet_size = {size}\nmode ="))
        supervisor.wait_for_log(r"server_close of UdpCounting", start=start)
        assert udp_exchange(address, b"x") == b"served=1\n"  # (a new object)
    assert sockets_on_port() == before


@pytest.mark.parametrize("mode", MODES)
def test_every_object_made_is_closed_at_stop(start_supervisor: StartSupervisor, mode: str) -> None:
    """server_close() of each object, in the process that made it (fork: the fork server's
    too)."""
    supervisor = start_supervisor(hosted_table("closes", "closes", **prefork_keys(mode)))
    assert counts(supervisor, "closes")["served"] == 1
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    closed_in = {
        int(pid) for pid in re.findall(r"server_close of Closes pid (\d+)", supervisor.log)
    }
    assert supervisor.pid in closed_in
    fork_server = [int(pid) for pid in re.findall(r"fork server (\d+): forking", supervisor.log)]
    assert closed_in == {supervisor.pid, *fork_server}


# -- refusals ----------------------------------------------------------------------------------

REFUSALS = [
    ("raises", "tests.hooked:raises() raised RuntimeError: no database", {}),
    ("not_a_server", "returned object, not a socketserver.BaseServer instance", {}),
    ("binds", "that binds in __init__: build it with bind_and_activate=False", {}),
    ("ssl_wrapped", "with an SSL-wrapped socket", {}),
    ("own_get_request", "that overrides get_request(): accepting is the supervisor's", {}),
    ("connects", "calls socket.connect()", {}),
    (
        "xmlrpc",
        "with socket_type SOCK_STREAM, which udp://127.0.0.1:0 cannot take",
        {"address": "udp://127.0.0.1:0"},
    ),
    ("no_such_factory", "module 'tests.hooked' has no attribute 'no_such_factory'", {}),
]


def test_two_tables_cannot_share_one_object(tmp_path: Path) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(hosted_table("one", "shared") + hosted_table("two", "shared"))
    line = one_line_error(run_cli("check", "-c", str(config)), 78)
    assert line == (
        f"{config}: servers.two.server: tests.hooked:shared() returned an object another "
        "server hosts: return a new one on each call"
    )


@pytest.mark.parametrize(("factory", "expected", "keys"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_check_refuses_in_one_line(
    tmp_path: Path, factory: str, expected: str, keys: dict[str, str]
) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(hosted_table("bad", factory, **keys))
    line = one_line_error(run_cli("check", "-c", str(config)), 78)
    assert line.startswith(f"{config}: servers.bad.server: ")
    assert expected in line


def test_start_refuses_in_one_line(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(hosted_table("bad", "binds"), ready=False)
    assert supervisor.wait() == 78
    (line,) = supervisor.log.splitlines()
    assert line.endswith(
        "servers.bad.server: tests.hooked:binds() returned a TCPServer that binds in __init__: "
        "build it with bind_and_activate=False"
    )


def test_a_refused_reload_keeps_the_running_object(
    start_supervisor: StartSupervisor, tmp_path: Path
) -> None:
    supervisor = start_supervisor(hosted_table("count", "counting", mode="thread"))
    assert counts(supervisor, "count")["served"] == 1
    toml = supervisor.config.read_text()
    line = reload(supervisor, toml + hosted_table("bad", "connects"), outcome="reload failed, ")
    assert "servers.bad.server: server_bind() or server_activate() calls socket.connect()" in line
    assert counts(supervisor, "count")["served"] == 2  # the same object, still serving
    assert supervisor.running()
