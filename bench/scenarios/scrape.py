"""Scenario 8: a metrics scrape: what it costs another server, and how long it takes (issue 19).

The endpoint is served from the supervisor's loop, so while a scrape is rendered no other
server of that supervisor is served. Three supervisors, with 1, 100 and 1000 servers, every
server inline (`bench.handler:Handler`), so that a round trip to one of them is the loop's
latency and nothing else (no fork, no thread hand-off); the stall measured is the loop's, which
every mode shares.

The probe: `bench/c/rtt.c` with one client thread on the server `bench` (not the metrics
endpoint) of the supervisor measured, a round trip (new connection, the bench's exchange, the
reply read to the server's close) begun every PROBE_INTERVAL, one at a time (the next at once
when one took longer), each timed on its own. A round trip that meets a rendering waits for the
rest of it. Being one at a time, the probe sees a stall as one long round trip where clients
arriving on a schedule would have queued many: p50 and p99 are of the round trips on that
schedule (roundtrips.on_schedule: a round trip of T also stands for those due during it, waiting
T - 1 ms, T - 2 ms, ...), "timed" ones of the round trips as measured. Per round and per
supervisor the probe runs through two windows of `--seconds`, unscraped (the harness sleeps) and
scraped (the harness scrapes /metrics back to back on new connections, cycling through the four
variants below, checking only the status line between scrapes so that the next begins at once),
in alternating order from round to round, the supervisors in turn; each window counts the round
trips that began and ended in it. Target: at 1000 servers, p99 scraped - p99 unscraped (median
of the rounds' pairs) < 1 ms.

Then the scrape itself (bench/harness/scrapes.py): `config.scrapes` rounds of one scrape per
supervisor and variant, interleaved, nothing else running: text and OpenMetrics, each without
and with `Accept-Encoding: gzip`, timed client-side from connect to the last byte, then decoded
and checked (a gzip body through `gzip.decompress`; the exposition must end as its format ends
and list every server). Targets (median): 100 servers <= 5 ms, 1000 servers <= 40 ms, each
variant; gzip asked is answered with `Content-Encoding: gzip`; every exposition valid.
"""

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness.contenders import Contender, Unavailable
from bench.harness.network import wait_serving
from bench.harness.processes import Processes
from bench.harness.report import Target, fmt, render, within_ms, wrapped
from bench.harness.rounds import median
from bench.harness.roundtrips import (
    RoundTrip,
    on_schedule,
    percentile,
    start_clients,
    stop_clients,
)
from bench.harness.scenario import Context, Scenario, Section
from bench.harness.scrapes import VARIANTS, Scrape, Variant, fetch, scrape
from bench.harness.settings import Settings
from bench.harness.supervisors import SupervisorSpec, start_supervisor

PROBE_INTERVAL = 0.001  # seconds: the probe begins a round trip at most this often
SETTLE = 0.2  # seconds before each window: the probe running, the last scrape's close done
RISE_LIMIT = 1e-3  # seconds: the p99 rise allowed at the largest size
MAX_NOTES = 6  # lines naming the kinds of invalid exposition
SCRAPE_LIMITS: Mapping[int, float] = {100: 5.0, 1000: 40.0}  # servers -> ms, each variant


@dataclass(frozen=True)
class Window:
    """The probe during one window: its round trips, and the scrapes made meanwhile."""

    trips: int
    p50: float | None  # seconds, on schedule (roundtrips.on_schedule)
    p99: float | None
    timed_p50: float | None  # seconds, the round trips as timed
    timed_p99: float | None
    worst: float | None
    errors: int  # failed round trips
    scrapes: int
    failed: int  # scrapes whose reply was not `200 OK`


Windows = dict[int, dict[bool, list[Window]]]  # servers -> scraped -> one window per round
Timed = dict[int, dict[Variant, list[Scrape]]]  # servers -> variant -> scrapes


def label(servers: int) -> str:
    return f"{servers} server" + ("" if servers == 1 else "s")


