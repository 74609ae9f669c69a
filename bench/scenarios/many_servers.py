"""Scenario 4: many servers configured, load on one; idle wake-ups.

Supervisors with 1, 100 and 1000 servers (fork and inline mode), load on one server, the others
idle; then the fork-mode supervisors left idle over the same window, their context switches
counted (psutil). Targets: >= 0.9x the single server's req/s; 0 wake-ups with 1000 servers.
"""

import time

import psutil

from bench.harness.pool import Pool, many_key
from bench.harness.report import Target, at_least, render, wrapped
from bench.harness.rounds import Cell, load_table, paired, rps
from bench.harness.scenario import Context, Scenario, Section
from bench.harness.settings import Settings

MODES = ("fork", "inline")


def cells(config: Settings) -> list[Cell]:
    connections = config.concurrencies[0]
    return [(many_key(size, mode), connections) for mode in MODES for size in config.many_sizes]


def run(ctx: Context) -> Section:
    pool, samples, config = ctx.pool, ctx.samples, ctx.config
    connections = config.concurrencies[0]
    lines: list[str] = ["", f"Load on one server (concurrency {connections}), the others idle:"]
    targets = []
    for mode in MODES:
        table = [(many_key(size, mode), connections) for size in config.many_sizes]
        lines += load_table(pool, samples, table, table[0], faults=True)
        single = samples.get(table[0], [])
        for size, cell in zip(config.many_sizes[1:], table[1:], strict=True):
            value = paired(samples.get(cell, []), single, rps)
            targets.append(at_least(f"{mode}: {size} servers / 1 server, req/s", value, 0.9))
        lines.append("")
    idle_lines, idle_targets = idle_wakeups(pool, config)
    return lines + idle_lines, targets + idle_targets


def switches_of(pid: int) -> tuple[int, int]:
    switches = psutil.Process(pid).num_ctx_switches()
    return switches.voluntary, switches.involuntary


def idle_wakeups(pool: Pool, config: Settings) -> Section:
    """Context switches of idle supervisors over the same window, side by side."""
    keys = [many_key(size, "fork") for size in config.many_sizes]
    live = [(key, pool.get(key)) for key in keys]
    before: dict[str, tuple[int, int]] = {}
    time.sleep(1.0)  # the last load's children reaped, the last scrape answered
    for key, contender in live:
        if contender is not None:
            before[key] = switches_of(contender.pid)
    time.sleep(config.idle_seconds)
    rows = []
    counts: dict[str, int] = {}
    for key, contender in live:
        if contender is None or key not in before:
            rows.append([pool.label(key), "unavailable", ""])
            continue
        voluntary, involuntary = switches_of(contender.pid)
        counts[key] = voluntary - before[key][0]
        rows.append([pool.label(key), str(counts[key]), str(involuntary - before[key][1])])
    lines = [
        *wrapped(
            f"Idle: context switches of the supervisor process over {config.idle_seconds:g} s, "
            "all measured over the same window (psutil num_ctx_switches; every wake-up from a "
            "sleep is a voluntary switch):"
        ),
        *render(["contender", "voluntary", "involuntary"], rows),
    ]
    value = counts.get(keys[-1])
    target = Target(
        f"idle {config.many_sizes[-1]} servers, {config.idle_seconds:g} s: wake-ups",
        value,
        "0",
        None if value is None else value == 0,
        "-" if value is None else str(value),
    )
    return lines, [target]


SCENARIO = Scenario("Scenario 4: many servers configured, load on one; idle wake-ups", run, cells)
