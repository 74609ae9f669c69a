"""Prometheus metrics: counters kept as plain numbers, read at scrape time.

Recording an event is an attribute increment or a bisect into a bucket list, done in the loop's
thread only; nothing is shared with forked children and no exporter thread runs (a process that
forks must not have one). What a scrape reads of each server is a `Snapshot` (its numbers at one
instant), which `server_lines` turns into text; scrapes.py does that a server per step, and
reuses the text while the numbers stay the same. `SupervisorCollector` (the supervisor-wide
families) and `ProcessCollector` (the standard `process_*` ones) yield families that
exposition.py renders.

The families are plain objects shaped like prometheus-client's (name, documentation, type,
unit, samples), not prometheus-client's own: importing prometheus-client keeps 8.7 MB resident
in the supervisor, and every fork-per-request child pays for a bigger parent (page tables to
copy and tear down). The tests check the output with prometheus-client's parsers and promtool.
"""

import itertools
import os
import resource
import socket
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from supervisor import __version__
from supervisor.children import Child
from supervisor.exposition import Collector, label_value, number
from supervisor.loop import Loop
from supervisor.server import Server
from supervisor.stats import BUCKETS, OUTCOMES, ReloadStats, UpgradeStats

_LE = (*(repr(bound) for bound in BUCKETS), "+Inf")  # the `le` labels of the buckets
_TCP_INFO_SIZE = 104
_TCPI_UNACKED = 24  # offset of tcpi_unacked: the accept queue's length on a listening socket
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class Sample(NamedTuple):
    """One line of the exposition: `name{labels} value`."""

    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Metric:
    """A metric family: `type` is counter, gauge or histogram; samples carry the full names
    (`_total`, `_bucket`, ...)."""

    name: str
    documentation: str
    type: str
    unit: str = ""
    samples: list[Sample] = field(default_factory=list)


def counter(name: str, documentation: str, unit: str = "") -> Metric:
    return Metric(name, documentation, "counter", unit)


def gauge(name: str, documentation: str, unit: str = "") -> Metric:
    return Metric(name, documentation, "gauge", unit)


def single(family: Metric, value: float) -> Metric:
    """The family with one unlabelled sample."""
    _add(family, {}, value)
    return family