def start_all(
    procs: Processes, workdir: Path, sizes: Sequence[int]
) -> tuple[dict[int, Contender], list[str]]:
    """The supervisors that started, and a line for each that did not."""
    started: dict[int, Contender] = {}
    lines: list[str] = []
    for size in sizes:
        spec = SupervisorSpec("inline", idle=size - 1, idle_mode="inline")
        try:
            contender = start_supervisor(procs, workdir, f"scrape-{size}", label(size), spec)
        except Unavailable as exc:
            lines.append(f"{label(size)}: unavailable ({exc})")
            continue
        if contender.metrics_port is None or not wait_serving(contender.port):
            lines.append(f"{label(size)}: unavailable (no metrics port, or `bench` not serving)")
            if contender.proc is not None:
                procs.stop(contender.proc)
            continue
        started[size] = contender
    return started, lines


def scrape_back_to_back(port: int, until: float) -> tuple[int, int]:
    """Scrapes, each begun as soon as the last ended, until `until`: how many, how many failed."""
    count = failed = 0
    while time.perf_counter() < until:
        reply = fetch(port, VARIANTS[count % len(VARIANTS)])
        count += 1
        failed += not reply.ok_status
    return count, failed


def probe_block(
    procs: Processes,
    rtt: Path,
    out: Path,
    contender: Contender,
    *,
    seconds: float,
    scraped_first: bool,
) -> dict[bool, Window]:
    """The probe on `bench` through an unscraped and a scraped window (its records in `out`)."""
    proc = start_clients(procs, rtt, out, [contender.port], clients=1, interval=PROBE_INTERVAL)
    if proc is None:
        raise Unavailable("bench/c/rtt did not start")
    spans: dict[bool, tuple[float, float, int, int]] = {}
    for scraped in (scraped_first, not scraped_first):
        time.sleep(SETTLE)
        begin = time.perf_counter()
        if scraped:
            assert contender.metrics_port is not None  # noqa: S101 (start_all checked)
            count, failed = scrape_back_to_back(contender.metrics_port, begin + seconds)
        else:
            time.sleep(seconds)
            count = failed = 0
        spans[scraped] = (begin, time.perf_counter(), count, failed)
    trips = stop_clients(procs, proc, out)
    out.unlink(missing_ok=True)
    return {
        scraped: window_of([t for t in trips if t.begin >= begin and t.end <= end], count, failed)
        for scraped, (begin, end, count, failed) in spans.items()
    }


def window_of(inside: Sequence[RoundTrip], scrapes: int, failed: int) -> Window:
    """A window's figures, from the round trips that began and ended in it."""
    ordered = sorted(trip.seconds for trip in inside if trip.error == 0)
    scheduled = on_schedule(ordered, PROBE_INTERVAL)
    return Window(
        len(inside),
        percentile(scheduled, 0.5),
        percentile(scheduled, 0.99),
        percentile(ordered, 0.5),
        percentile(ordered, 0.99),
        ordered[-1] if ordered else None,
        sum(1 for trip in inside if trip.error != 0),
        scrapes,
        failed,
    )


def probe_rounds(ctx: Context, rtt: Path, started: Mapping[int, Contender]) -> Windows:
    """Every supervisor's block once per round, in turn; unscraped or scraped first by turns."""
    config, out = ctx.config, ctx.workdir / "scrape-probe.bin"
    windows: Windows = {size: {False: [], True: []} for size in started}
    for index in range(config.rounds):
        print(f"  probe round {index + 1}/{config.rounds}", flush=True)
        for size, contender in started.items():
            block = probe_block(
                ctx.procs, rtt, out, contender, seconds=config.seconds, scraped_first=index % 2 == 1
            )
            for scraped, window in block.items():
                windows[size][scraped].append(window)
    return windows


def time_scrapes(started: Mapping[int, Contender], config: Settings) -> Timed:
    """`config.scrapes` rounds of one scrape per supervisor and variant, one at a time."""
    timed: Timed = {size: {variant: [] for variant in VARIANTS} for size in started}
    for _ in range(config.scrapes):
        for size, contender in started.items():
            assert contender.metrics_port is not None  # noqa: S101 (start_all checked)
            for variant in VARIANTS:
                timed[size][variant].append(scrape(contender.metrics_port, variant, size))
    return timed


def rise(
    windows: Mapping[bool, list[Window]], what: Callable[[Window], float | None]
) -> float | None:
    """The median over rounds of scraped - unscraped, each pair one round's."""
    rises = []
    for calm, scraped in zip(windows[False], windows[True], strict=True):
        before, after = what(calm), what(scraped)
        if before is not None and after is not None:
            rises.append(after - before)
    return statistics.median(rises) if rises else None


