"""The throughput loads of scenarios 1-4 and 9, interleaved, and what their tables show.

Every cell (a contender at a concurrency) is loaded once per round, in the same order each
round (A B C A B C ... for several rounds), after a short unrecorded warm-up; a table shows the
medians over rounds and ratios of pairs measured in the same round, because the machine is
shared and noisy.
"""

import statistics
from collections.abc import Callable, Iterable, Sequence

from bench.harness.load import WRK_THREADS, Sample
from bench.harness.pool import Pool
from bench.harness.report import fmt, render, wrapped
from bench.harness.settings import Settings

Cell = tuple[str, int]  # (contender, connections); connections 0: the fork floor


def at_first(keys: Sequence[str], config: Settings) -> list[Cell]:
    """The cells of `keys` at the run's first concurrency."""
    return [(key, config.concurrencies[0]) for key in keys]


def unique_cells(cells: Iterable[Cell]) -> list[Cell]:
    """The cells in their first order, each once."""
    unique: list[Cell] = []
    for cell in cells:
        if cell not in unique:
            unique.append(cell)
    return unique


def run_matrix(pool: Pool, cells: Sequence[Cell], config: Settings) -> dict[Cell, list[Sample]]:
    """Every cell once per round, in the same order each round; a short unrecorded warm-up."""
    samples: dict[Cell, list[Sample]] = {cell: [] for cell in cells}
    for cell in cells:
        pool.get(cell[0])
    live = [cell for cell in cells if cell[0] not in pool.unavailable]
    print(f"  warm-up: {len(live)} loads of {config.warmup:g} s", flush=True)
    for key, connections in live:
        if key != "floor":
            pool.measure(key, connections, config.warmup)
    for round_index in range(config.rounds):
        print(
            f"  round {round_index + 1}/{config.rounds}: {len(live)} loads of {config.seconds:g} s",
            flush=True,
        )
        for cell in live:
            sample = pool.measure(cell[0], cell[1], config.seconds)
            if sample is not None:
                samples[cell].append(sample)
    return samples


def median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def paired(
    a: Sequence[Sample], b: Sequence[Sample], what: Callable[[Sample], float | None]
) -> float | None:
    """The median over rounds of a's value over b's, each pair from the same round."""
    ratios = []
    for one, other in zip(a, b, strict=False):
        x, y = what(one), what(other)
        if x is not None and y:
            ratios.append(x / y)
    return statistics.median(ratios) if ratios else None


def rps(sample: Sample) -> float:
    return sample.rps


def p99(sample: Sample) -> float | None:
    return sample.p99


def rps_ratio(samples: dict[Cell, list[Sample]], a: str, b: str, connections: int) -> float | None:
    """a's req/s over b's at `connections`, paired by round."""
    return paired(samples.get((a, connections), []), samples.get((b, connections), []), rps)


def load_row(pool: Pool, cell: Cell, got: Sequence[Sample], faults: bool) -> list[str]:
    """A measured contender's row, without its ratio."""
    key, connections = cell
    row = [
        pool.label(key),
        str(connections or "-"),
        fmt(median([s.rps for s in got]), ",.0f"),
        fmt(median([s.p50 for s in got]), ".2f", 1e3),
        fmt(median([s.p99 for s in got]), ".2f", 1e3),
        str(sum(s.errors for s in got)),
        str(sum(s.overflows for s in got)),
    ]
    if faults:
        row += [
            fmt(median([s.cpu for s in got]), ",.0f", 1e6),
            fmt(median([s.faults for s in got]), ",.0f"),
        ]
    return row


def load_table(
    pool: Pool,
    samples: dict[Cell, list[Sample]],
    cells: Sequence[Cell],
    reference: Cell | None,
    faults: bool = False,
) -> list[str]:
    headers = ["contender", "c", "req/s", "p50 ms", "p99 ms", "errors", "overflows"]
    if faults:
        headers += ["CPU us/req", "minflt/req"]
    headers += ["ratio"]
    rows = []
    for cell in cells:
        key, connections = cell
        got = samples.get(cell, [])
        if key in pool.unavailable or not got:
            reason = pool.unavailable.get(key, "no sample")
            rows.append([pool.label(key), str(connections or "-"), f"unavailable: {reason}"])
            continue
        ratio = paired(got, samples.get(reference, []), rps) if reference else None
        rows.append([*load_row(pool, cell, got, faults), fmt(ratio, ".2f")])
    # An unavailable row has fewer cells: pad it, its reason stays in the req/s column.
    width = len(headers)
    padded = [row + [""] * (width - len(row)) for row in rows]
    title = [f"ratio: over {pool.label(reference[0])}"] if reference else []
    return [*title, *render(headers, padded)]


def concurrency_table(
    pool: Pool, samples: dict[Cell, list[Sample]], cells: Sequence[Cell], reference: str
) -> list[str]:
    """One concurrency's cells, with CPU and faults, under a heading; ratios over `reference`."""
    connections = cells[0][1]
    return [
        "",
        f"concurrency {connections}:",
        *load_table(pool, samples, cells, (reference, connections), faults=True),
    ]


def notes_for_matrix(config: Settings) -> list[str]:
    return wrapped(
        f"Median of {config.rounds} interleaved round(s) of {config.seconds:g} s per contender "
        f"(wrk -t{WRK_THREADS} -cC, Connection: close: a new TCP connection per request). "
        "errors: wrk socket errors and non-2xx replies, all rounds. overflows: ListenOverflows "
        "(/proc/net/netstat, the whole network namespace; each load starts once the counter has "
        "been still for 0.3 s) during the contender's runs, all rounds (wrk's latency excludes "
        "connect time: an overflowing listen queue shows up here, not in p99). CPU and minor "
        "faults per request: the server's whole process tree (utime+stime+cutime+cstime and "
        "minflt+cminflt from /proc/PID/stat of the server and its live descendants; reaped "
        "children are in their parent's c* fields); the floor: its own and its children's. "
        "ratio: req/s over the reference's, the median of per-round ratios (each pair measured "
        "in the same round)."
    )
