"""Issue 19, a scrape never stalls a request: /metrics compressed for the clients that ask for
it (curl, urllib, http.client; promtool and prometheus-client's parsers read what they decode),
figures that stay exact while requests and scrapes overlap, and floods of scrapes and `status`
requests on a supervisor of 1,000 servers that leave a probe's round trips going between them.

The flood tests count, they do not time: for each scrape (or status answer) they count the
round trips of a probe (tests/round_trips.py, a process of its own) that began and ended
inside it, from the request's sending to the answer's last byte. While the loop renders a whole
answer in one piece, that count is 0 or 1 (on 1,000 servers, a scrape holds the loop for about
100 ms, a status for about 6 ms); while it renders in slices between loop turns, the probe gets
its turns in the middle of the answer.
"""

import contextlib
import gzip
import http.client
import json
import math
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from supervisor import exposition
from tests.configs import METRICS_ANY_PORT, server_table, supervisor_table
from tests.conftest import (
    CLI_ENV,
    ROOT,
    StartSupervisor,
    Supervisor,
    connect,
    exchange,
    run_cli,
)
from tests.integration.test_commands import server_rows
from tests.integration.test_metrics import (
    PROMETHEUS_ACCEPT,
    RawAnswer,
    Scrape,
    assert_promtool_accepts,
    idle,
    openmetrics_families,
    raw,
    read_until_closed,
    scrape_until,
)

N = 5  # requests made on the endpoint fixture's server before any test reads it


# -- HTTP ------------------------------------------------------------------------------------


