"""What the supervisor's metrics cost: recording one event, and one scrape with 1-1,000 servers.

Issue 4, section 5 claims that recording an event costs about a dict update and that a scrape
with 100 servers takes a few milliseconds. This shows both, as ratios against peers measured
side by side in the same run: every measurement is interleaved with its peers (A B C A B C ...)
for several rounds and the medians are compared, because the machine is shared and noisy.
Absolute times move from run to run; the ratios are what to read. Nothing here asserts a time.

Run from the repository root:  .venv/bin/python bench/metrics_cost.py
The table is printed and written, with the machine it ran on, to bench/results/metrics_cost.txt.
"""

import collections
import platform
import resource
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import disable_created_metrics, enable_created_metrics
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.harness.machine import cpu_line, utc_now
from bench.harness.report import write_atomically
from supervisor import __version__
from supervisor.core import State, Supervisor
from supervisor.reload import prepare
from supervisor.scrapes import Scrapes, Variant, render_all
from supervisor.stats import BUCKETS, OUTCOMES, REJECT_REASONS, ServerStats

RESULTS = Path(__file__).resolve().parent / "results" / "metrics_cost.txt"
EVENT_ROUNDS = 15
EVENTS_PER_ROUND = 200_000
SCRAPE_ROUNDS = 15
SCRAPE_SECONDS = 0.02  # each scrape measurement repeats generate_latest for about this long
SERVER_COUNTS = (1, 10, 100, 1000)
EVENTS_PER_SERVER = 200  # recorded into every server's stats before scraping
DURATION = 0.0042  # seconds: the value observed in the event benchmarks (a mid-range bucket)
HANDLER = "supervisor_services.echo:EchoHandler"


# -- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One statement to time; `setup` binds the names it uses to locals (outside the timing)."""

    label: str
    stmt: str
    setup: str = "pass"


def interleaved(
    cases: Sequence[Case], namespace: dict[str, object], number: Sequence[int], rounds: int
) -> list[float]:
    """Median seconds per execution of each case, timed A B C A B C ... for `rounds` rounds."""
    timers = [timeit.Timer(case.stmt, case.setup, globals=namespace) for case in cases]
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(rounds):
        for timer, count, runs in zip(timers, number, samples, strict=True):
            runs.append(timer.timeit(count) / count)
    return [statistics.median(runs) for runs in samples]


# -- recording one event --------------------------------------------------------------------

EVENT_CASES = (
    Case("empty timeit loop (subtracted below)", "pass"),
    Case("dict update: d[key] += 1", "d[key] += 1", "d = _dict; key = 'echo'"),
    Case(  # what ServerStats.exits is: a dict subclass, off the interpreter's fast path
        "collections.Counter update: c[key] += 1",
        "c[key] += 1",
        "c = _tally; key = 'ok'",
    ),
    Case("request counted: stats.requests += 1", "stats.requests += 1", "stats = _stats"),
    Case(
        "duration observed: stats.durations.observe(x)",
        "stats.durations.observe(x)",
        f"stats = _stats; x = {DURATION}",
    ),
    Case(
        "child exit: stats.child_exited('ok', rusage, x)",
        "stats.child_exited('ok', rusage, x)",
        f"stats = _stats; rusage = _rusage; x = {DURATION}",
    ),
    Case(
        "saturation unchanged: stats.set_saturated(False)",
        "stats.set_saturated(False)",
        "stats = _stats",
    ),
    Case(
        "prometheus_client Counter.labels(s).inc()",
        "counter.labels(server).inc()",
        "counter = _counter; server = 'echo'",
    ),
    Case(
        "prometheus_client Histogram.labels(s).observe(x)",
        "histogram.labels(server).observe(x)",
        f"histogram = _histogram; server = 'echo'; x = {DURATION}",
    ),
)


def event_namespace() -> dict[str, object]:
    """The objects the event cases update: built once, shared by every round."""
    registry = CollectorRegistry()  # private: nothing touches prometheus_client's global one
    return {
        "_dict": {"echo": 0},
        "_tally": collections.Counter({"ok": 0}),
        "_stats": ServerStats(),
        "_rusage": resource.getrusage(resource.RUSAGE_SELF),  # what os.wait4 returns
        "_counter": Counter("bench_requests", "Requests.", ["server"], registry=registry),
        "_histogram": Histogram(
            "bench_duration_seconds", "Durations.", ["server"], registry=registry, buckets=BUCKETS
        ),
    }


