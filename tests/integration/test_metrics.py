"""The Prometheus endpoint of a real supervisor: exact values after known traffic, the formats,
/healthz, and clients that must not stall anything."""

import contextlib
import errno
import http.client
import itertools
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from supervisor import __version__
from supervisor.exporter import HttpServer
from supervisor.responder import MAX_CONNECTIONS, REQUEST_TIMEOUT
from supervisor.stats import OUTCOMES
from tests.configs import METRICS_ANY_PORT, metrics_table, server_table, supervisor_table
from tests.conftest import (
    StartSupervisor,
    Supervisor,
    connect,
    exchange,
    one_line_error,
    readline,
    run_cli,
)

MAX_REQUEST = HttpServer.max_request
Address = tuple[str, int] | str
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# What Prometheus itself sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
N = 5


# -- HTTP and parsing ----------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix stream socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path
        self._deadline = timeout

    def connect(self) -> None:
        self.sock = connect(self._path, self._deadline)


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def get(
    address: Address,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    timeout: float = 10.0,
) -> Answer:
    """One request with http.client (an independent HTTP parser checks the framing)."""
    connection = (
        UnixHTTPConnection(address, timeout)
        if isinstance(address, str)
        else http.client.HTTPConnection(address[0], address[1], timeout=timeout)
    )
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return Answer(response.status, response.getheader("Content-Type", ""), body)
    finally:
        connection.close()


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class RawAnswer:
    status_line: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> "RawAnswer":
        head, separator, body = data.partition(b"\r\n\r\n")
        assert separator, data
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return cls(status_line, headers, body)


def raw(address: Address, data: bytes, timeout: float = 10.0) -> RawAnswer:
    """Send bytes as they are, read the answer until the server closes."""
    with connect(address, timeout) as sock:
        sock.sendall(data)
        return RawAnswer.parse(read_until_closed(sock))


class Scrape:
    """One /metrics answer in the text format, read with prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}

    def value(self, name: str, **labels: str) -> float:
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        raise AssertionError(f"no sample {name}{labels} in:\n{self.text}")

    def servers(self, name: str) -> dict[str, float]:
        """{server: value} of a sample labelled by server only."""
        return {
            sample.labels["server"]: sample.value
            for family in self.families.values()
            for sample in family.samples
            if sample.name == name and set(sample.labels) == {"server"}
        }

    def exits(self, server: str) -> dict[str, float]:
        return {
            outcome: self.value("supervisor_child_exits_total", server=server, outcome=outcome)
            for outcome in OUTCOMES
        }


def openmetrics_families(text: str) -> list[Metric]:
    """prometheus-client's OpenMetrics parser (strict: it rejects what the spec forbids)."""
    return list(openmetrics_parser.text_string_to_metric_families(text))  # type: ignore[no-untyped-call]


def metrics_address(supervisor: Supervisor) -> Address:
    if supervisor.addresses["metrics"].startswith("unix://"):
        return supervisor.unix_path("metrics")
    return supervisor.inet("metrics")


def scrape(supervisor: Supervisor) -> Scrape:
    answer = get(metrics_address(supervisor), "/metrics")
    assert answer.status == 200, answer
    assert answer.content_type == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape(answer.body.decode())


def scrape_until(
    supervisor: Supervisor, condition: Callable[[Scrape], bool], timeout: float = 10.0
) -> Scrape:
    """Scrape until the supervisor has caught up (children reaped, threads done)."""
    deadline = time.monotonic() + timeout
    while True:
        current = scrape(supervisor)
        if condition(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"never reached the expected state; last scrape:\n{current.text}")
        time.sleep(0.02)


def idle(*servers: str) -> Callable[[Scrape], bool]:
    """No live child and no busy thread left on these servers."""
    return lambda current: all(
        current.value("supervisor_children", server=name) == 0 for name in servers
    )


def round_trip(address: Address, data: bytes = b"ping\n") -> bytes:
    """Send a line, half-close, read until closed. A handler that died early may reset the
    connection, or close it before the half-close: that reads as b''."""
    try:
        return exchange(address, data)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
        return b""


def hold(address: Address) -> socket.socket:
    """A PidHandler request that is running (its pid was sent) until a line is sent."""
    sock = connect(address)
    assert int(readline(sock)) > 0
    return sock


def release(sock: socket.socket) -> None:
    with sock:
        sock.sendall(b"done\n")
        assert readline(sock) == b"bye\n"
        assert sock.recv(1) == b""


