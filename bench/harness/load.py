"""Load generation and what is measured around it.

A load is wrk against one contender, bounded in time (wrk -d, and a timeout on the wrk process)
and in connections (wrk -c). Around it: the network namespace's ListenOverflows, and the CPU
time and minor faults of the server's whole process tree. The fork floor is a program run per
round (bench/fork_floor.py), its forks counted like requests.
"""

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

from bench.harness.network import LOOPBACK
from bench.harness.places import BENCH, PYTHON
from bench.harness.processes import Processes, wait_quietly

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WRK_THREADS = 2  # at most: wrk -t is min(this, connections)
UNITS: Mapping[str, float] = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True)
class Sample:
    """One bounded load on one contender (or one run of the fork floor)."""

    requests: int
    rps: float
    p50: float | None  # seconds
    p99: float | None
    errors: int  # wrk's socket errors (connect, read, write, timeout) and non-2xx replies
    overflows: int  # ListenOverflows during the run
    cpu: float | None  # CPU seconds per request of the server's process tree
    faults: float | None  # minor page faults per request


# -- around a load --------------------------------------------------------------------------


def listen_overflows() -> int:
    """TcpExt ListenOverflows of this network namespace (/proc/net/netstat)."""
    with open("/proc/net/netstat", encoding="ascii") as netstat:
        rows = [line.split() for line in netstat if line.startswith("TcpExt:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["ListenOverflows"])


def settle_overflows(quiet: float = 0.3, limit: float = 3.0) -> None:
    """Wait (at most `limit` s) until ListenOverflows has not moved for `quiet` s: the counter is
    the namespace's, and a listen queue that overflowed in one load keeps counting for a moment
    after it (late ACKs), which would land in the next contender's row."""
    deadline = time.monotonic() + limit
    last, since = listen_overflows(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = listen_overflows()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def tree_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (utime+stime+cutime+cstime) and minor faults (minflt+cminflt) of a process
    and of all its live descendants: reaped children are in their parent's c* fields, live ones
    are counted themselves, so a difference of two readings counts each child once."""
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0, 0
    cpu, faults = 0.0, 0
    for proc in procs:
        try:
            with open(f"/proc/{proc.pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        faults += int(fields[7]) + int(fields[8])
        cpu += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
    return cpu, faults


# -- wrk ------------------------------------------------------------------------------------


def parse_wrk(text: str) -> tuple[int, float, float | None, float | None, int]:
    requests = re.search(r"(\d+) requests in", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    percentiles: dict[str, float] = {}
    for share, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        percentiles[share] = float(value) * UNITS[unit]
    errors = 0
    if socket_errors := re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(count) for count in socket_errors.groups())
    if non_2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors += int(non_2xx.group(1))
    return (
        int(requests.group(1)) if requests else 0,
        float(rps.group(1)) if rps else 0.0,
        percentiles.get("50") if requests and int(requests.group(1)) else None,
        percentiles.get("99") if requests and int(requests.group(1)) else None,
        errors,
    )


def wrk_argv(port: int, connections: int, seconds: float, timeout: float = 5.0) -> list[str]:
    return [
        "wrk",
        f"-t{min(WRK_THREADS, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout:g}s",
        "--latency",
        "-H",
        "Connection: close",
        f"http://{LOOPBACK}:{port}/",
    ]


def run_wrk(procs: Processes, port: int, connections: int, seconds: float) -> str:
    proc = procs.start("wrk", wrk_argv(port, connections, seconds))
    wait_quietly(proc, seconds + 20)
    procs.stop(proc)
    return "\n".join(proc.out)


def load(procs: Processes, server_pid: int, port: int, connections: int, seconds: float) -> Sample:
    """wrk on `port`, with the server's CPU, faults and the ListenOverflows around it."""
    settle_overflows()
    overflows = listen_overflows()
    cpu, faults = tree_usage(server_pid)
    text = run_wrk(procs, port, connections, seconds)
    cpu_after, faults_after = tree_usage(server_pid)
    overflows = listen_overflows() - overflows
    requests, rps, p50, p99, errors = parse_wrk(text)
    return Sample(
        requests,
        rps,
        p50,
        p99,
        errors,
        overflows,
        (cpu_after - cpu) / requests if requests else None,
        (faults_after - faults) / requests if requests else None,
    )


# -- the fork floor -------------------------------------------------------------------------


def fork_floor(procs: Processes, seconds: float) -> tuple[Sample, int]:
    """One run of bench/fork_floor.py: its forks as a sample, and its resident size."""
    proc = procs.start("fork floor", [PYTHON, str(BENCH / "fork_floor.py"), f"{seconds:g}"])
    wait_quietly(proc, seconds + 30)
    procs.stop(proc)
    result = json.loads(proc.out[-1]) if proc.out else {"forks": 0}
    rss = int(result.get("rss", 0))
    forks = int(result["forks"])
    if not forks:
        return Sample(0, 0.0, None, None, 1, 0, None, None), rss
    sample = Sample(
        forks,
        forks / float(result["seconds"]),
        None,
        None,
        0,
        0,
        float(result["cpu"]) / forks,
        int(result["minflt"]) / forks,
    )
    return sample, rss