def event_table() -> list[str]:
    medians = interleaved(
        EVENT_CASES, event_namespace(), [EVENTS_PER_ROUND] * len(EVENT_CASES), EVENT_ROUNDS
    )
    empty, dict_net = medians[0], medians[1] - medians[0]
    lines = [
        f"Recording one event: median of {EVENT_ROUNDS} interleaved rounds of "
        f"{EVENTS_PER_ROUND:,} events each.",
        f"net = gross minus the empty timeit loop ({empty * 1e9:.1f} ns), measured in the same "
        "rounds; the ratio is net over the dict update's net.",
        "",
        f"{'event':<52} {'gross ns':>9} {'net ns':>8} {'x dict':>7}",
    ]
    for case, median in zip(EVENT_CASES[1:], medians[1:], strict=True):
        net = median - empty
        lines.append(
            f"{case.label:<52} {median * 1e9:>9.1f} {net * 1e9:>8.1f} {net / dict_net:>7.2f}"
        )
    return lines


# -- a scrape -------------------------------------------------------------------------------


def events(index: int) -> list[tuple[str, float]]:
    """The (outcome, duration) of the requests recorded on server `index`: mostly ok, a few
    failures of every kind, durations spread over the buckets."""
    recorded = []
    for k in range(EVENTS_PER_SERVER):
        outcome = OUTCOMES[k % 4] if k % 10 == index % 10 else "ok"
        recorded.append((outcome, BUCKETS[(k + index) % len(BUCKETS)] * 0.8))
    return recorded


def config_text(count: int) -> str:
    servers = "".join(
        f'[servers.s{index:03d}]\naddress = "tcp://127.0.0.1:0"\nhandler = "{HANDLER}"\n\n'
        for index in range(count)
    )
    return f"[metrics]\nenabled = false\n\n{servers}"


@contextmanager
def supervisor_with(count: int, rusage: resource.struct_rusage) -> Iterator[Supervisor]:
    """A real Supervisor with `count` bound TCP servers and some traffic recorded, not run."""
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as directory:
        path = Path(directory, "supervisor.toml")
        path.write_text(config_text(count))
        prepared = prepare(str(path))
        try:
            supervisor = Supervisor(prepared)
            try:
                supervisor.state = State.RUNNING  # as after run() bound everything: up = 1
                for index, server in enumerate(supervisor.servers.values()):
                    for outcome, duration in events(index):
                        # What admission.py and the modes do on accept and on reaping a child.
                        server.stats.requests += 1
                        server.stats.child_exited(outcome, rusage, duration)
                        if outcome in ("error", "signal"):
                            server.stats.errors += 1
                yield supervisor
            finally:
                supervisor.loop.close()
        finally:
            for listener in prepared.listeners.values():
                listener.close()


