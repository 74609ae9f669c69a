"""Round trips timed one by one: bench/c/rtt.c, its records, and what is made of them.

wrk reports a run's latency distribution, not when each request happened; a pause that lasts
a fraction of a second (an upgrade, a scrape rendered in one piece) needs each round trip's
begin and end, on the clock the harness reads (CLOCK_MONOTONIC: time.perf_counter on Linux), to
be told apart from the rest of the run. rtt runs a bounded number of client threads, each
starting a round trip (a new connection, the exchange, the reply read to the server's close) at
most every INTERVAL, and writes its records to a file when it is stopped (SIGTERM): nothing is
written meanwhile. `on_schedule` makes of one client's round trips what clients arriving on a
schedule would have seen.
"""

import contextlib
import errno
import math
import os
import signal
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness.processes import Proc, Processes

RECORD = struct.Struct("=qqii")  # begin ns, end ns, target, error: rtt.c's struct record


@dataclass(frozen=True, slots=True)
class RoundTrip:
    begin: float  # seconds, time.perf_counter's clock
    end: float
    target: int  # the index of its port in the command line
    error: int  # 0, an errno, -1 another reply, -2 a timeout (10 s)

    @property
    def seconds(self) -> float:
        return self.end - self.begin


def error_name(error: int) -> str:
    if error == -1:
        return "unexpected reply"
    if error == -2:
        return "timeout"
    return errno.errorcode.get(error, str(error))


def start_clients(
    procs: Processes,
    rtt: Path,
    out: Path,
    ports: Sequence[int],
    *,
    clients: int,
    interval: float,
) -> Proc | None:
    """`clients` threads on each port; None if rtt did not start."""
    argv = [str(rtt), str(out), str(round(interval * 1e6)), *(f"{p}:{clients}" for p in ports)]
    proc = procs.start("rtt", argv)
    if proc.wait_line(lambda line: line == "started", 10) is None:
        procs.stop(proc)
        return None
    return proc


def stop_clients(procs: Processes, proc: Proc, out: Path) -> list[RoundTrip]:
    """SIGTERM: each thread finishes its round trip (10 s at most), the records are written."""
    if proc.popen.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(30)
    procs.stop(proc)
    try:
        data = out.read_bytes()
    except OSError:
        return []
    return [
        RoundTrip(begin / 1e9, end / 1e9, target, error)
        for begin, end, target, error in RECORD.iter_unpack(
            data[: len(data) - len(data) % RECORD.size]
        )
    ]


def percentile(ordered: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile of sorted values (share 0.99: p99)."""
    if not ordered:
        return None
    rank = min(len(ordered), max(1, math.ceil(share * len(ordered))))
    return ordered[rank - 1]


def on_schedule(durations: Sequence[float], interval: float) -> list[float]:
    """The round trips as clients arriving every `interval` would have seen them.

    rtt's clients wait for each round trip before the next (a closed loop): a pause of the server
    shows up as one long round trip, however many clients it would have kept waiting. Each round
    trip of T > `interval` also stands for those an open schedule would have begun during it,
    each waiting for the rest of it: T - interval, T - 2 * interval, ... down to `interval`
    (HdrHistogram's correction for coordinated omission). Sorted.
    """
    values: list[float] = []
    for duration in durations:
        values.append(duration)
        missed = duration - interval
        while missed >= interval:
            values.append(missed)
            missed -= interval
    return sorted(values)