def http_request(path: str, headers: Mapping[str, str] | None = None, method: str = "GET") -> bytes:
    """A request as sent on the wire: exactly these headers (http.client would add its own
    `Accept-Encoding: identity`)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def tokens(value: str) -> set[str]:
    """The lower-case items of a comma-separated header (Vary)."""
    return {item.strip().lower() for item in value.split(",") if item.strip()}


def decoded(answer: RawAnswer) -> bytes:
    """The body as the client reads it: gunzipped if the answer says it is gzip."""
    if answer.headers.get("content-encoding") == "gzip":
        return gzip.decompress(answer.body)  # (checks the stream's CRC and length too)
    return answer.body


def assert_compressed(answer: RawAnswer) -> bytes:
    """A 200 whose body is a gzip stream of its declared length; return the decoded body."""
    assert answer.status_line == "HTTP/1.1 200 OK", answer.status_line
    assert answer.headers.get("content-encoding") == "gzip", answer.headers
    assert "accept-encoding" in tokens(answer.headers.get("vary", "")), answer.headers
    assert int(answer.headers["content-length"]) == len(answer.body)  # the compressed size
    assert answer.body[:2] == b"\x1f\x8b", answer.body[:20]  # the gzip magic
    return gzip.decompress(answer.body)


def assert_plain(answer: RawAnswer) -> bytes:
    """A 200 sent as it is: no Content-Encoding; return the body."""
    assert answer.status_line == "HTTP/1.1 200 OK", answer.status_line
    assert "content-encoding" not in answer.headers, answer.headers
    assert int(answer.headers["content-length"]) == len(answer.body)
    return answer.body


def families(answer: RawAnswer) -> list[Metric]:
    """The answer's metric families, read by prometheus-client's parser for its format."""
    text = decoded(answer).decode()
    if answer.headers["content-type"].startswith("application/openmetrics-text"):
        return openmetrics_families(text)
    return list(text_string_to_metric_families(text))


# -- a supervisor of this module's own -------------------------------------------------------


@contextlib.contextmanager
def descriptors(needed: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE at least `needed` for what it starts meanwhile (a
    child inherits it; the supervisor does not raise its own), restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def supervisor_of(servers: str, files: int = 0, timeout: float = 20.0) -> Iterator[Supervisor]:
    """A supervisor of `servers` (with a pidfile, so a control socket, in a short directory)
    for a whole module, started with at least `files` descriptors; stopped with its children
    and the directory removed."""
    directory = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))
    config = directory / "supervisor.toml"
    config.write_text(supervisor_table(pidfile=f"{directory}/sv.pid") + servers + METRICS_ANY_PORT)
    with descriptors(files):
        supervisor = Supervisor(config)
    try:
        supervisor.wait_ready(timeout)
        yield supervisor
    finally:
        supervisor.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Supervisor]:
    """A supervisor that has served exactly N requests on `echo` (and nothing else runs)."""
    with supervisor_of(server_table("echo", "LineEchoHandler", mode="thread")) as sv:
        for _ in range(N):
            assert exchange(sv.inet("echo"), b"ping\n").endswith(b" ping\n")
        scrape_until(sv, idle("echo"))
        yield sv


def echoed(current: Scrape) -> float:
    return current.value("supervisor_requests_total", server="echo")


# -- real clients decode the compressed scrape ------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_decodes_the_compressed_scrape(endpoint: Supervisor) -> None:
    host, port = endpoint.inet("metrics")
    result = subprocess.run(  # curl asks for every coding it can decode: gzip among them
        [
            "curl",
            "--compressed",
            "-sS",
            "-D",
            "-",
            "--max-time",
            "30",
            f"http://{host}:{port}/metrics",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, b"")
    head, separator, body = result.stdout.partition(b"\r\n\r\n")
    assert separator, result.stdout[:500]
    answer = RawAnswer.parse(head + b"\r\n\r\n")  # (curl shows the headers as they came)
    assert answer.status_line == "HTTP/1.1 200 OK"
    assert answer.headers.get("content-encoding") == "gzip", answer.headers
    assert "accept-encoding" in tokens(answer.headers.get("vary", "")), answer.headers
    assert answer.headers["content-type"] == exposition.TEXT
    assert int(answer.headers["content-length"]) < len(body)  # curl wrote what it decoded
    assert echoed(Scrape(body.decode())) == N


def test_http_client_and_urllib_decode_the_compressed_scrape(endpoint: Supervisor) -> None:
    host, port = endpoint.inet("metrics")
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        response = connection.getresponse()
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()
    assert response.status == 200
    assert headers.get("content-encoding") == "gzip", headers
    assert "accept-encoding" in tokens(headers.get("vary", ""))
    assert headers["content-type"] == exposition.TEXT
    assert echoed(Scrape(gzip.decompress(body).decode())) == N

    request = urllib.request.Request(
        f"http://{host}:{port}/metrics", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 (http to loopback)
        assert reply.headers["Content-Encoding"] == "gzip", dict(reply.headers)
        assert echoed(Scrape(gzip.decompress(reply.read()).decode())) == N


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_decoded_text(endpoint: Supervisor) -> None:
    answer = raw(endpoint.inet("metrics"), http_request("/metrics", {"Accept-Encoding": "gzip"}))
    assert_promtool_accepts(assert_compressed(answer).decode())


def test_openmetrics_compressed_as_prometheus_asks_for_it(endpoint: Supervisor) -> None:
    answer = raw(
        endpoint.inet("metrics"),
        http_request("/metrics", {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}),
    )
    text = assert_compressed(answer).decode()
    assert answer.headers["content-type"] == exposition.OPENMETRICS
    assert text.endswith("# EOF\n")
    found = {family.name: family for family in openmetrics_families(text)}
    (requests,) = found["supervisor_requests"].samples
    assert (requests.name, requests.labels, requests.value) == (
        "supervisor_requests_total",
        {"server": "echo"},
        N,
    )
    assert found["supervisor_request_duration_seconds"].type == "histogram"


@pytest.mark.parametrize(
    ("accept_encoding", "compressed"),
    [
        ("gzip", True),  # what Prometheus sends
        ("deflate, gzip", True),
        ("gzip;q=0.5, identity", True),
        ("br;q=1.0, gzip;q=0.1, *;q=0", True),
        ("identity;q=0.5, gzip", True),
        (None, False),
        ("identity", False),
        ("gzip;q=0", False),
        ("gzip;q=0.0", False),
        ("gzip;q=0, identity", False),
        ("deflate, br", False),
    ],
)
def test_compressed_exactly_when_asked_for_gzip(
    endpoint: Supervisor, accept_encoding: str | None, compressed: bool
) -> None:
    headers = {} if accept_encoding is None else {"Accept-Encoding": accept_encoding}
    answer = raw(endpoint.inet("metrics"), http_request("/metrics", headers))
    body = assert_compressed(answer) if compressed else assert_plain(answer)
    assert answer.headers["content-type"] == exposition.TEXT
    assert echoed(Scrape(body.decode())) == N


def test_head_has_the_headers_of_get_without_a_body(endpoint: Supervisor) -> None:
    address = endpoint.inet("metrics")
    gzipped = {"Accept-Encoding": "gzip"}
    get_zipped = raw(address, http_request("/metrics", gzipped))
    head_zipped = raw(address, http_request("/metrics", gzipped, method="HEAD"))
    head_plain = raw(address, http_request("/metrics", method="HEAD"))
    assert_compressed(get_zipped)
    for head in (head_zipped, head_plain):
        assert head.status_line == "HTTP/1.1 200 OK"
        assert head.body == b""
        assert head.headers["content-type"] == exposition.TEXT
    assert head_zipped.headers.get("content-encoding") == "gzip", head_zipped.headers
    assert "accept-encoding" in tokens(head_zipped.headers.get("vary", ""))
    assert "content-encoding" not in head_plain.headers
    # Lengths of other renderings (process_* values move between scrapes): the compressed
    # one's, a fraction of the plain one's.
    zipped = int(head_zipped.headers["content-length"])
    assert 0.8 * len(get_zipped.body) < zipped < 1.25 * len(get_zipped.body)
    assert zipped < int(head_plain.headers["content-length"]) / 2


def test_healthz_stays_small_plain_text(endpoint: Supervisor) -> None:
    answer = raw(endpoint.inet("metrics"), http_request("/healthz", {"Accept-Encoding": "gzip"}))
    assert answer.status_line == "HTTP/1.1 200 OK"
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert int(answer.headers["content-length"]) == len(answer.body) <= 64
    assert decoded(answer) == b"ok\n"  # (compressed or not: either is fine)


# -- exact figures while requests and scrapes overlap ----------------------------------------

LOAD_MODES = ("fork", "thread", "inline")
CLIENTS = 4  # per server, each one request at a time; max_children too (fork, thread)
REQUESTS = 40  # per client
# Requests the supervisor may have counted but not yet timed, per server: a fork child or a
# thread at most max_children, an inline request none (it is counted and timed in one turn).
IN_FLIGHT = {"fork": CLIENTS, "thread": CLIENTS, "inline": 0}
MAX_SCRAPES = 500
# The formats a scrape asks for, in turn.
SCRAPE_HEADERS: tuple[dict[str, str], ...] = (
    {},
    {"Accept-Encoding": "gzip"},
    {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
)

SampleKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Figures:
    """One scrape's samples, in whatever format it came."""

    values: dict[SampleKey, float]
    growing: frozenset[SampleKey]  # counters and histograms: never lower in a later scrape

    @classmethod
    def of(cls, answer: RawAnswer) -> "Figures":
        values: dict[SampleKey, float] = {}
        growing = set()
        for family in families(answer):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                values[key] = sample.value
                if family.type in ("counter", "histogram") and not sample.name.endswith("_created"):
                    growing.add(key)
        return cls(values, frozenset(growing))

    def value(self, name: str, **labels: str) -> float:
        return self.values[(name, frozenset(labels.items()))]

    def buckets(self, server: str) -> list[tuple[float, float]]:
        """(le, cumulative count) of a server's request durations, by le."""
        return sorted(
            (float(dict(labels)["le"]), value)
            for (name, labels), value in self.values.items()
            if name == "supervisor_request_duration_seconds_bucket"
            and dict(labels)["server"] == server
        )


