"""Scenario 8: a metrics scrape.

`GET /metrics` on a new connection to the fork-mode supervisors with 1, 100 and 1000 servers,
interleaved, timed client-side from connect to the end of the reply. Target: 100 servers
< 10 ms (median).
"""

import socket
import statistics
import time

from bench.harness.network import LOOPBACK
from bench.harness.pool import Pool, many_key
from bench.harness.report import below_ms, render, wrapped
from bench.harness.scenario import Context, Scenario, Section
from bench.harness.settings import Settings


def scrape(port: int) -> tuple[float, int]:
    started = time.perf_counter()
    with socket.create_connection((LOOPBACK, port), timeout=10) as connection:
        connection.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return time.perf_counter() - started, len(received)


def scrapes(
    pool: Pool, keys: list[str], config: Settings
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """`config.scrapes` rounds of one scrape per live supervisor: the times and the sizes."""
    live = [(key, contender) for key in keys if (contender := pool.get(key)) is not None]
    times: dict[str, list[float]] = {key: [] for key, _ in live}
    sizes: dict[str, int] = {}
    for _ in range(config.scrapes):
        for key, contender in live:
            if contender.metrics_port is None:
                continue
            elapsed, size = scrape(contender.metrics_port)
            times[key].append(elapsed)
            sizes[key] = size
    return times, sizes


def run(ctx: Context) -> Section:
    pool, config = ctx.pool, ctx.config
    keys = [many_key(size, "fork") for size in config.many_sizes]
    times, sizes = scrapes(pool, keys, config)
    rows = []
    for key in keys:
        got = times.get(key, [])
        if not got:
            rows.append([pool.label(key), "unavailable", "", "", ""])
            continue
        ordered = sorted(got)
        rows.append(
            [
                pool.label(key),
                f"{statistics.median(got) * 1e3:.2f}",
                f"{ordered[int(0.9 * (len(ordered) - 1))] * 1e3:.2f}",
                f"{ordered[-1] * 1e3:.2f}",
                f"{sizes.get(key, 0):,}",
            ]
        )
    lines = [
        *wrapped(
            f"GET /metrics on a new connection, {config.scrapes} times per supervisor, "
            "interleaved; client-side time from connect to the end of the reply."
        ),
        "",
        *render(["supervisor", "median ms", "p90 ms", "max ms", "bytes"], rows),
    ]
    hundred = many_key(100, "fork")
    value = statistics.median(times[hundred]) if times.get(hundred) else None
    return lines, [below_ms("a scrape with 100 servers (median)", value, 10, digits=2)]


SCENARIO = Scenario("Scenario 8: a metrics scrape", run)
