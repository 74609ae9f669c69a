"""A real Prometheus scrapes a real supervisor: known traffic shows up in its query API."""

import http.client
import json
import math
import shutil
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.configs import server_table
from tests.conftest import LoggedProcess, StartSupervisor, exchange

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