def listen_queue(sock: socket.socket) -> int | None:
    """The current accept-queue length of a listening TCP socket (Linux TCP_INFO), or None."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return None
    if sys.platform != "linux":  # the struct tcp_info layout read here is Linux's
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _TCPI_UNACKED + 4:
        return None
    (queued,) = struct.unpack_from("I", info, _TCPI_UNACKED)
    return int(queued)


class Watched(Protocol):
    """What the metrics read of the supervisor."""

    @property
    def servers(self) -> Mapping[str, Server]: ...
    @property
    def children(self) -> Iterable[Child[Server]]: ...
    @property
    def running(self) -> bool: ...
    @property
    def reload_stats(self) -> ReloadStats: ...
    @property
    def upgrades(self) -> UpgradeStats: ...
    @property
    def loop(self) -> Loop: ...


class SupervisorCollector:
    """The supervisor-wide families (reloads, upgrades, faults, version), read when Prometheus
    scrapes. The per-server ones are `ServerFamilies`: a scrape renders them server by server."""

    def __init__(self, supervisor: Watched) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        supervisor = self._supervisor
        yield from _reload_metrics(supervisor.reload_stats)
        upgrades = counter(
            "supervisor_upgrades",
            "Upgrades of the supervisor's own code (supervisor upgrade, SIGUSR2), by result; "
            "carried over each one.",
        )
        _add(upgrades, {"result": "ok"}, supervisor.upgrades.ok)
        _add(upgrades, {"result": "failed"}, supervisor.upgrades.failed)
        yield upgrades
        yield single(
            counter(
                "supervisor_internal_errors",
                "Unexpected exceptions the supervisor caught and went on after (each is a bug, "
                "logged with its traceback).",
            ),
            supervisor.loop.faults,
        )
        info = gauge("supervisor_build_info", "The supervisor's version, as a label.")
        _add(info, {"version": __version__}, 1)
        yield info


# -- the per-server families: one snapshot of a server's numbers, rendered to text -----------

# The families with one sample per server, in the order of `Snapshot`'s first fields.
_ONE_SAMPLE = (
    counter(
        "supervisor_requests",
        "Connections accepted or datagrams received (not those the guards rejected).",
    ),
    gauge(
        "supervisor_children",
        "Live children (fork mode), workers (prefork) or busy threads (thread mode).",
    ),
    gauge("supervisor_max_children", "The configured max_children."),
    gauge("supervisor_saturated", "1 while the server is at max_children."),
    counter("supervisor_saturated_seconds", "Time spent at max_children.", "seconds"),
    counter(
        "supervisor_handler_errors", "Requests whose handler raised, or whose child failed or died."
    ),
    gauge(
        "supervisor_server_up",
        "1 while the server accepts requests (0 while stopping, or while accept() fails).",
    ),
)
# Every per-server family, in the order a scrape shows them: `server_lines` renders a server's
# samples of each, in this order.
SERVER_FAMILIES: tuple[Metric, ...] = (
    *_ONE_SAMPLE,
    counter(
        "supervisor_child_exits",
        "Children reaped, by outcome: ok, error (non-zero exit), signal, killed (by us).",
    ),
    counter(
        "supervisor_child_cpu_seconds",
        "CPU time of reaped children (wait4 resource usage).",
        "seconds",
    ),
    gauge("supervisor_listen_queue", "Connections waiting in a TCP listener's accept queue."),
    counter(
        "supervisor_rejected",
        "Clients turned away before being served, by reason: denied (allow/deny), per_source "
        "(max_per_source), source_rate, rate, verify_request (a hosted server's own).",
    ),
    Metric(
        "supervisor_request_duration_seconds",
        "Request duration: fork to reap in fork mode, handler start to end otherwise.",
        "histogram",
        "seconds",
    ),
    gauge(
        "supervisor_children_memory_bytes",
        "Resident memory of live children (/proc, at scrape time).",
        "bytes",
    ),
)


class Snapshot(NamedTuple):
    """A server's numbers at one instant: read in one go, so they agree with each other (a
    request counted in `requests` and finished is in `durations`)."""

    requests: int
    children: int
    max_children: int
    saturated: int
    saturated_seconds: float
    errors: int
    up: int
    exits: tuple[int, ...]  # in OUTCOMES' order
    cpu: tuple[float, float]  # user, system
    queued: int | None  # None: not a TCP listener
    rejected: tuple[tuple[str, int], ...]
    buckets: tuple[int, ...]  # per bucket, not cumulative; the last is +Inf
    duration_sum: float
    memory: int


def snapshot(server: Server, running: bool, memory: int) -> Snapshot:
    """`server`'s numbers now; `memory` is its children's resident bytes."""
    stats, limited = server.stats, server.mode.value != "inline"
    exits = stats.exits
    return Snapshot(
        stats.requests,
        server.active,
        server.config.max_children if limited else 1,
        1 if stats.saturated_since is not None else 0,
        stats.saturated_total(),
        stats.errors,
        1 if running and server.up else 0,
        tuple(exits[outcome] for outcome in OUTCOMES),
        (stats.cpu_user, stats.cpu_system),
        listen_queue(server.listener.socket),
        tuple(stats.rejected.items()),
        tuple(stats.durations.counts),
        stats.durations.total,
        memory,
    )


def server_lines(name: str, numbers: Snapshot) -> tuple[bytes, ...]:
    """A server's samples, one piece of text per family of SERVER_FAMILIES (the same in both
    formats: no per-server family has `_created` samples)."""
    label = f'server="{label_value(name)}"'
    simple = tuple(
        f"{family.name}{'_total' if family.type == 'counter' else ''}{{{label}}} "
        f"{number(value)}\n".encode()
        for family, value in zip(_ONE_SAMPLE, numbers[:7], strict=True)
    )
    exits = "".join(
        f'supervisor_child_exits_total{{{label},outcome="{outcome}"}} {number(count)}\n'
        for outcome, count in zip(OUTCOMES, numbers.exits, strict=True)
    )
    cpu = "".join(
        f'supervisor_child_cpu_seconds_total{{{label},mode="{mode}"}} {number(seconds)}\n'
        for mode, seconds in zip(("user", "system"), numbers.cpu, strict=True)
    )
    queue = (
        ""
        if numbers.queued is None
        else f"supervisor_listen_queue{{{label}}} {number(numbers.queued)}\n"
    )
    rejected = "".join(
        f'supervisor_rejected_total{{{label},reason="{label_value(reason)}"}} {number(count)}\n'
        for reason, count in numbers.rejected
    )
    name_ = "supervisor_request_duration_seconds"
    cumulative = itertools.accumulate(numbers.buckets)
    histogram = "".join(
        f'{name_}_bucket{{{label},le="{le}"}} {number(count)}\n'
        for le, count in zip(_LE, cumulative, strict=True)
    )
    histogram += f"{name_}_count{{{label}}} {number(sum(numbers.buckets))}\n"
    histogram += f"{name_}_sum{{{label}}} {number(numbers.duration_sum)}\n"
    memory = f"supervisor_children_memory_bytes{{{label}}} {number(numbers.memory)}\n"
    rest = (exits, cpu, queue, rejected, histogram, memory)
    return simple + tuple(text.encode() for text in rest)


def children_memory(children: Iterable[Child[Server]]) -> Iterator[tuple[str, int]]:
    """(server name, resident bytes) of each live child (a step each: one /proc read)."""
    for child in children:
        if (memory := _statm(child.pid)) is not None:  # None: exited since, or out of fds
            yield child.owner.name, memory[1]


def _add(family: Metric, labels: dict[str, str], value: float, suffix: str = "") -> None:
    if not suffix and family.type == "counter":
        suffix = "_total"
    family.samples.append(Sample(family.name + suffix, labels, value))


def _statm(pid: int | str) -> tuple[int, int] | None:
    """(virtual, resident) memory in bytes of a process, from /proc/PID/statm."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            size, resident = file.read().split()[:2]
    except (OSError, ValueError):
        return None
    return int(size) * _PAGE_SIZE, int(resident) * _PAGE_SIZE