def check_figures(current: Figures, previous: Figures | None, made: int) -> None:
    """What every scrape must show, however it overlaps requests: per server, cumulative
    buckets ending at _count, _count <= requests <= what the clients made, the difference no
    more than could be in flight; nothing that counts lower than in the scrape before."""
    for server in LOAD_MODES:
        requests = current.value("supervisor_requests_total", server=server)
        count = current.value("supervisor_request_duration_seconds_count", server=server)
        buckets = current.buckets(server)
        cumulative = [value for _, value in buckets]
        assert len(buckets) > 10, buckets
        assert cumulative == sorted(cumulative), (server, buckets)
        assert buckets[-1] == (math.inf, count), (server, buckets)
        assert count <= requests <= made, (server, count, requests)
        assert requests - count <= IN_FLIGHT[server], (server, count, requests)
    if previous is not None:
        common = current.growing & previous.growing
        assert ("supervisor_requests_total", frozenset({("server", "fork")})) in common
        lower = {key: (previous.values[key], current.values[key]) for key in common}
        lower = {key: pair for key, pair in lower.items() if pair[1] < pair[0]}
        assert not lower, lower


def load_client(address: tuple[str, int], failures: list[str]) -> None:
    for _ in range(REQUESTS):
        try:
            reply = exchange(address, b"ping\n")
        except OSError as exc:
            failures.append(repr(exc))
            continue
        if not reply.endswith(b" ping\n"):
            failures.append(repr(reply))