def p50(window: Window) -> float | None:
    return window.p50


def p99(window: Window) -> float | None:
    return window.p99


def probe_row(size: int, by_phase: Mapping[bool, list[Window]], scraped: bool) -> list[str]:
    got = by_phase[scraped]
    worst = max((w.worst for w in got if w.worst is not None), default=None)
    return [
        label(size),
        "scraped" if scraped else "unscraped",
        f"{sum(w.trips for w in got):,}",
        fmt(median([w.p50 for w in got]), ".3f", 1e3),
        fmt(median([w.p99 for w in got]), ".3f", 1e3),
        fmt(median([w.timed_p50 for w in got]), ".3f", 1e3),
        fmt(median([w.timed_p99 for w in got]), ".3f", 1e3),
        fmt(worst, ".1f", 1e3),
        str(sum(w.errors for w in got)),
        f"{sum(w.scrapes for w in got):,}" if scraped else "-",
        str(sum(w.failed for w in got)) if scraped else "-",
        fmt(rise(by_phase, p50), "+.3f", 1e3) if scraped else "",
        fmt(rise(by_phase, p99), "+.3f", 1e3) if scraped else "",
    ]


def probe_table(windows: Windows) -> list[str]:
    rows = [
        probe_row(size, by_phase, scraped)
        for size, by_phase in windows.items()
        for scraped in (False, True)
    ]
    headers = ["supervisor", "window", "round trips", "p50 ms", "p99 ms", "timed p50", "timed p99"]
    headers += ["max ms", "errors", "scrapes", "failed", "p50 rise", "p99 rise"]
    return render(headers, rows, left=2)


def encodings(got: Sequence[Scrape]) -> str:
    seen = sorted({item.encoding or "-" for item in got if not item.problem})
    return "/".join(seen) or "-"


def scrape_table(timed: Timed) -> tuple[list[str], list[str]]:
    """The table, and a line per kind of invalid exposition."""
    rows = []
    problems: dict[str, int] = {}
    for size, by_variant in timed.items():
        for variant, got in by_variant.items():
            times = sorted(item.seconds for item in got)
            invalid = [item for item in got if item.problem]
            for item in invalid:
                key = f"{label(size)}, {variant.label}: {item.problem}"
                problems[key] = problems.get(key, 0) + 1
            rows.append(
                [
                    label(size),
                    variant.label,
                    encodings(got),
                    fmt(median(times), ".2f", 1e3),
                    fmt(percentile(times, 0.9), ".2f", 1e3),
                    fmt(times[-1] if times else None, ".2f", 1e3),
                    fmt(median([float(item.wire) for item in got]), ",.0f"),
                    fmt(median([float(s.body) for s in got if not s.problem]), ",.0f"),
                    str(len(invalid)),
                ]
            )
    headers = ["supervisor", "asked", "Content-Encoding", "median ms", "p90 ms", "max ms"]
    headers += ["wire bytes", "exposition bytes", "invalid"]
    notes = [f"invalid ({count}x) {problem}" for problem, count in problems.items()]
    if len(notes) > MAX_NOTES:
        notes[MAX_NOTES:] = [f"and {len(notes) - MAX_NOTES} other kinds of invalid exposition"]
    return render(headers, rows, left=3), notes


def rise_target(windows: Windows, largest: int) -> Target:
    value = rise(windows[largest], p99) if largest in windows else None
    return Target(
        f"{label(largest)}: another server's p99 scraped - unscraped (median of pairs)",
        value,
        f"< {RISE_LIMIT * 1e3:g} ms",
        None if value is None else value < RISE_LIMIT,
        "-" if value is None else f"{value * 1e3:+.3f} ms",
    )


def scrape_targets(timed: Timed) -> list[Target]:
    """Each variant's median scrape time at the sizes with a limit."""
    targets = []
    for size, limit in SCRAPE_LIMITS.items():
        for variant in VARIANTS:
            seconds = median([item.seconds for item in timed.get(size, {}).get(variant, [])])
            targets.append(
                within_ms(f"scrape, {label(size)}, {variant.label} (median)", seconds, limit, 2)
            )
    return targets