# -- the format ----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_finds_nothing_to_report_in_a_real_scrape(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(
        server_table("forked", "LineEchoHandler")
        + server_table("threaded", "LineEchoHandler", mode="thread")
        + server_table("inline", "LineEchoHandler", mode="inline")
        + server_table("failing", "FailingHandler")
        + server_table("dying", "SelfKillingHandler")
        + server_table("held", "PidHandler", max_children=1)
        + server_table("datagrams", "DatagramEchoHandler", address="udp://127.0.0.1:0")
        + server_table(
            "unix", "LineEchoHandler", address=f"unix://{sockdir}/echo.sock", mode="thread"
        )
    )
    for _ in range(3):
        for name in ("forked", "threaded", "inline", "failing", "dying"):
            round_trip(supervisor.inet(name))
        assert round_trip(supervisor.unix_path("unix")).endswith(b"ping\n")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            udp.sendto(b"ping", supervisor.inet("datagrams"))
            assert udp.recv(100) == b"echo ping"
    with hold(supervisor.inet("held")) as held:  # a live child, at max_children
        scrape_until(supervisor, idle("forked", "threaded", "failing", "dying", "datagrams"))
        text = get(supervisor.inet("metrics"), "/metrics").body.decode()
        release(held)
    current = Scrape(text)
    assert current.value("supervisor_saturated", server="held") == 1
    assert current.value("supervisor_children_memory_bytes", server="held") > 0
    assert current.exits("dying")["signal"] == 3
    assert current.value("supervisor_requests_total", server="datagrams") == 3  # one a datagram
    assert current.exits("datagrams")["ok"] == 3
    assert_promtool_accepts(text)


def assert_promtool_accepts(text: str) -> None:
    """`promtool check metrics` finds nothing to report in `text` (the text format)."""
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), text