@contextlib.contextmanager
def started(threads: list[threading.Thread]) -> Iterator[list[threading.Thread]]:
    """Start the threads; join them at the end, even if the test fails meanwhile (each one is
    bounded: its sockets have deadlines)."""
    try:
        for thread in threads:
            thread.start()
        yield threads
    finally:
        for thread in threads:
            if thread.ident is not None:
                thread.join(60)


def test_figures_stay_exact_while_requests_and_scrapes_overlap(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        "".join(
            server_table(
                mode,
                "LineEchoHandler",
                mode=mode,
                **({} if mode == "inline" else {"max_children": CLIENTS}),
            )
            for mode in LOAD_MODES
        )
    )
    metrics = supervisor.inet("metrics")
    made = CLIENTS * REQUESTS
    failures: list[str] = []
    clients = [
        threading.Thread(target=load_client, args=(supervisor.inet(mode), failures))
        for mode in LOAD_MODES
        for _ in range(CLIENTS)
    ]
    previous: Figures | None = None
    during = midway = 0  # scrapes while clients ran; of those, with some but not all counted
    with started(clients):
        while during < MAX_SCRAPES and any(client.is_alive() for client in clients):
            headers = SCRAPE_HEADERS[during % len(SCRAPE_HEADERS)]
            current = Figures.of(raw(metrics, http_request("/metrics", headers)))
            check_figures(current, previous, made)
            total = sum(current.value("supervisor_requests_total", server=m) for m in LOAD_MODES)
            midway += 0 < total < len(LOAD_MODES) * made
            previous, during = current, during + 1
    assert not failures, failures[:10]
    assert midway >= 3, f"only {midway} of {during} scrapes came while requests were counted"

    final = scrape_until(supervisor, idle(*LOAD_MODES))
    for mode in LOAD_MODES:
        assert final.value("supervisor_requests_total", server=mode) == made, mode
        assert final.value("supervisor_request_duration_seconds_count", server=mode) == made
        assert (
            final.value("supervisor_request_duration_seconds_bucket", server=mode, le="+Inf")
            == made
        )
    assert final.exits("fork")["ok"] == made
    for headers in SCRAPE_HEADERS:  # at rest, every format says the same
        again = Figures.of(raw(metrics, http_request("/metrics", headers)))
        check_figures(again, None, made)
        for mode in LOAD_MODES:
            assert again.value("supervisor_requests_total", server=mode) == made, headers
            assert again.value("supervisor_request_duration_seconds_count", server=mode) == made


# -- floods on 1,000 servers, a probe's round trips counted between --------------------------

