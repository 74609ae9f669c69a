"""Metric bookkeeping: the histogram, per-server stats, the listen queue and exit outcomes."""

import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from supervisor import metrics, stats
from supervisor.children import Child, ExitStatus, Reaped
from supervisor.core import Supervisor
from supervisor.metrics import listen_queue
from supervisor.modes.base import exit_outcome
from supervisor.scrapes import Scrapes, Variant, render_all
from supervisor.server import Server
from supervisor.stats import BUCKETS, OUTCOMES, Histogram, ReloadStats, ServerStats, UpgradeStats

LABELS = [
    "0.001",
    "0.0025",
    "0.005",
    "0.01",
    "0.025",
    "0.05",
    "0.1",
    "0.25",
    "0.5",
    "1.0",
    "2.5",
    "5.0",
    "10.0",
    "30.0",
    "60.0",
    "+Inf",
]


# -- Histogram -----------------------------------------------------------------------------


def bucket_of(value: float) -> str:
    """The `le` label of the one bucket a single observation lands in."""
    histogram = Histogram()
    histogram.observe(value)
    (index,) = [i for i, count in enumerate(histogram.counts) if count]
    return LABELS[index]


def cumulative(histogram: Histogram) -> dict[str, int]:
    """{le: cumulative count}, the way the exposition pairs them."""
    return dict(zip(LABELS, histogram.cumulative(), strict=True))


def test_an_empty_histogram_exposes_every_bucket_at_zero() -> None:
    histogram = Histogram()
    assert cumulative(histogram) == dict.fromkeys(LABELS, 0)
    assert (histogram.count, histogram.total) == (0, 0.0)
    assert len(BUCKETS) + 1 == len(LABELS)


@pytest.mark.parametrize(
    ("value", "le"),
    [
        (0.0, "0.001"),
        (0.001, "0.001"),  # a value on a bound belongs to that bucket (le: less or equal)
        (0.0010001, "0.0025"),
        (0.0025, "0.0025"),
        (0.003, "0.005"),
        (0.05, "0.05"),
        (0.07, "0.1"),
        (1.0, "1.0"),
        (1.5, "2.5"),
        (59.9, "60.0"),
        (60.0, "60.0"),
        (60.0001, "+Inf"),
        (3600.0, "+Inf"),
    ],
)
def test_an_observation_lands_in_the_smallest_bucket_that_holds_it(value: float, le: str) -> None:
    assert bucket_of(value) == le


def test_cumulative_pairs_sum_and_count() -> None:
    histogram = Histogram()
    for value in (0.0005, 0.001, 0.004, 0.004, 0.3, 7.0, 100.0):
        histogram.observe(value)
    assert cumulative(histogram) == {
        "0.001": 2,
        "0.0025": 2,
        "0.005": 4,
        "0.01": 4,
        "0.025": 4,
        "0.05": 4,
        "0.1": 4,
        "0.25": 4,
        "0.5": 5,
        "1.0": 5,
        "2.5": 5,
        "5.0": 5,
        "10.0": 6,
        "30.0": 6,
        "60.0": 6,
        "+Inf": 7,
    }
    assert histogram.count == 7
    assert histogram.total == pytest.approx(0.0005 + 0.001 + 0.004 + 0.004 + 0.3 + 7.0 + 100.0)


# -- ServerStats ---------------------------------------------------------------------------


class Clock:
    """A monotonic clock the test sets by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Replace `time` in supervisor.stats only (not for pytest, nor for other modules)."""
    fake = Clock()
    monkeypatch.setattr(stats, "time", SimpleNamespace(monotonic=fake, time=time.time))
    return fake


def period(stats: ServerStats) -> tuple[float | None, float]:
    """(start of the open period at max_children, or None; seconds of closed periods)"""
    return stats.saturated_since, stats.saturated_seconds


def test_saturated_time_adds_up_closed_and_open_periods(clock: Clock) -> None:
    stats = ServerStats()
    assert stats.saturated_total() == 0.0
    stats.set_saturated(False)  # not saturated, and was not: nothing changes
    assert (period(stats), stats.saturated_total()) == ((None, 0.0), 0.0)

    stats.set_saturated(True)
    assert period(stats) == (1000.0, 0.0)
    clock.now = 1003.0
    assert stats.saturated_total() == 3.0  # an open period counts up to now
    stats.set_saturated(True)  # still saturated: the period keeps its start
    assert period(stats) == (1000.0, 0.0)
    clock.now = 1005.0
    stats.set_saturated(False)
    assert period(stats) == (None, 5.0)

    clock.now = 1100.0
    assert stats.saturated_total() == 5.0  # time not at max_children does not count
    stats.set_saturated(False)
    assert stats.saturated_total() == 5.0

    stats.set_saturated(True)
    clock.now = 1101.5
    assert stats.saturated_total() == 6.5
    clock.now = 1102.0
    stats.set_saturated(False)
    assert period(stats) == (None, 7.0)
    clock.now = 2000.0
    assert stats.saturated_total() == 7.0