def test_openmetrics_when_asked_for_it_else_the_text_format(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(server_table("echo", "LineEchoHandler"))
    for _ in range(3):
        round_trip(supervisor.inet("echo"))
    address = supervisor.inet("metrics")
    scrape_until(supervisor, idle("echo"))
    for accept in (OPENMETRICS, PROMETHEUS_ACCEPT):
        answer = get(address, "/metrics", {"Accept": accept})
        assert answer.status == 200
        media_type, *parameters = [part.strip() for part in answer.content_type.split(";")]
        assert media_type == "application/openmetrics-text"
        assert "version=1.0.0" in parameters
        assert answer.body.endswith(b"# EOF\n")
        families = {f.name: f for f in openmetrics_families(answer.body.decode())}
        (requests,) = families["supervisor_requests"].samples
        assert (requests.name, requests.labels, requests.value) == (
            "supervisor_requests_total",
            {"server": "echo"},
            3,
        )
        assert families["supervisor_request_duration_seconds"].type == "histogram"
        assert families["supervisor_request_duration_seconds"].unit == "seconds"
    plain = get(address, "/metrics")
    assert plain.status == 200
    assert plain.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# EOF" not in plain.body
    assert Scrape(plain.body.decode()).value("supervisor_requests_total", server="echo") == 3


def test_gauges_at_rest_and_build_and_process_metrics(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(
        server_table("forked", "LineEchoHandler", max_children=7)
        + server_table("threaded", "LineEchoHandler", mode="thread", max_children=3)
        + server_table("inline", "LineEchoHandler", mode="inline")
        + server_table("datagrams", "DatagramEchoHandler", address="udp://127.0.0.1:0")
        + server_table("unix", "LineEchoHandler", address=f"unix://{sockdir}/echo.sock")
    )
    current = scrape(supervisor)
    names = {"forked", "threaded", "inline", "datagrams", "unix"}
    assert current.servers("supervisor_max_children") == {
        "forked": 7,
        "threaded": 3,
        "inline": 1,
        "datagrams": 40,
        "unix": 40,
    }
    for gauge in ("supervisor_requests_total", "supervisor_children", "supervisor_saturated"):
        assert current.servers(gauge) == dict.fromkeys(names, 0), gauge
    assert current.servers("supervisor_server_up") == dict.fromkeys(names, 1)
    assert current.servers("supervisor_children_memory_bytes") == dict.fromkeys(names, 0)
    # An accept queue exists only for TCP listeners.
    assert current.servers("supervisor_listen_queue") == {"forked": 0, "threaded": 0, "inline": 0}
    # Every reason of every server, before anything is rejected (test_guards.py counts them).
    reasons = ("denied", "per_source", "source_rate", "rate", "verify_request")
    rejected = current.families["supervisor_rejected"]
    assert rejected.type == "counter"
    assert rejected.documentation.startswith("Clients turned away before being served, by reason")
    assert {
        (sample.name, sample.labels["server"], sample.labels["reason"]): sample.value
        for sample in rejected.samples
    } == {("supervisor_rejected_total", name, reason): 0 for name in names for reason in reasons}
    assert len(rejected.samples) == len(names) * len(reasons)
    assert current.value("supervisor_internal_errors_total") == 0
    (info,) = current.families["supervisor_build_info"].samples
    assert (info.labels, info.value) == ({"version": __version__}, 1)
    rss = psutil.Process(supervisor.pid).memory_info().rss
    assert 0.5 * rss < current.value("process_resident_memory_bytes") < 2 * rss
    assert current.value("process_start_time_seconds") == pytest.approx(
        psutil.Process(supervisor.pid).create_time(), abs=2
    )
    assert current.value("supervisor_config_last_reload_successful") == 1
    assert current.value("supervisor_reloads_total", result="success") == 0
    assert current.value("supervisor_reloads_total", result="failure") == 0
    started = current.value("supervisor_config_last_reload_success_timestamp_seconds")
    assert started == pytest.approx(psutil.Process(supervisor.pid).create_time(), abs=5)


# -- exact values after known traffic ------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "mode", "outcome", "errors"),
    [
        ("LineEchoHandler", "fork", "ok", 0),
        ("FailingHandler", "fork", "error", N),
        ("SelfKillingHandler", "fork", "signal", N),
        ("LineEchoHandler", "thread", None, 0),
        ("FailingHandler", "thread", None, N),
        ("LineEchoHandler", "inline", None, 0),
        ("FailingHandler", "inline", None, N),
    ],
)
def test_requests_exits_errors_and_durations_are_counted_exactly(
    start_supervisor: StartSupervisor, handler: str, mode: str, outcome: str | None, errors: int
) -> None:
    supervisor = start_supervisor(
        server_table("measured", handler, mode=mode) + server_table("bystander", "LineEchoHandler")
    )
    for _ in range(N):
        round_trip(supervisor.inet("measured"))
    current = scrape_until(supervisor, idle("measured"))
    assert current.value("supervisor_requests_total", server="measured") == N
    assert current.exits("measured") == {each: N if each == outcome else 0 for each in OUTCOMES}
    assert current.value("supervisor_handler_errors_total", server="measured") == errors
    assert current.value("supervisor_request_duration_seconds_count", server="measured") == N
    assert (
        current.value("supervisor_request_duration_seconds_bucket", server="measured", le="+Inf")
        == N
    )
    assert current.value("supervisor_request_duration_seconds_sum", server="measured") > 0
    assert current.value("supervisor_requests_total", server="bystander") == 0
    assert current.value("supervisor_request_duration_seconds_count", server="bystander") == 0
    assert current.exits("bystander") == dict.fromkeys(OUTCOMES, 0)


@pytest.mark.parametrize("mode", ["fork", "thread", "inline"])
def test_durations_measure_the_request(start_supervisor: StartSupervisor, mode: str) -> None:
    supervisor = start_supervisor(server_table("slow", "SleepHandler", mode=mode))  # 0.02 s each
    for _ in range(4):
        assert round_trip(supervisor.inet("slow")) == b"done\n"
    current = scrape_until(supervisor, idle("slow"))
    assert current.value("supervisor_request_duration_seconds_count", server="slow") == 4
    assert current.value("supervisor_request_duration_seconds_sum", server="slow") >= 4 * 0.02
    buckets = {
        le: current.value("supervisor_request_duration_seconds_bucket", server="slow", le=le)
        for le in ("0.01", "0.025", "10.0", "+Inf")
    }
    assert buckets["0.01"] == 0  # none was shorter than its 0.02 s sleep
    assert buckets["10.0"] == buckets["+Inf"] == 4


def test_a_child_terminated_at_shutdown_counts_as_killed(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        supervisor_table(shutdown_timeout=0.2, kill_grace=60)
        + server_table("victim", "PidHandler")
        + server_table("held", "PidHandler", mode="thread")  # keeps the supervisor draining
    )
    with connect(supervisor.inet("victim")) as victim, hold(supervisor.inet("held")) as held:
        pid = int(readline(victim))
        supervisor.signal(signal.SIGTERM)
        supervisor.wait_for_log(rf"victim: child {pid} killed by signal SIGTERM")
        assert victim.recv(1) == b""
        current = scrape(supervisor)  # the endpoint outlives the listeners
        assert current.exits("victim") == {"ok": 0, "error": 0, "signal": 0, "killed": 1}
        assert current.value("supervisor_children", server="victim") == 0
        assert current.value("supervisor_children", server="held") == 1
        assert current.servers("supervisor_server_up") == {"victim": 0, "held": 0}
        health = get(supervisor.inet("metrics"), "/healthz")
        assert (health.status, health.body) == (503, b"stopping\n")
        release(held)
    assert supervisor.wait() == 0


def test_child_cpu_time_comes_from_reaped_children(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(
        server_table("forked", "CpuBurnHandler")
        + server_table("threaded", "CpuBurnHandler", mode="thread")
    )
    for name in ("forked", "forked", "threaded", "threaded"):
        assert round_trip(supervisor.inet(name)) == b"burned\n"
    current = scrape_until(supervisor, idle("forked", "threaded"))
    user = current.value("supervisor_child_cpu_seconds_total", server="forked", mode="user")
    system = current.value("supervisor_child_cpu_seconds_total", server="forked", mode="system")
    assert user + system >= 2 * 0.05 - 0.001  # each child burned 50 ms of CPU
    assert user + system < 5
    assert current.exits("forked")["ok"] == 2
    # Threads burn the supervisor's own CPU (process_cpu_seconds_total), no child's.
    for mode in ("user", "system"):
        assert (
            current.value("supervisor_child_cpu_seconds_total", server="threaded", mode=mode) == 0
        )


def test_children_memory_while_a_child_is_held(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(
        server_table("hold", "PidHandler") + server_table("idle", "PidHandler")
    )
    with connect(supervisor.inet("hold")) as sock:
        child = psutil.Process(int(readline(sock)))
        current = scrape(supervisor)
        rss = child.memory_info().rss
        assert (
            0.5 * rss < current.value("supervisor_children_memory_bytes", server="hold") < 2 * rss
        )
        assert current.value("supervisor_children_memory_bytes", server="idle") == 0
        sock.sendall(b"done\n")
        assert readline(sock) == b"bye\n"
    current = scrape_until(supervisor, idle("hold"))
    assert current.servers("supervisor_children_memory_bytes") == {"hold": 0, "idle": 0}


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_saturation_while_held_at_max_children(
    start_supervisor: StartSupervisor, mode: str
) -> None:
    supervisor = start_supervisor(
        server_table("full", "PidHandler", mode=mode, max_children=2)
        + server_table("other", "LineEchoHandler", max_children=1)
    )
    address = supervisor.inet("full")

    def saturation(current: Scrape) -> tuple[float, float]:
        return (
            current.value("supervisor_saturated", server="full"),
            current.value("supervisor_saturated_seconds_total", server="full"),
        )

    assert saturation(scrape(supervisor)) == (0, 0)
    first = hold(address)
    assert saturation(scrape(supervisor)) == (0, 0)  # 1 of 2
    with hold(address) as second:
        saturated, before = saturation(scrape(supervisor))
        assert (saturated, before > 0) == (1, True)
        current = scrape(supervisor)
        assert saturation(current)[0] == 1
        assert saturation(current)[1] > before  # an open period grows
        assert current.value("supervisor_children", server="full") == 2
        release(second)
    current = scrape_until(supervisor, lambda s: s.value("supervisor_children", server="full") == 1)
    saturated, closed = saturation(current)
    assert (saturated, closed > before) == (0, True)
    assert saturation(scrape(supervisor)) == (0, closed)  # no longer growing
    release(first)
    current = scrape_until(supervisor, idle("full"))
    assert saturation(current) == (0, closed)
    assert current.value("supervisor_saturated", server="other") == 0
    assert current.value("supervisor_saturated_seconds_total", server="other") == 0


def test_saturation_follows_a_reloaded_max_children(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(server_table("full", "PidHandler", max_children=2))
    original = supervisor.config.read_text()

    def reload(max_children: int) -> Scrape:
        start = len(supervisor.lines)
        supervisor.config.write_text(
            original.replace("max_children = 2", f"max_children = {max_children}")
        )
        supervisor.signal(signal.SIGHUP)
        supervisor.wait_for_log(r"reloaded: changed full", start=start)
        return scrape(supervisor)

    address = supervisor.inet("full")
    with hold(address) as first, hold(address) as second:
        assert scrape(supervisor).value("supervisor_saturated", server="full") == 1
        raised = reload(5)  # 2 of 5: room again, and the new limit is what counts
        assert raised.value("supervisor_max_children", server="full") == 5
        assert raised.value("supervisor_saturated", server="full") == 0
        grown = raised.value("supervisor_saturated_seconds_total", server="full")
        assert scrape(supervisor).value("supervisor_saturated_seconds_total", server="full") == (
            grown
        )
        lowered = reload(2)  # 2 of 2 again
        assert lowered.value("supervisor_saturated", server="full") == 1
        release(first)
        release(second)
    assert scrape_until(supervisor, idle("full")).value("supervisor_saturated", server="full") == 0


def test_saturation_ends_when_a_reload_makes_the_server_inline(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(server_table("full", "PidHandler", mode="fork", max_children=2))
    address = supervisor.inet("full")
    with hold(address) as first, hold(address) as second:
        assert scrape(supervisor).value("supervisor_saturated", server="full") == 1
        start = len(supervisor.lines)
        supervisor.config.write_text(
            supervisor.config.read_text().replace('mode = "fork"', 'mode = "inline"')
        )
        supervisor.signal(signal.SIGHUP)
        supervisor.wait_for_log(r"reloaded: changed full", start=start)
        release(first)
        release(second)
    current = scrape_until(supervisor, idle("full"))
    assert current.exits("full")["ok"] == 2
    assert current.value("supervisor_saturated", server="full") == 0  # inline has no limit
    total = current.value("supervisor_saturated_seconds_total", server="full")
    assert scrape(supervisor).value("supervisor_saturated_seconds_total", server="full") == total


@pytest.mark.parametrize("mode", ["fork", "thread"])
def test_listen_queue_counts_connections_waiting_for_a_full_server(
    start_supervisor: StartSupervisor, mode: str
) -> None:
    supervisor = start_supervisor(
        server_table("full", "PidHandler", mode=mode, max_children=2)
        + server_table("other", "LineEchoHandler")
    )
    address = supervisor.inet("full")
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(hold(address)) for _ in range(2)]
        waiting = [stack.enter_context(connect(address)) for _ in range(3)]
        for sock in waiting:
            sock.sendall(b"done\n")  # read by the handler once it is accepted
        current = scrape_until(
            supervisor, lambda s: s.value("supervisor_listen_queue", server="full") == 3
        )
        assert current.value("supervisor_requests_total", server="full") == 2
        assert current.value("supervisor_children", server="full") == 2
        assert current.value("supervisor_listen_queue", server="other") == 0
        for sock in held:
            sock.sendall(b"done\n")
            assert readline(sock) == b"bye\n"
        for sock in waiting:
            assert int(readline(sock)) > 0
            assert readline(sock) == b"bye\n"
    current = scrape_until(
        supervisor,
        lambda s: (
            s.value("supervisor_requests_total", server="full") == 5
            and s.value("supervisor_children", server="full") == 0
        ),
    )
    assert current.value("supervisor_listen_queue", server="full") == 0


def test_reload_outcomes(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(server_table("echo", "LineEchoHandler"))
    original = supervisor.config.read_text()

    def reload(text: str, outcome: str) -> Scrape:
        start = len(supervisor.lines)
        supervisor.config.write_text(text)
        supervisor.signal(signal.SIGHUP)
        supervisor.wait_for_log(outcome, start=start)
        return scrape(supervisor)

    def reloads(current: Scrape) -> tuple[float, float, float]:
        return (
            current.value("supervisor_reloads_total", result="success"),
            current.value("supervisor_reloads_total", result="failure"),
            current.value("supervisor_config_last_reload_successful"),
        )

    def last_success(current: Scrape) -> float:
        return current.value("supervisor_config_last_reload_success_timestamp_seconds")

    at_start = scrape(supervisor)
    assert reloads(at_start) == (0, 0, 1)
    added = reload(original + server_table("extra", "LineEchoHandler"), r"reloaded: added extra")
    assert reloads(added) == (1, 0, 1)
    assert last_success(added) > last_success(at_start)
    assert added.value("supervisor_requests_total", server="extra") == 0
    failed = reload(original + "[servers.broken\n", r"reload failed, still running")
    assert reloads(failed) == (1, 1, 0)
    assert last_success(failed) == last_success(added)
    failed_again = reload(
        original + server_table("x", "NotAHandler"), r"reload failed, still running"
    )
    assert reloads(failed_again) == (1, 2, 0)
    assert last_success(failed_again) == last_success(added)
    restored = reload(original, r"reloaded: removed extra")
    assert reloads(restored) == (2, 2, 1)
    assert last_success(restored) > last_success(added)
    assert "extra" not in restored.servers("supervisor_requests_total")


def test_a_changed_metrics_table_applies_at_the_next_start(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(server_table("echo", "LineEchoHandler"))
    text = supervisor.config.read_text()
    assert text.endswith(METRICS_ANY_PORT)  # the fixture's [metrics] table
    moved = metrics_table(address=f"unix://{sockdir}/m.sock")
    start = len(supervisor.lines)
    supervisor.config.write_text(text.removesuffix(METRICS_ANY_PORT) + moved)
    supervisor.signal(signal.SIGHUP)
    supervisor.wait_for_log(r"reloaded: no server changed", start=start)
    supervisor.wait_for_log(r"metrics: changes to \[metrics\] apply at the next start", start=start)
    current = scrape(supervisor)  # still where it was
    assert current.value("supervisor_reloads_total", result="success") == 1
    assert not (sockdir / "m.sock").exists()


# -- /healthz ------------------------------------------------------------------------------


def test_healthz_is_ok_while_running_and_503_while_stopping(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        supervisor_table(shutdown_timeout=60) + server_table("hold", "PidHandler")
    )
    address = supervisor.inet("metrics")
    assert get(address, "/healthz") == Answer(200, "text/plain; charset=utf-8", b"ok\n")
    with hold(supervisor.inet("hold")) as held:
        assert get(address, "/healthz").status == 200  # busy is healthy
        supervisor.signal(signal.SIGTERM)
        supervisor.wait_for_log(r"stopping; 1 requests in progress")
        assert get(address, "/healthz") == Answer(503, "text/plain; charset=utf-8", b"stopping\n")
        current = scrape(supervisor)
        assert current.value("supervisor_server_up", server="hold") == 0
        assert current.value("supervisor_children", server="hold") == 1
        release(held)
    assert supervisor.wait() == 0
    with pytest.raises(ConnectionRefusedError):
        connect(address).close()


# -- requests the endpoint refuses ---------------------------------------------------------

ECHO = server_table("echo", "LineEchoHandler")


def assert_serving(supervisor: Supervisor) -> None:
    """Another server answers a round trip, and a normal scrape works."""
    echo = supervisor.inet("echo")
    assert exchange(echo, b"ping\n", timeout=30) == b"%s ping\n" % repr(echo).encode()
    assert scrape(supervisor).value("supervisor_requests_total", server="echo") >= 1


@pytest.fixture
def endpoint(start_supervisor: StartSupervisor) -> Supervisor:
    return start_supervisor(ECHO)


def test_unknown_paths_other_methods_and_garbage(endpoint: Supervisor) -> None:
    address = metrics_address(endpoint)
    cases = [
        (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 404 Not Found", b"Not Found\n"),
        (b"GET /metrics/ HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found", b"Not Found\n"),
        (b"HEAD /nope HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found", b""),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed",
            b"Method Not Allowed\n",
        ),
        (b"DELETE /healthz HTTP/1.0\r\n\r\n", "HTTP/1.1 405 Method Not Allowed", None),
        (b"hello\r\n\r\n", "HTTP/1.1 400 Bad Request", b"Bad Request\n"),
        (b"\r\n\r\n", "HTTP/1.1 400 Bad Request", None),
        (b"GET /metrics\r\n\r\n", "HTTP/1.1 400 Bad Request", None),
        (b"GET /metrics HTTP/2.0\r\n\r\n", "HTTP/1.1 400 Bad Request", None),
        (b"GET  /metrics HTTP/1.1 extra\r\n\r\n", "HTTP/1.1 400 Bad Request", None),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
            None,
        ),
        (b"GET /healthz HTTP/1.0\n\n", "HTTP/1.1 200 OK", b"ok\n"),
        (b"GET /healthz?verbose=1 HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK", b"ok\n"),
    ]
    for data, status_line, body in cases:
        answer = raw(address, data)
        assert answer.status_line == status_line, data
        assert answer.headers["connection"] == "close", data
        if body is not None:
            assert answer.body == body, data
        if not data.startswith(b"HEAD"):
            assert int(answer.headers["content-length"]) == len(answer.body), data
    assert_serving(endpoint)


def test_head_answers_the_length_without_the_body(endpoint: Supervisor) -> None:
    address = metrics_address(endpoint)
    head = raw(address, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert (head.status_line, head.headers["content-length"], head.body) == (
        "HTTP/1.1 200 OK",
        "3",  # ok\n
        b"",
    )
    head = raw(address, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.status_line == "HTTP/1.1 200 OK"
    assert head.body == b""
    assert head.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    # The length of a scrape taken then (process_* values change from one to the next).
    assert int(head.headers["content-length"]) > 1000


def test_silent_and_slow_clients_stall_nothing_and_are_dropped_in_time(
    endpoint: Supervisor,
) -> None:
    address = metrics_address(endpoint)
    started = time.monotonic()
    with connect(address, 30) as silent, connect(address, 30) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")
        assert_serving(endpoint)
        # A slowloris client: a header byte every half second, never the blank line. The
        # deadline counts from the connection, not from the last byte.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while not select.select([slow], [], [], 0.5)[0]:
                assert time.monotonic() - started < REQUEST_TIMEOUT + 5, "never dropped"
                slow.sendall(b"X")
        dropped = time.monotonic() - started
        assert closed_by_peer(slow)
        assert silent.recv(1) == b""
    assert REQUEST_TIMEOUT <= dropped < REQUEST_TIMEOUT + 3
    assert_serving(endpoint)


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer has closed (an orderly close, or a reset after our unread bytes)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("length", [MAX_REQUEST, 64 * 1024])
def test_an_endless_header_is_refused(endpoint: Supervisor, length: int) -> None:
    address = metrics_address(endpoint)
    data = b"GET /metrics HTTP/1.1\r\nX-Filler: "
    data += b"a" * (length - len(data))
    answer = b""
    with connect(address, 30) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for offset in range(0, len(data), 1024):
                sock.sendall(data[offset : offset + 1024])
        assert_serving(endpoint)
        with contextlib.suppress(ConnectionResetError):
            answer = read_until_closed(sock)  # a timeout here: the endpoint kept it open
    if length == MAX_REQUEST:  # all read: the answer comes before an orderly close
        assert RawAnswer.parse(answer).status_line == "HTTP/1.1 431 Request Header Fields Too Large"
    else:
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer
    assert_serving(endpoint)


def test_a_client_that_does_not_read_a_large_answer_stalls_nothing(
    start_supervisor: StartSupervisor,
) -> None:
    many = "".join(server_table(f"server-{i:02d}-{'x' * 40}", "LineEchoHandler") for i in range(40))
    supervisor = start_supervisor(ECHO + many)
    address = supervisor.inet("metrics")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # A small window and small segments: the supervisor's send buffer stays small too (on
        # loopback it would otherwise take the whole answer at once).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        sock.settimeout(30)
        sock.connect(address)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert_serving(supervisor)
        # The answer did not fit: the supervisor still holds the connection, part-way through.
        peers = {c.raddr for c in psutil.Process(supervisor.pid).net_connections(kind="tcp")}
        assert sock.getsockname() in peers
        assert_serving(supervisor)
        answer = RawAnswer.parse(read_until_closed(sock))  # late, but all of it
    assert answer.status_line == "HTTP/1.1 200 OK"
    assert int(answer.headers["content-length"]) == len(answer.body) > 100 * 1024
    current = Scrape(answer.body.decode())
    assert len(current.servers("supervisor_requests_total")) == 41


def test_a_hundred_connections_at_once(endpoint: Supervisor) -> None:
    address = metrics_address(endpoint)
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(address, 30)) for _ in range(100)]
        echo = endpoint.inet("echo")
        assert exchange(echo, b"ping\n", timeout=30) == b"%s ping\n" % repr(echo).encode()
        # Beyond MAX_CONNECTIONS, a connection is closed at once; the others wait for a request.
        closed = wait_closed(clients, 100 - MAX_CONNECTIONS, deadline=REQUEST_TIMEOUT - 1)
        kept = [sock for sock in clients if sock not in closed]
        for sock in kept:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        for sock in kept:
            assert RawAnswer.parse(read_until_closed(sock)).body == b"ok\n"
    assert_serving(endpoint)


def test_running_out_of_file_descriptors_does_not_spin_the_loop(
    start_supervisor: StartSupervisor,
) -> None:
    """accept() failing with EMFILE leaves the connection pending, so the listener stays
    readable: the endpoint must pause (as the servers do, ACCEPT_BACKOFF), not retry at once."""
    supervisor = start_supervisor(server_table("hold", "PidHandler", mode="thread"))
    process = psutil.Process(supervisor.pid)
    _, hard = process.rlimit(psutil.RLIMIT_NOFILE)
    open_fds = {int(fd) for fd in os.listdir(f"/proc/{supervisor.pid}/fd")}
    limit = next(
        n for n in itertools.count(len(open_fds)) if n - len(open_fds & set(range(n))) == 1
    )
    process.rlimit(psutil.RLIMIT_NOFILE, (limit, hard))  # one descriptor left
    with hold(supervisor.inet("hold")) as held, connect(supervisor.inet("metrics")) as scraper:
        scraper.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        start = len(supervisor.lines)
        supervisor.wait_for_log(r"metrics: accept failed \(Too many open files\)", start=start)
        cpu_before = sum(process.cpu_times()[:2])
        time.sleep(1.0)  # not a synchronisation: the window over which the rate is measured
        cpu = sum(process.cpu_times()[:2]) - cpu_before
        failures = sum("metrics: accept failed" in line for line in supervisor.lines[start:])
        release(held)  # a descriptor again: the scrape is answered
        assert RawAnswer.parse(read_until_closed(scraper)).body == b"ok\n"
    assert failures <= 20, f"{failures} 'accept failed' lines in about a second"
    assert cpu < 0.5, f"the supervisor used {cpu:.2f}s of CPU in about a second"


def wait_closed(clients: list[socket.socket], count: int, deadline: float) -> set[socket.socket]:
    """Wait until `count` of the clients see the server close them; return those."""
    closed: set[socket.socket] = set()
    end = time.monotonic() + deadline
    with selectors.DefaultSelector() as selector:
        for sock in clients:
            selector.register(sock, selectors.EVENT_READ)
        while len(closed) < count:
            remaining = end - time.monotonic()
            assert remaining > 0, f"only {len(closed)} of {count} connections were closed"
            for key, _ in selector.select(remaining):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                assert ready.recv(1) == b""
                selector.unregister(ready)
                closed.add(ready)
    assert len(closed) == count
    return closed


# -- where the endpoint listens ------------------------------------------------------------


def test_a_unix_socket_endpoint(start_supervisor: StartSupervisor, sockdir: Path) -> None:
    path = sockdir / "metrics.sock"
    supervisor = start_supervisor(ECHO + metrics_table(address=f"unix://{path}"))
    assert supervisor.addresses["metrics"] == f"unix://{path}"
    assert round_trip(supervisor.inet("echo")).endswith(b"ping\n")
    current = scrape_until(supervisor, idle("echo"))
    assert current.value("supervisor_requests_total", server="echo") == 1
    assert current.exits("echo")["ok"] == 1
    assert get(str(path), "/healthz") == Answer(200, "text/plain; charset=utf-8", b"ok\n")
    assert raw(str(path), b"GET /nope HTTP/1.1\r\n\r\n").status_line == "HTTP/1.1 404 Not Found"
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert not path.exists()


def test_metrics_disabled(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(ECHO + metrics_table(enabled=False))
    assert "metrics: listening" not in supervisor.log
    assert "metrics" not in supervisor.addresses
    listening = {
        connection.laddr[1]
        for connection in psutil.Process(supervisor.pid).net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    }
    assert listening == {supervisor.inet("echo")[1]}


@pytest.fixture
def taken_tcp() -> Iterator[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def taken_unix(sockdir: Path) -> Iterator[str]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(sockdir / "metrics.sock"))
        sock.listen(1)
        yield f"unix://{sockdir}/metrics.sock"


@pytest.mark.parametrize("taken", ["taken_tcp", "taken_unix"])
def test_a_metrics_address_in_use(
    tmp_path: Path, request: pytest.FixtureRequest, taken: str
) -> None:
    address: str = request.getfixturevalue(taken)
    config = tmp_path / "supervisor.toml"
    config.write_text(ECHO + metrics_table(address=address))
    result = run_cli("run", "-c", str(config))
    line = one_line_error(result, 71)
    assert line == f"{config}: metrics.address: cannot bind {address} (Address already in use)"
    if address.startswith("unix://"):
        assert os.path.exists(address.removeprefix("unix://"))  # someone else's: left alone