def count_target(what: str, good: int, total: int) -> Target:
    """`good` of `total` scrapes, all of them wanted."""
    return Target(
        what,
        good,
        f"{total} of {total}",
        None if not total else good == total,
        f"{good} of {total}",
    )


def reply_targets(timed: Timed) -> list[Target]:
    """gzip honoured when asked; every exposition valid."""
    every = [item for by in timed.values() for got in by.values() for item in got]
    zipped = [item for by in timed.values() for v, got in by.items() if v.gzip for item in got]
    return [
        count_target(
            "gzip asked: valid replies with Content-Encoding: gzip",
            sum(1 for item in zipped if item.encoding == "gzip" and not item.problem),
            len(zipped),
        ),
        count_target(
            "scrapes with a valid exposition",
            sum(1 for item in every if not item.problem),
            len(every),
        ),
    ]


def description(config: Settings) -> list[str]:
    interval = f"{PROBE_INTERVAL * 1e3:g} ms"
    sizes = ", ".join(map(str, config.many_sizes[:-1])) + f" and {config.many_sizes[-1]}"
    return wrapped(
        f"Supervisors with {sizes} servers, every server inline (bench.handler:Handler). "
        "The probe: bench/c/rtt, one client on the server `bench`, a round trip (new "
        f"connection, the exchange, the reply read to the close) begun every {interval}, one "
        f"at a time, each timed. {config.rounds} round(s); each round, each supervisor in turn, "
        f"the probe through a {config.seconds:g} s window unscraped and one scraped (/metrics "
        "scraped back to back on new connections, text and OpenMetrics, without and with gzip, "
        "in turn), in alternating order from round to round; round trips counted in the window "
        f"they began and ended in. p50, p99: as clients arriving every {interval} would have "
        f"seen them (a round trip of T > {interval} also counted for those due during it, "
        f"waiting T - {interval}, T - 2x{interval}, ...: the probe waits for each round trip, "
        "so it would otherwise see a stall once); timed p50, p99: the round trips as measured; "
        "medians over rounds. max: over all. errors: failed round trips. failed: scrapes not "
        "answered 200 OK. rise: scraped - unscraped, p50 and p99, the median of the rounds' "
        "pairs."
    )


def scrape_description(config: Settings) -> list[str]:
    return wrapped(
        f"Scrapes timed: {config.scrapes} rounds of one scrape per supervisor and variant, "
        "interleaved, nothing else running; client-side from connect to the last byte "
        "(HTTP/1.1, Connection: close). asked: the Accept header's format, and whether "
        "Accept-Encoding: gzip was sent. Content-Encoding: what the replies said (- none). wire "
        "bytes: all bytes received (status line, headers, body); exposition bytes: the body "
        "decoded (gzip.decompress when the reply says gzip), medians. invalid: not 200 OK in the "
        "format asked, cut short, not decodable, not ending as its format ends (OpenMetrics: "
        "# EOF), or not listing every server."
    )


def measure(ctx: Context, started: Mapping[int, Contender]) -> tuple[list[str], Windows]:
    """The probe rounds, or a line saying why there are none."""
    if ctx.pool.build is None:
        return ["probe unavailable: bench/c/ could not be compiled (gcc)"], {}
    try:
        return [], probe_rounds(ctx, ctx.pool.build / "rtt", started)
    except Unavailable as exc:
        return [f"probe unavailable: {exc}"], {}


def run(ctx: Context) -> Section:
    config = ctx.config
    sizes = list(config.many_sizes)
    started, lines = start_all(ctx.procs, ctx.workdir, sizes)
    try:
        print("  timing scrapes", flush=True)
        timed = time_scrapes(started, config)
        probe_lines, windows = measure(ctx, started)
    finally:
        for contender in started.values():
            if contender.proc is not None:
                ctx.procs.stop(contender.proc)
    table, notes = scrape_table(timed)
    lines += [
        *description(config),
        "",
        *probe_lines,
        *(probe_table(windows) if windows else []),
        "",
        *scrape_description(config),
        "",
        *table,
        *notes,
    ]
    return lines, [rise_target(windows, sizes[-1]), *scrape_targets(timed), *reply_targets(timed)]


SCENARIO = Scenario(
    "Scenario 8: a metrics scrape: another server's latency while scraped, the scrape's time",
    run,
)