def exits(stats: ServerStats) -> dict[str, int]:
    return {outcome: stats.exits[outcome] for outcome in OUTCOMES}


def test_a_child_exit_records_outcome_cpu_and_duration() -> None:
    stats = ServerStats()
    stats.child_exited("ok", SimpleNamespace(ru_utime=0.25, ru_stime=0.125), 0.003)
    stats.child_exited("killed", SimpleNamespace(ru_utime=0.5, ru_stime=0.0625), 12.0)
    stats.child_exited("ok", SimpleNamespace(ru_utime=0.0, ru_stime=0.0), 0.001)
    assert exits(stats) == {"ok": 2, "error": 0, "signal": 0, "killed": 1}
    assert (stats.cpu_user, stats.cpu_system) == (0.75, 0.1875)
    assert stats.durations.count == 3
    assert stats.durations.total == pytest.approx(12.004)
    buckets = cumulative(stats.durations)
    assert (buckets["0.001"], buckets["0.0025"], buckets["0.005"]) == (1, 1, 2)
    assert (buckets["10.0"], buckets["30.0"], buckets["+Inf"]) == (2, 3, 3)
    assert stats.requests == 0  # counted on accept, not on exit
    assert stats.errors == 0  # the caller decides what counts as an error


def test_a_child_exit_without_resource_usage_adds_no_cpu() -> None:
    stats = ServerStats()
    stats.child_exited("signal", None, 0.5)
    assert (stats.cpu_user, stats.cpu_system) == (0.0, 0.0)
    assert exits(stats) == {"ok": 0, "error": 0, "signal": 1, "killed": 0}
    assert stats.durations.count == 1


# -- listen_queue --------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for the kernel to finish handshakes it has been given, with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_listen_queue_counts_connections_not_yet_accepted(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        pytest.skip(f"no {family.name} sockets on this host")
    with listener:
        try:
            listener.bind((host, 0))
        except OSError:
            pytest.skip(f"this host has no loopback address {host}")
        listener.listen(16)
        assert listen_queue(listener) == 0
        clients = [socket.create_connection(listener.getsockname()[:2], 5) for _ in range(3)]
        try:
            wait_for(lambda: listen_queue(listener) == 3)
            accepted, _ = listener.accept()
            accepted.close()
            assert listen_queue(listener) == 2
        finally:
            for client in clients:
                client.close()


