"""Scenario 3: thread and inline modes, against ThreadingTCPServer and TCPServer.

At the first concurrency: the supervisor in thread mode against ThreadingTCPServer (and with
backlog 1024), in inline mode against TCPServer, and the C accept loop. Targets: thread >= 1x
ThreadingTCPServer's req/s, inline >= 0.9x TCPServer's.
"""

from bench.harness.report import Target, at_least, info
from bench.harness.rounds import Cell, at_first, concurrency_table, rps_ratio
from bench.harness.scenario import Context, Scenario, Section
from bench.harness.settings import Settings

KEYS = ("sv-thread", "std-thread", "std-thread-q", "sv-inline", "std-plain", "c-inline")


def cells(config: Settings) -> list[Cell]:
    return at_first(KEYS, config)


def targets(ctx: Context) -> list[Target]:
    samples, connections = ctx.samples, ctx.config.concurrencies[0]

    def ratio(a: str, b: str) -> float | None:
        return rps_ratio(samples, a, b, connections)

    return [
        at_least("thread / ThreadingTCPServer, req/s", ratio("sv-thread", "std-thread"), 1.0),
        at_least("inline / TCPServer, req/s", ratio("sv-inline", "std-plain"), 0.9),
        info("thread / ThreadingTCPServer backlog 1024", ratio("sv-thread", "std-thread-q")),
    ]


def run(ctx: Context) -> Section:
    lines = concurrency_table(ctx.pool, ctx.samples, cells(ctx.config), "std-thread")
    return lines, targets(ctx)


SCENARIO = Scenario(
    "Scenario 3: thread and inline modes, against ThreadingTCPServer and TCPServer", run, cells
)
