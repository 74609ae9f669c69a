"""Scenario 7: memory.

RSS and USS (psutil memory_full_info) of the server process, and of a live child (a request
held open, the child waiting in recv; in fork mode also the fork server's) or of the prefork
workers. Reported, no target.
"""

import socket
import statistics
import time

import psutil

from bench.harness.contenders import Contender
from bench.harness.network import LOOPBACK
from bench.harness.pool import many_key
from bench.harness.report import render, wrapped
from bench.harness.scenario import Context, Scenario, Section
from bench.harness.supervisors import is_fork_server

MIB = 1 << 20


def held_child(contender: Contender, timeout: float = 3.0) -> tuple[socket.socket, int] | None:
    """Open a connection without sending the request: the child that serves it waits in recv.
    Returns the connection and the new child's pid."""
    parent = psutil.Process(contender.pid)
    # (recursive: the supervisor's fork children are its fork server's)
    known = {child.pid for child in parent.children(recursive=True)}
    connection = socket.create_connection((LOOPBACK, contender.port), timeout=2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [child.pid for child in parent.children(recursive=True) if child.pid not in known]
        if new:
            time.sleep(0.1)  # past the fork, in the handler's recv
            return connection, new[0]
        time.sleep(0.005)
    connection.close()
    return None


def memory_of(pid: int) -> tuple[int, int]:
    info = psutil.Process(pid).memory_full_info()
    return int(info.rss), int(info.uss)


def prefork_workers(contender: Contender) -> str:
    """The prefork workers' sizes: their median USS, the first one's RSS."""
    workers = psutil.Process(contender.pid).children()
    sizes = sorted(memory_of(worker.pid)[1] for worker in workers)
    if not sizes:
        return "-"
    return (
        f"{len(sizes)} workers: USS {statistics.median(sizes) / MIB:.2f} MiB each "
        f"(median), RSS {memory_of(workers[0].pid)[0] / MIB:.1f} MiB"
    )


def live_child(contender: Contender) -> str:
    """A child's size (median of 3 held requests), then each fork server's."""
    fork_servers = [p for p in psutil.Process(contender.pid).children() if is_fork_server(p)]
    samples = []
    for _ in range(3):
        held = held_child(contender)
        if held is None:
            continue
        connection, pid = held
        try:
            samples.append(memory_of(pid))
        finally:
            connection.close()
        time.sleep(0.05)
    child = "-"
    if samples:
        child_rss = statistics.median(sample[0] for sample in samples)
        child_uss = statistics.median(sample[1] for sample in samples)
        child = f"live child: USS {child_uss / MIB:.2f} MiB, RSS {child_rss / MIB:.1f} MiB"
    for fork_server in fork_servers:
        server_rss, server_uss = memory_of(fork_server.pid)
        child += f"; fork server: USS {server_uss / MIB:.1f} MiB, RSS {server_rss / MIB:.1f} MiB"
    return child


def children_of(key: str, contender: Contender) -> str:
    if key == "sv-prefork":
        return prefork_workers(contender)
    if "fork" in key:
        return live_child(contender)
    return "-"


def run(ctx: Context) -> Section:
    pool, config = ctx.pool, ctx.config
    rows = []
    keys = ["sv-fork", "std-fork", many_key(config.many_sizes[-1], "fork"), "sv-prefork"]
    keys += ["sv-thread", "sv-inline"]
    for key in keys:
        contender = pool.get(key)
        if contender is None:
            rows.append([pool.label(key), f"unavailable: {pool.unavailable.get(key, '')}"])
            continue
        rss, uss = memory_of(contender.pid)
        child = children_of(key, contender)
        rows.append([pool.label(key), f"{rss / MIB:.1f}", f"{uss / MIB:.1f}", child])
    padded = [row + [""] * (4 - len(row)) for row in rows]
    lines = [
        *wrapped(
            "The server process's RSS and USS (psutil memory_full_info), and a child's: a "
            "request held open (connected, request not sent) so that its child waits in recv; "
            "median of 3. USS is the memory only that process has (what a child really costs; a "
            "parent's pages shared with live children or workers are not in its USS); a child's "
            "RSS counts the pages it shares copy-on-write with the parent."
        ),
        "",
        *render(["contender", "RSS MiB", "USS MiB", "children"], padded),
    ]
    return lines, []


SCENARIO = Scenario("Scenario 7: memory", run)
