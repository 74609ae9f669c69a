"""A real Prometheus scrapes a real supervisor: known traffic shows up in its query API, and
its scrapes, compressed as it asks, are read (a relay in between records them)."""

import gzip
import http.client
import json
import math
import shutil
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.configs import server_table
from tests.conftest import LoggedProcess, StartSupervisor, exchange
from tests.integration.test_metrics import RawAnswer, openmetrics_families, read_until_closed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed"),
]

DEADLINE = 20.0  # seconds for Prometheus to see something, from its 1 s scrape interval
TRAFFIC = {"forked": 25, "threaded": 7}


class Prometheus:
    """A running Prometheus server and its HTTP API."""

    def __init__(self, process: LoggedProcess, address: str) -> None:
        self.process = process
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query: the result vector."""
        status, body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expression}))
        assert status == 200, body
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def by_server(self, expression: str) -> dict[str, float]:
        return {
            sample["metric"]["server"]: float(sample["value"][1])
            for sample in self.query(expression)
        }

    def wait_for(
        self, expression: str, condition: Callable[[dict[str, float]], bool]
    ) -> dict[str, float]:
        """Query until the {server: value} result satisfies the condition; return it."""
        deadline = time.monotonic() + DEADLINE
        while True:
            values = self.by_server(expression)
            if condition(values):
                return values
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{expression} is still {values}; Prometheus log:\n{self.process.log}"
                )
            time.sleep(0.2)


StartPrometheus = Callable[[str], Prometheus]


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[StartPrometheus]:
    """Start Prometheus on an ephemeral loopback port, scraping one target every second."""
    started: list[LoggedProcess] = []

    def start(target: str) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: supervisor\n"
            "    static_configs:\n"
            f'      - targets: ["{target}"]\n'
        )
        process = LoggedProcess(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                "--web.listen-address=127.0.0.1:0",
            ]
        )
        started.append(process)
        address = process.wait_for_log(r'msg="Listening on" address=(\S+)', timeout=30).group(1)
        prometheus = Prometheus(process, address)
        deadline = time.monotonic() + DEADLINE
        while prometheus.get("/-/ready")[0] != 200:
            assert time.monotonic() < deadline, f"Prometheus never got ready:\n{process.log}"
            time.sleep(0.1)
        return prometheus

    yield start
    for process in started:
        process.stop()


def test_prometheus_sees_the_traffic(
    start_supervisor: StartSupervisor, start_prometheus: StartPrometheus
) -> None:
    supervisor = start_supervisor(
        server_table("forked", "LineEchoHandler")
        + server_table("threaded", "LineEchoHandler", mode="thread")
    )
    host, port = supervisor.inet("metrics")
    prometheus = start_prometheus(f"{host}:{port}")
    # A first scrape before the traffic, so that rate() sees the counters grow.
    prometheus.wait_for(
        "supervisor_requests_total", lambda values: values == {"forked": 0, "threaded": 0}
    )
    assert float(prometheus.query('up{job="supervisor"}')[0]["value"][1]) == 1

    for name, count in TRAFFIC.items():
        address = supervisor.inet(name)
        for _ in range(count):
            assert exchange(address, b"hi\n").endswith(b" hi\n")

    prometheus.wait_for("supervisor_requests_total", lambda values: values == TRAFFIC)
    prometheus.wait_for(
        "supervisor_request_duration_seconds_count", lambda values: values == TRAFFIC
    )
    assert prometheus.by_server('supervisor_child_exits_total{outcome="ok"}') == {
        "forked": 25,
        "threaded": 0,
    }
    median = prometheus.wait_for(
        "histogram_quantile(0.5, sum by (server, le) "
        "(rate(supervisor_request_duration_seconds_bucket[1m])))",
        lambda values: (
            set(values) == set(TRAFFIC) and not any(math.isnan(value) for value in values.values())
        ),
    )
    for name, value in median.items():
        assert 0 < value <= 1.0, (name, value)  # requests of a few milliseconds
    assert prometheus.by_server("supervisor_server_up") == {"forked": 1, "threaded": 1}


# -- compressed scrapes ----------------------------------------------------------------------

MAX_HEAD = 65536  # bytes of a request's head the relay reads


@dataclass(frozen=True)
class Relayed:
    """One scrape as it went through the relay."""

    request: RawAnswer  # (parsed the same way: a head, lower-case header names)
    response: RawAnswer


class RecordingRelay:
    """A TCP relay on loopback between Prometheus and the supervisor's endpoint that keeps what
    it relays. One thread a connection: it reads the request's head (a scrape is a GET, with no
    body), sends it on, reads the answer until the endpoint closes (it answers one request a
    connection) and sends that back."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        host, port = self.listener.getsockname()[:2]
        self.target = f"{host}:{port}"
        self._relayed: list[Relayed] = []
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept)
        self._acceptor.start()

    def relayed(self) -> list[Relayed]:
        with self._lock:
            return list(self._relayed)

    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # shut down: close()
            thread = threading.Thread(target=self._relay, args=(conn,))
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _relay(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                with socket.create_connection(self.upstream, timeout=10) as upstream:
                    upstream.sendall(head)
                    answer = read_until_closed(upstream)
                # Kept before it is passed on: whatever Prometheus has read is here already.
                with self._lock:
                    self._relayed.append(Relayed(RawAnswer.parse(head), RawAnswer.parse(answer)))
                conn.sendall(answer)
            except OSError as exc:
                with self._lock:
                    self._errors.append(repr(exc))

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # (wakes the accept() in progress)
        self.listener.close()
        self._acceptor.join(10)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(30)


@pytest.fixture
def relay() -> Iterator[Callable[[tuple[str, int]], RecordingRelay]]:
    """Start recording relays to an address; every one is closed at the end."""
    started: list[RecordingRelay] = []

    def start(upstream: tuple[str, int]) -> RecordingRelay:
        started.append(RecordingRelay(upstream))
        return started[-1]

    yield start
    for each in started:
        each.close()


def test_prometheus_scrapes_compressed_and_reads_it(
    start_supervisor: StartSupervisor,
    start_prometheus: StartPrometheus,
    relay: Callable[[tuple[str, int]], RecordingRelay],
) -> None:
    supervisor = start_supervisor(
        server_table("forked", "LineEchoHandler")
        + server_table("threaded", "LineEchoHandler", mode="thread")
    )
    for name, count in TRAFFIC.items():
        address = supervisor.inet(name)
        for _ in range(count):
            assert exchange(address, b"hi\n").endswith(b" hi\n")
    recorder = relay(supervisor.inet("metrics"))
    prometheus = start_prometheus(recorder.target)
    prometheus.wait_for("supervisor_requests_total", lambda values: values == TRAFFIC)
    prometheus.wait_for(
        "supervisor_request_duration_seconds_count", lambda values: values == TRAFFIC
    )
    (up,) = prometheus.query('up{job="supervisor"}')
    assert float(up["value"][1]) == 1

    relayed = recorder.relayed()
    assert relayed, recorder.errors()
    for scrape in relayed:
        # Prometheus asks for gzip on every scrape; each answer is gzip, of its stated length.
        assert "gzip" in scrape.request.headers.get("accept-encoding", ""), scrape.request
        answer = scrape.response
        assert answer.status_line == "HTTP/1.1 200 OK", answer.status_line
        assert answer.headers.get("content-encoding") == "gzip", answer.headers
        assert int(answer.headers["content-length"]) == len(answer.body)
    # What Prometheus read last, decoded: OpenMetrics (it asks for it first), with the traffic.
    last = relayed[-1].response
    assert last.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(gzip.decompress(last.body).decode())}
    assert {
        sample.labels["server"]: sample.value
        for sample in families["supervisor_requests"].samples
        if sample.name == "supervisor_requests_total"
    } == TRAFFIC