SERVERS = 1000  # the probe is one of them
PROBE = "probe"
MIN_INTERLEAVED_SCRAPES = 5  # median round trips while a scrape is rendered (today: 0)
MIN_INTERLEAVED_STATUS = 3  # while a status is answered: a twentieth of a scrape's work (today: 0)
SCRAPERS, SCRAPES = 2, 20  # threads, and scrapes in all
STATUS_CLIENTS, STATUSES = 2, 40


def thousand_servers() -> str:
    names = [PROBE, *(f"s{i:04d}" for i in range(1, SERVERS))]
    handler = "supervisor_services.echo:EchoHandler"
    return "".join(server_table(name, handler, mode="inline") for name in names)


@pytest.fixture(scope="module")
def thousand() -> Iterator[Supervisor]:
    """A supervisor of 1,000 inline echo servers (about a second to start), shared by the flood
    tests: every one of them leaves it at rest."""
    with supervisor_of(thousand_servers(), files=SERVERS + 256, timeout=120) as supervisor:
        assert len(supervisor.addresses) == SERVERS + 1  # and the metrics endpoint
        yield supervisor


@dataclass(frozen=True)
class Window:
    """A stretch of time, on the monotonic clock (which every process shares on Linux)."""

    start: float
    end: float


@dataclass(frozen=True)
class Timed:
    """One request's answer, and its window: from just before the request was sent (once
    connected: until a client sends its request, the loop has nothing to do for it) to the
    arrival of the answer's last byte."""

    data: bytes
    window: Window