def peer_registry(supervisor: Supervisor, rusage: resource.struct_rusage) -> CollectorRegistry:
    """The same series kept by prometheus_client the usual way: labelled Counter, Gauge and
    Histogram objects updated as events happen, on a private registry with process_* too."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    peer = PeerMetrics.on(registry)
    for index, server in enumerate(supervisor.servers.values()):
        peer.record(server.name, server.config.max_children, events(index), rusage)
    reloads = Counter(
        "supervisor_reloads", "Configuration reloads, by result.", ["result"], registry=registry
    )
    reloads.labels("success")
    reloads.labels("failure")
    upgrades = Counter("supervisor_upgrades", "Upgrades, by result.", ["result"], registry=registry)
    upgrades.labels("ok")
    upgrades.labels("failed")
    Counter("supervisor_internal_errors", "Unexpected exceptions.", registry=registry)
    Gauge(
        "supervisor_config_last_reload_successful",
        "1 if the last reload (or the start) succeeded.",
        registry=registry,
    ).set(1)
    Gauge(
        "supervisor_config_last_reload_success_timestamp_seconds",
        "When the configuration was last loaded successfully (Unix time).",
        unit="seconds",
        registry=registry,
    ).set(time.time())
    Gauge(
        "supervisor_build_info",
        "The supervisor's version, as a label.",
        ["version"],
        registry=registry,
    ).labels(__version__).set(1)
    return registry


@dataclass(frozen=True)
class PeerMetrics:
    """The per-server families, with the supervisor's names and help texts."""

    requests: Counter
    children: Gauge
    max_children: Gauge
    saturated: Gauge
    saturated_seconds: Counter
    errors: Counter
    up: Gauge
    exits: Counter
    cpu: Counter
    queue: Gauge
    rejected: Counter
    durations: Histogram
    memory: Gauge

    @classmethod
    def on(cls, registry: CollectorRegistry) -> "PeerMetrics":
        def counter(
            name: str, doc: str, labels: Sequence[str] = ("server",), unit: str = ""
        ) -> Counter:
            return Counter(name, doc, labels, unit=unit, registry=registry)

        def gauge(name: str, doc: str, unit: str = "") -> Gauge:
            return Gauge(name, doc, ["server"], unit=unit, registry=registry)

        return cls(
            requests=counter("supervisor_requests", "Connections accepted or datagrams received."),
            children=gauge(
                "supervisor_children", "Live children (fork mode) or busy threads (thread mode)."
            ),
            max_children=gauge("supervisor_max_children", "The configured max_children."),
            saturated=gauge("supervisor_saturated", "1 while the server is at max_children."),
            saturated_seconds=counter(
                "supervisor_saturated_seconds", "Time spent at max_children.", unit="seconds"
            ),
            errors=counter(
                "supervisor_handler_errors",
                "Requests whose handler raised, or whose child failed or died.",
            ),
            up=gauge("supervisor_server_up", "1 while the server is listening."),
            exits=counter(
                "supervisor_child_exits",
                "Children reaped, by outcome: ok, error (non-zero exit), signal, killed (by us).",
                ("server", "outcome"),
            ),
            cpu=counter(
                "supervisor_child_cpu_seconds",
                "CPU time of reaped children (wait4 resource usage).",
                ("server", "mode"),
                unit="seconds",
            ),
            queue=gauge(
                "supervisor_listen_queue", "Connections waiting in a TCP listener's accept queue."
            ),
            rejected=counter(
                "supervisor_rejected",
                "Clients turned away before being served, by reason.",
                ("server", "reason"),
            ),
            durations=Histogram(
                "supervisor_request_duration_seconds",
                "Request duration: fork to reap in fork mode, handler start to end otherwise.",
                ["server"],
                unit="seconds",
                buckets=BUCKETS,
                registry=registry,
            ),
            memory=gauge(
                "supervisor_children_memory",
                "Resident memory of live children (psutil, at scrape time).",
                unit="bytes",
            ),
        )

    def record(
        self,
        name: str,
        max_children: int,
        recorded: list[tuple[str, float]],
        rusage: resource.struct_rusage,
    ) -> None:
        """One server's series, its events recorded as a prometheus_client user would."""
        for outcome in OUTCOMES:
            self.exits.labels(name, outcome)
        for reason in REJECT_REASONS:
            self.rejected.labels(name, reason)
        for counter in (self.requests, self.saturated_seconds, self.errors):
            counter.labels(name)
        for outcome, duration in recorded:
            self.requests.labels(name).inc()
            self.exits.labels(name, outcome).inc()
            self.cpu.labels(name, "user").inc(rusage.ru_utime)
            self.cpu.labels(name, "system").inc(rusage.ru_stime)
            self.durations.labels(name).observe(duration)
            if outcome in ("error", "signal"):
                self.errors.labels(name).inc()
        for gauge in (self.children, self.saturated, self.queue, self.memory):
            gauge.labels(name).set(0)
        self.max_children.labels(name).set(max_children)
        self.up.labels(name).set(1)