def _reload_metrics(stats: ReloadStats) -> Iterator[Metric]:
    reloads = counter("supervisor_reloads", "Configuration reloads, by result.")
    _add(reloads, {"result": "success"}, stats.successes)
    _add(reloads, {"result": "failure"}, stats.failures)
    yield reloads
    yield single(
        gauge(
            "supervisor_config_last_reload_successful",
            "1 if the last reload (or the start) succeeded.",
        ),
        1 if stats.last_ok else 0,
    )
    yield single(
        gauge(
            "supervisor_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (Unix time).",
            "seconds",
        ),
        stats.last_success,
    )


class ProcessCollector:
    """The standard `process_*` metrics of the supervisor itself (Linux /proc)."""

    def __init__(self) -> None:
        self._started = _start_time()

    def collect(self) -> Iterator[Metric]:
        times = os.times()
        yield single(
            counter(
                "process_cpu_seconds", "User and system CPU time spent, in seconds.", "seconds"
            ),
            times.user + times.system,
        )
        if (memory := _statm("self")) is not None:  # (as prometheus-client: no sample if not)
            virtual, resident = memory
            yield single(
                gauge("process_virtual_memory_bytes", "Virtual memory size.", "bytes"), virtual
            )
            yield single(
                gauge("process_resident_memory_bytes", "Resident memory size.", "bytes"), resident
            )
        if self._started is not None:
            yield single(
                gauge("process_start_time_seconds", "Start time (Unix time).", "seconds"),
                self._started,
            )
        try:
            open_fds = _open_fds()
        except OSError:
            pass  # out of file descriptors itself: no sample rather than a wrong one
        else:
            yield single(gauge("process_open_fds", "Open file descriptors."), open_fds)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        yield single(gauge("process_max_fds", "The limit on open file descriptors."), soft)


def _open_fds() -> int:
    """How many file descriptors are open: the size Linux 6.2+ gives /proc/self/fd (20 us),
    else its entries counted (0.5 ms with 1,000 servers' sockets)."""
    count = os.stat("/proc/self/fd").st_size
    return count if count > 0 else len(os.listdir("/proc/self/fd"))


def _start_time() -> float | None:
    """When this process started (Unix time): boot time plus its start in clock ticks."""
    try:
        with open("/proc/self/stat", "rb") as file:
            ticks = int(file.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as file:
            boot = next(int(line.split()[1]) for line in file if line.startswith(b"btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def collectors_for(supervisor: Watched) -> list[Collector]:
    """The endpoint's families besides the per-server ones: the supervisor's, and its own
    process_* metrics."""
    return [SupervisorCollector(supervisor), ProcessCollector()]