class Probe:
    """Back-to-back round trips on an echo server, each one's Window kept: tests/round_trips.py,
    in a process of its own (in a thread here, it would hold up the clients it is measured
    against as it takes the GIL between its system calls, and the loop would be free
    meanwhile)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.trips: list[Window] = []
        self.failures: list[str] = []

    @contextlib.contextmanager
    def running(self) -> Iterator["Probe"]:
        """Started (its first round trip done) on entry; stopped, its trips read, on exit."""
        host, port = self.address
        command = [sys.executable, "-m", "tests.round_trips", host, str(port)]
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=CLI_ENV, cwd=ROOT
        ) as process:
            try:
                assert process.stdout is not None
                assert process.stdout.readline() == "started\n"
                yield self
                output, _ = process.communicate(timeout=60)  # (closing its input stops it)
            finally:
                if process.poll() is None:
                    process.kill()
        result = json.loads(output)
        self.trips = [Window(start, end) for start, end in result["trips"]]
        self.failures = result["failures"]

    def inside(self, window: Window) -> int:
        """Round trips that began and ended inside `window`."""
        return sum(window.start <= trip.start and trip.end <= window.end for trip in self.trips)


def timed(address: tuple[str, int] | str, request: bytes) -> Timed:
    """Connect, send a request, read the answer until the server closes."""
    chunks = []
    with connect(address, 60) as sock:
        start = last = time.monotonic()
        sock.sendall(request)
        while chunk := sock.recv(1 << 20):
            last = time.monotonic()
            chunks.append(chunk)
    assert chunks, "closed without an answer"
    return Timed(b"".join(chunks), Window(start, last))


def flood(address: tuple[str, int] | str, request: bytes, clients: int, total: int) -> list[Timed]:
    """`total` requests from `clients` threads, each sending its next one as soon as it has
    read the answer to the last."""
    answers: list[Timed] = []
    errors: list[str] = []

    def client() -> None:
        for _ in range(total // clients):
            try:
                answers.append(timed(address, request))
            except (OSError, AssertionError) as exc:
                errors.append(repr(exc))

    with started([threading.Thread(target=client) for _ in range(clients)]):
        pass
    assert not errors, errors
    assert len(answers) == total
    return answers


def interleaved(probe: Probe, answers: list[Timed]) -> tuple[float, str]:
    """The median number of the probe's round trips inside an answer's window, and the
    figures."""
    windows = [answer.window for answer in answers]
    counts = [probe.inside(window) for window in windows]
    durations = [round(1000 * (window.end - window.start)) for window in windows]
    figures = (
        f"round trips inside each: {sorted(counts)}; their ms: {sorted(durations)}; "
        f"{len(probe.trips)} round trips in all"
    )
    return statistics.median(counts), figures


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_a_scrape_flood_leaves_the_probe_its_turns(thousand: Supervisor, encoding: str) -> None:
    request = http_request("/metrics", {"Accept-Encoding": encoding})
    with Probe(thousand.inet(PROBE)).running() as probe:
        answers = flood(thousand.inet("metrics"), request, SCRAPERS, SCRAPES)
    assert not probe.failures, probe.failures[:10]
    median, figures = interleaved(probe, answers)
    assert median >= MIN_INTERLEAVED_SCRAPES, figures
    for each in answers:
        answer = RawAnswer.parse(each.data)
        body = assert_compressed(answer) if encoding == "gzip" else assert_plain(answer)
        assert body.count(b"\nsupervisor_requests_total{server=") == SERVERS
    current = Scrape(body.decode())  # the last one, read whole
    assert len(current.servers("supervisor_requests_total")) == SERVERS


@pytest.mark.slow
def test_status_lists_all_1000_servers(thousand: Supervisor) -> None:
    result = run_cli("status", "-c", str(thousand.config))
    assert (result.returncode, result.stderr) == (0, "")
    rows = server_rows(result.stdout)
    assert len(rows) == SERVERS
    assert {row[0]: row[1] for row in rows} == {
        name: address for name, address in thousand.addresses.items() if name != "metrics"
    }


@pytest.mark.slow
def test_a_status_flood_leaves_the_probe_its_turns(thousand: Supervisor) -> None:
    control = str(thousand.config.parent / "sv.sock")
    with Probe(thousand.inet(PROBE)).running() as probe:
        answers = flood(control, b'{"command": "status"}\n', STATUS_CLIENTS, STATUSES)
    assert not probe.failures, probe.failures[:10]
    median, figures = interleaved(probe, answers)
    assert median >= MIN_INTERLEAVED_STATUS, figures
    for each in answers:
        status = json.loads(each.data)
        assert status["ok"] is True
        assert len(status["servers"]) == SERVERS


@pytest.mark.slow
def test_scrapes_and_a_status_being_answered_at_sigterm_get_their_answer() -> None:
    """SIGTERM while the first scrape of 1,000 servers is rendered (all of them to make: about
    100 ms of steps): the supervisor stops accepting, answers the scrapes and the status it
    has read, then exits."""
    with supervisor_of(thousand_servers(), files=SERVERS + 256, timeout=120) as supervisor:
        metrics = supervisor.inet("metrics")
        control = str(supervisor.config.parent / "sv.sock")
        asked = [
            connect(metrics, 30),
            connect(metrics, 30),
            connect(metrics, 30),
            connect(control, 30),
        ]
        with contextlib.ExitStack() as stack:
            for sock in asked:
                stack.enter_context(sock)
            asked[0].sendall(http_request("/metrics"))
            asked[1].sendall(http_request("/metrics", {"Accept-Encoding": "gzip"}))
            asked[2].sendall(http_request("/metrics", {"Accept": PROMETHEUS_ACCEPT}))
            asked[3].sendall(b'{"command": "status"}\n')
            supervisor.signal(signal.SIGTERM)
            answers = [read_until_closed(sock) for sock in asked]
        assert supervisor.wait() == 0
    bodies = []
    for answer in answers[:3]:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert f"Content-Length: {len(body)}\r\n".encode() in head + b"\r\n"
        bodies.append(body)
    assert b"Content-Encoding: gzip" in answers[1]
    texts = [bodies[0], gzip.decompress(bodies[1]), bodies[2]]
    for text in texts:
        assert text.count(b"supervisor_server_up{") == SERVERS
    assert texts[2].endswith(b"# EOF\n")
    assert len(json.loads(answers[3])["servers"]) == SERVERS