def test_listen_queue_is_none_where_there_is_no_accept_queue(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        assert listen_queue(udp) is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.bind(str(tmp_path / "s.sock"))
        unix.listen(4)
        assert listen_queue(unix) is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unixgram:
        unixgram.bind(str(tmp_path / "g.sock"))
        assert listen_queue(unixgram) is None


def test_listen_queue_of_a_closed_listener_is_none() -> None:
    """While stopping, listeners are closed but still scraped."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.close()
    assert listen_queue(listener) is None


# -- exit outcomes -------------------------------------------------------------------------

OWNER = cast(Server, "a server")  # exit_outcome only looks at the status and the child


def reaped(status: ExitStatus, signalled: int | None = None) -> Reaped[Server]:
    child = Child(pid=4242, owner=OWNER, started=1.0, signalled=signalled)
    return Reaped(4242, status, None, child, duration=0.5)


@pytest.mark.parametrize(
    ("status", "signalled", "outcome"),
    [
        (ExitStatus(code=0), None, "ok"),
        (ExitStatus(code=1), None, "error"),
        (ExitStatus(code=3), None, "error"),
        (ExitStatus(signal=9), None, "signal"),  # died of a signal nobody here sent
        (ExitStatus(signal=11), None, "signal"),
        (ExitStatus(signal=15), 15, "killed"),  # our SIGTERM at shutdown
        (ExitStatus(signal=9), 9, "killed"),  # our SIGKILL after kill_grace
        (ExitStatus(signal=9), 15, "killed"),  # SIGTERMed, then SIGKILLed
    ],
)
def test_exit_outcome(status: ExitStatus, signalled: int | None, outcome: str) -> None:
    assert exit_outcome(reaped(status, signalled)) == outcome


def test_exit_statuses_decoded_from_the_kernel_have_the_same_outcomes() -> None:
    assert exit_outcome(reaped(ExitStatus.decode(0))) == "ok"
    assert exit_outcome(reaped(ExitStatus.decode(1 << 8))) == "error"
    assert exit_outcome(reaped(ExitStatus.decode(9))) == "signal"
    assert exit_outcome(reaped(ExitStatus.decode(15), signalled=15)) == "killed"


def test_process_metrics_agree_with_prometheus_clients_collector() -> None:
    """Our own process_* families (prometheus-client is not imported at run time) carry the
    same names, types and, within what moves between two readings, the same values."""
    import prometheus_client  # noqa: PLC0415 (a test dependency only)

    theirs = {
        sample.name: (family.type, sample.value)
        for family in prometheus_client.ProcessCollector(registry=None).collect()
        for sample in family.samples
    }
    ours = {
        sample.name: (family.type, sample.value)
        for family in metrics.ProcessCollector().collect()
        for sample in family.samples
    }
    assert set(ours) == set(theirs)
    for name, (kind, value) in ours.items():
        assert kind == theirs[name][0], name
        if name == "process_start_time_seconds":
            assert value == pytest.approx(theirs[name][1], abs=0.05)
        elif name == "process_max_fds":
            assert value == theirs[name][1]
        else:  # memory, CPU time and open files move a little between the two readings
            assert value == pytest.approx(theirs[name][1], rel=0.2, abs=4), name


# -- supervisor_rejected_total -------------------------------------------------------------

# the guards' (guards.py), and a hosted server's verify_request (hosting.py)
REASONS = ("denied", "per_source", "source_rate", "rate", "verify_request")
REJECTED_HELP = (
    "Clients turned away before being served, by reason: denied (allow/deny), per_source "
    "(max_per_source), source_rate, rate, verify_request (a hosted server's own)."
)


def fake_server(name: str) -> Server:
    """What the collector reads of a server; a unix listener has no accept queue to read."""
    listener = SimpleNamespace(
        socket=SimpleNamespace(family=socket.AF_UNIX, type=socket.SOCK_STREAM)
    )
    server = SimpleNamespace(
        name=name,
        stats=ServerStats(),
        active=0,
        up=True,
        mode=SimpleNamespace(value="fork"),
        config=SimpleNamespace(max_children=4),
        listener=listener,
    )
    return cast(Server, server)


def collect(servers: list[Server], openmetrics: bool) -> dict[str, Metric]:
    """A scrape's rendering (all its steps at once), read back with prometheus-client's
    parser for that format."""
    supervisor = SimpleNamespace(
        servers={server.name: server for server in servers},
        running=True,
        children=[],
        reload_stats=ReloadStats(),
        upgrades=UpgradeStats(),
        loop=SimpleNamespace(faults=0),
        collect=lambda: None,
    )
    scrapes = Scrapes(cast(Supervisor, supervisor))
    text = render_all(scrapes, Variant(openmetrics, gzip=False)).decode()
    parse = parse_openmetrics if openmetrics else parse_text
    return {family.name: family for family in parse(text)}


def rejected(families: dict[str, Metric]) -> dict[tuple[str, str], float]:
    """{(server, reason): value} of supervisor_rejected_total, each sample named so."""
    family = families["supervisor_rejected"]
    assert {sample.name for sample in family.samples} == {"supervisor_rejected_total"}
    values = {
        (sample.labels["server"], sample.labels["reason"]): sample.value
        for sample in family.samples
    }
    assert len(values) == len(family.samples), family.samples  # no label set twice
    assert {tuple(sorted(sample.labels)) for sample in family.samples} == {("reason", "server")}
    return values


@pytest.mark.parametrize("openmetrics", [False, True])
def test_rejected_is_a_counter_with_every_reason_at_zero_for_every_server(
    openmetrics: bool,
) -> None:
    """Exported before anything is rejected, so rate() and the alert have a series to read."""
    assert stats.REJECT_REASONS == REASONS
    assert dict(ServerStats().rejected) == dict.fromkeys(REASONS, 0)
    families = collect([fake_server("echo"), fake_server("web")], openmetrics)
    family = families["supervisor_rejected"]
    assert (family.type, family.documentation, family.unit) == ("counter", REJECTED_HELP, "")
    assert rejected(families) == {
        (server, reason): 0 for server in ("echo", "web") for reason in REASONS
    }


@pytest.mark.parametrize("openmetrics", [False, True])
def test_rejected_clients_counted_in_the_stats_are_exported(openmetrics: bool) -> None:
    echo, web = fake_server("echo"), fake_server("web")
    echo.stats.rejected["denied"] += 5
    echo.stats.rejected["rate"] += 2
    web.stats.rejected["per_source"] += 1
    web.stats.rejected["source_rate"] += 40
    assert rejected(collect([echo, web], openmetrics)) == {
        ("echo", "denied"): 5,
        ("echo", "per_source"): 0,
        ("echo", "source_rate"): 0,
        ("echo", "rate"): 2,
        ("echo", "verify_request"): 0,
        ("web", "denied"): 0,
        ("web", "per_source"): 1,
        ("web", "source_rate"): 40,
        ("web", "rate"): 0,
        ("web", "verify_request"): 0,
    }
