"""Scenario 1: fork per request, against the standard library, the C ceiling and the floor.

At each concurrency: the supervisor in fork mode, ForkingTCPServer (and with backlog 1024), the
C accept+fork server, xinetd and tcpserver, and the CPython fork floor; CPU and faults per
request. Targets: fork >= 1.3x ForkingTCPServer's req/s, p99 <= 0.8x its p99, >= 0.8x the fork
floor. The sizes of the floor's process, the supervisor and its fork server are printed first.
"""

import statistics

import psutil

from bench.harness.load import Sample
from bench.harness.pool import Pool
from bench.harness.report import Target, at_least, at_most, info, wrapped
from bench.harness.rounds import Cell, concurrency_table, p99, paired, rps, rps_ratio
from bench.harness.scenario import Context, Scenario, Section
from bench.harness.settings import Settings
from bench.harness.supervisors import is_fork_server

KEYS = ("sv-fork", "std-fork", "std-fork-q", "c-fork", "xinetd", "tcpserver")
INFORMATIVE = (("std-fork-q", "ForkingTCPServer backlog 1024"), ("c-fork", "C accept+fork"))


def cells(config: Settings) -> list[Cell]:
    return [(key, connections) for connections in config.concurrencies for key in KEYS] + [
        ("floor", 0)
    ]


def sizes(pool: Pool) -> list[str]:
    """The fork floor's size against the fork-mode supervisor's and its fork server's."""
    ours_pid = pool.running["sv-fork"].pid if "sv-fork" in pool.running else None
    if not pool.floor_rss or ours_pid is None:
        return []
    supervisor = psutil.Process(ours_pid)
    forking = [
        process.memory_info().rss / 2**20
        for process in supervisor.children()
        if is_fork_server(process)
    ]
    return wrapped(
        f"Sizes: the fork floor's process {statistics.median(pool.floor_rss) / 2**20:.1f} MiB RSS, "
        f"the fork-mode supervisor's {supervisor.memory_info().rss / 2**20:.1f} MiB (they "
        "should be close: the floor is what forking from the supervisor would allow); "
        + (
            f"its fork server's {forking[0]:.1f} MiB (what its children are forked from)."
            if forking
            else "no fork server running."
        )
    )


def targets(samples: dict[Cell, list[Sample]], connections: int) -> list[Target]:
    """Fork mode against ForkingTCPServer and the floor; the informative ratios after."""
    ours = samples.get(("sv-fork", connections), [])
    stdlib = samples.get(("std-fork", connections), [])
    floor = samples.get(("floor", 0), [])
    what = f"c={connections}: fork / "
    found = [
        at_least(what + "ForkingTCPServer, req/s", paired(ours, stdlib, rps), 1.3),
        at_most(what + "ForkingTCPServer, p99", paired(ours, stdlib, p99), 0.8),
        at_least(what + "CPython fork floor", paired(ours, floor, rps), 0.8),
    ]
    for key, name in INFORMATIVE:
        value = rps_ratio(samples, "sv-fork", key, connections)
        found.append(info(what + f"{name}, req/s", value))
    return found


def run(ctx: Context) -> Section:
    lines = sizes(ctx.pool)
    found: list[Target] = []
    for connections in ctx.config.concurrencies:
        table = [(key, connections) for key in KEYS] + [("floor", 0)]
        lines += concurrency_table(ctx.pool, ctx.samples, table, "std-fork")
        found += targets(ctx.samples, connections)
    return lines, found


SCENARIO = Scenario(
    "Scenario 1: fork per request, against the standard library, the C ceiling and the floor",
    run,
    cells,
)