def series(exposition: bytes) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """The (sample name, labels) pairs of a text exposition, to check the peers match."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(exposition.decode())
        for sample in family.samples
    }


SCRAPE_CASES = (
    Case(  # what GET /metrics runs (all its steps at once), with every server's text to make
        "supervisor: the endpoint, first scrape (text)",
        "render_all(Scrapes(supervisor), TEXT)",
        "supervisor = _supervisor",
    ),
    Case(
        "prometheus_client peer, same series",
        "generate_latest(registry)",
        "created_series(False); registry = _peer",
    ),
    Case(
        "prometheus_client peer, default (+ _created)",
        "generate_latest(registry)",
        "created_series(True); registry = _peer",
    ),
    Case(  # the usual scrape: most servers' numbers unchanged since the last one
        "supervisor: the endpoint, numbers unchanged",
        "render_all(scrapes, TEXT)",
        "scrapes = _scrapes",
    ),
    Case(
        "supervisor: the endpoint, first scrape (OpenMetrics)",
        "render_all(Scrapes(supervisor), OPENMETRICS)",
        "supervisor = _supervisor",
    ),
    Case(
        "prometheus_client peer, OpenMetrics",
        "openmetrics_latest(registry)",
        "created_series(False); registry = _peer",
    ),
)
TEXT, OPENMETRICS = Variant(openmetrics=False, gzip=False), Variant(openmetrics=True, gzip=False)


def scrape_rows(count: int) -> list[str]:
    """Time the scrapes of `count` servers, the supervisor's and its peers', interleaved."""
    rusage = resource.getrusage(resource.RUSAGE_SELF)  # stands in for the reaped children's
    with supervisor_with(count, rusage) as supervisor:
        peer = peer_registry(supervisor, rusage)
        scrapes = Scrapes(supervisor)
        namespace: dict[str, object] = {
            "generate_latest": generate_latest,
            "openmetrics_latest": openmetrics_latest,
            "render_all": render_all,
            "Scrapes": Scrapes,
            "TEXT": TEXT,
            "OPENMETRICS": OPENMETRICS,
            "_supervisor": supervisor,
            "_scrapes": scrapes,
            "created_series": created_series,
            "_peer": peer,
        }
        outputs = expositions(render_all(scrapes, TEXT), peer)
        numbers = [calibrate(case, namespace) for case in SCRAPE_CASES]
        medians = interleaved(SCRAPE_CASES, namespace, numbers, SCRAPE_ROUNDS)
        created_series(True)  # prometheus_client's default again
    rows = [
        f"{count:>7} {case.label:<44} {median * 1e3:>9.3f} {median / medians[1]:>7.2f}"
        + ("" if output is None else f" {len(output):>8,} {len(series(output)):>7,}")
        for case, median, output in zip(SCRAPE_CASES, medians, outputs, strict=True)
    ]
    if outputs[0] is None or outputs[1] is None or series(outputs[0]) != series(outputs[1]):
        rows.append(f"{'':>7} (the supervisor's and the peer's series differ: check the peer)")
    return rows


def created_series(enabled: bool) -> None:
    """prometheus_client's process-wide switch for `_created` samples, read when rendering: the
    supervisor's families have none, so the same-series peer renders without them too."""
    if enabled:
        enable_created_metrics()  # type: ignore[no-untyped-call]
    else:
        disable_created_metrics()  # type: ignore[no-untyped-call]


def expositions(ours: bytes, peer: CollectorRegistry) -> list[bytes | None]:
    """What each of SCRAPE_CASES renders in the text format, in their order (None: not text)."""
    created_series(False)
    rendered: list[bytes | None] = [ours, generate_latest(peer)]
    created_series(True)
    rendered += [generate_latest(peer), ours, None, None]
    return rendered


def calibrate(case: Case, namespace: dict[str, object]) -> int:
    """How many scrapes make one measurement of about SCRAPE_SECONDS."""
    timer = timeit.Timer(case.stmt, case.setup, globals=namespace)
    timer.timeit(1)  # warm-up
    once = timer.timeit(3) / 3
    return max(1, round(SCRAPE_SECONDS / once))


def scrape_table() -> list[str]:
    lines = [
        f"A scrape: the endpoint or generate_latest(registry); median of {SCRAPE_ROUNDS} "
        f"interleaved rounds, each ~{SCRAPE_SECONDS * 1e3:.0f} ms of repeated scrapes.",
        f"Each server has {EVENTS_PER_SERVER} requests recorded. Ratio: over the same-series "
        "peer of the same size.",
        "",
        f"{'servers':>7} {'registry':<44} {'ms/scrape':>9} {'x peer':>7} {'bytes':>8}"
        f" {'samples':>7}",
    ]
    for count in SERVER_COUNTS:
        lines.extend(scrape_rows(count))
    return lines


# -- reporting ------------------------------------------------------------------------------


def header() -> list[str]:
    return [
        "bench/metrics_cost.py: the cost of the supervisor's metrics (issue 4, section 5)",
        f"date:      {utc_now()}",
        cpu_line(),
        f"python:    {sys.version.split()[0]} ({platform.python_implementation()}, "
        f"{platform.machine()}); prometheus_client {version('prometheus-client')}",
        f"platform:  {platform.platform()}",
        "",
    ]


def write_results(text: str) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(RESULTS, text)


def main() -> None:
    started = time.perf_counter()
    lines = header()
    print("\n".join(lines), flush=True)
    for table in (event_table, scrape_table):
        section = [*table(), ""]
        print("\n".join(section), flush=True)
        lines.extend(section)
    lines.append(f"(whole run: {time.perf_counter() - started:.1f} s)")
    print(lines[-1])
    write_results("\n".join(lines) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
