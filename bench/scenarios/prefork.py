"""Scenario 2: prefork, against the C inline server and tcpserver.

At the first concurrency: the supervisor in prefork mode (`workers` = the CPUs, its default),
the C accept loop, tcpserver and the supervisor in fork mode. Targets: >= 0.8x the C accept
loop, >= 10x tcpserver.
"""

from bench.harness.report import at_least
from bench.harness.rounds import Cell, at_first, concurrency_table, rps_ratio
from bench.harness.scenario import Context, Scenario, Section
from bench.harness.settings import Settings

KEYS = ("sv-prefork", "c-inline", "tcpserver", "sv-fork")


def cells(config: Settings) -> list[Cell]:
    return at_first(KEYS, config)


def run(ctx: Context) -> Section:
    samples, connections = ctx.samples, ctx.config.concurrencies[0]
    lines = concurrency_table(ctx.pool, samples, cells(ctx.config), "c-inline")
    targets = [
        at_least(
            "prefork / C inline server, req/s",
            rps_ratio(samples, "sv-prefork", "c-inline", connections),
            0.8,
        ),
        at_least(
            "prefork / tcpserver, req/s",
            rps_ratio(samples, "sv-prefork", "tcpserver", connections),
            10,
        ),
    ]
    return lines, targets


SCENARIO = Scenario("Scenario 2: prefork, against the C inline server and tcpserver", run, cells)
