"""Scenario 8: a metrics scrape: what it costs another server, and how long it takes (issue 19).

The endpoint is served from the supervisor's loop, so while a scrape is worked on no other
server of that supervisor is served. Supervisors with 1, 100 and 1000 servers, every server
inline (`bench.handler:Handler`), so that a round trip to one of them is the loop's latency and
nothing else (no fork, no thread hand-off); the stall measured is the loop's, which every mode
shares. Each has a twin, started the same way.

The probe: `bench/c/rtt.c` with one client thread on the server `bench` (not the metrics
endpoint) of the supervisor measured, a round trip (new connection, the bench's exchange, the
reply read to the server's close) begun every PROBE_INTERVAL, one at a time (the next at once
when one took longer), each timed on its own. A round trip that meets a rendering waits for the
rest of it. Being one at a time, the probe sees a stall as one long round trip where clients
arriving on a schedule would have queued many: p50 and p99 are of the round trips on that
schedule (roundtrips.on_schedule: a round trip of T also stands for those due during it, waiting
T - 1 ms, T - 2 ms, ...), "timed" ones of the round trips as measured.

Per round and per supervisor, the probe runs through three windows of `--seconds`: unscraped
(the harness sleeps), scraped (the harness scrapes its /metrics back to back on new connections,
cycling through the four variants below, checking only the status line between scrapes so that
the next begins at once), and twin scraped (the same scrapes sent to the twin: the same client
work and the same load on the machine's two CPUs, but another loop; what remains of the rise
there is this machine's, not the loop's). The order rotates from round to round, the supervisors
in turn; each window counts the round trips that began and ended in it. Target: at 1000
servers, p99 scraped - p99 unscraped (median of the rounds' pairs) < 1 ms; the twin's rise is
shown beside it for reference.

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
SETTLE = 0.1  # seconds before each window: the probe running, the last scrape's close done
RISE_LIMIT = 1e-3  # seconds: the p99 rise allowed at the largest size
UNSCRAPED, SCRAPED, TWIN = "unscraped", "scraped", "twin scraped"  # the probe's windows
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


Windows = dict[int, dict[str, list[Window]]]  # servers -> phase -> one window per round
Pair = tuple[Contender, Contender | None]  # the supervisor measured, and its twin
Pairs = dict[int, Pair]  # servers -> the pair
Timed = dict[int, dict[Variant, list[Scrape]]]  # servers -> variant -> scrapes


def label(servers: int) -> str:
    return f"{servers} server" + ("" if servers == 1 else "s")


def start_one(procs: Processes, workdir: Path, key: str, size: int) -> Contender | str:
    """A supervisor of `size` inline servers, or why it is unavailable."""
    spec = SupervisorSpec("inline", idle=size - 1, idle_mode="inline")
    try:
        contender = start_supervisor(procs, workdir, key, label(size), spec)
    except Unavailable as exc:
        return str(exc)
    if contender.metrics_port is None or not wait_serving(contender.port):
        if contender.proc is not None:
            procs.stop(contender.proc)
        return "no metrics port, or `bench` not serving"
    return contender


def start_all(procs: Processes, workdir: Path, sizes: Sequence[int]) -> tuple[Pairs, list[str]]:
    """Each size's supervisor and its twin (None if it did not start); a line for each that
    did not start."""
    pairs: Pairs = {}
    lines: list[str] = []
    for size in sizes:
        measured = start_one(procs, workdir, f"scrape-{size}", size)
        if isinstance(measured, str):
            lines.append(f"{label(size)}: unavailable ({measured})")
            continue
        twin = start_one(procs, workdir, f"scrape-twin-{size}", size)
        if isinstance(twin, str):
            lines.append(f"{label(size)}, twin: unavailable ({twin})")
        pairs[size] = (measured, None if isinstance(twin, str) else twin)
    return pairs, lines


def stop_all(procs: Processes, pairs: Pairs) -> None:
    for pair in pairs.values():
        for contender in pair:
            if contender is not None and contender.proc is not None:
                procs.stop(contender.proc)


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
    probed: int,
    *,
    windows: Mapping[str, int | None],
    seconds: float,
) -> dict[str, Window]:
    """The probe on port `probed` through each window, in order: the metrics port scraped
    meanwhile, or None (its records in `out`)."""
    proc = start_clients(procs, rtt, out, [probed], clients=1, interval=PROBE_INTERVAL)
    if proc is None:
        raise Unavailable("bench/c/rtt did not start")
    spans: dict[str, tuple[float, float, int, int]] = {}
    for phase, port in windows.items():
        time.sleep(SETTLE)
        begin = time.perf_counter()
        if port is None:
            time.sleep(seconds)
            count = failed = 0
        else:
            count, failed = scrape_back_to_back(port, begin + seconds)
        spans[phase] = (begin, time.perf_counter(), count, failed)
    trips = stop_clients(procs, proc, out)
    out.unlink(missing_ok=True)
    return {
        phase: window_of([t for t in trips if t.begin >= begin and t.end <= end], count, failed)
        for phase, (begin, end, count, failed) in spans.items()
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


def block_windows(pair: Pair, index: int) -> dict[str, int | None]:
    """Round `index`'s windows for one supervisor, in order (rotated from round to round):
    the metrics port each scrapes, None for none."""
    measured, twin = pair
    ports = {UNSCRAPED: None, SCRAPED: measured.metrics_port}
    if twin is not None:
        ports[TWIN] = twin.metrics_port
    phases = list(ports)
    turn = index % len(phases)
    return {phase: ports[phase] for phase in phases[turn:] + phases[:turn]}


def probe_rounds(ctx: Context, rtt: Path, pairs: Pairs) -> Windows:
    """Every supervisor's block once per round, in turn."""
    config, out = ctx.config, ctx.workdir / "scrape-probe.bin"
    windows: Windows = {size: {} for size in pairs}
    for index in range(config.rounds):
        print(f"  probe round {index + 1}/{config.rounds}", flush=True)
        for size, pair in pairs.items():
            order = block_windows(pair, index)
            block = probe_block(
                ctx.procs, rtt, out, pair[0].port, windows=order, seconds=config.seconds
            )
            for phase, window in block.items():
                windows[size].setdefault(phase, []).append(window)
    return windows


def time_scrapes(pairs: Pairs, config: Settings) -> Timed:
    """`config.scrapes` rounds of one scrape per supervisor and variant, one at a time."""
    timed: Timed = {size: {variant: [] for variant in VARIANTS} for size in pairs}
    for _ in range(config.scrapes):
        for size, (contender, _twin) in pairs.items():
            assert contender.metrics_port is not None  # noqa: S101 (start_all checked)
            for variant in VARIANTS:
                timed[size][variant].append(scrape(contender.metrics_port, variant, size))
    return timed


def rise(
    by_phase: Mapping[str, list[Window]], phase: str, what: Callable[[Window], float | None]
) -> float | None:
    """The median over rounds of `phase` - unscraped, each pair one round's."""
    rises = []
    for calm, other in zip(by_phase[UNSCRAPED], by_phase.get(phase, []), strict=False):
        before, after = what(calm), what(other)
        if before is not None and after is not None:
            rises.append(after - before)
    return statistics.median(rises) if rises else None


def p50(window: Window) -> float | None:
    return window.p50


def p99(window: Window) -> float | None:
    return window.p99


def probe_row(size: int, by_phase: Mapping[str, list[Window]], phase: str) -> list[str]:
    got = by_phase[phase]
    worst = max((w.worst for w in got if w.worst is not None), default=None)
    scraped = phase != UNSCRAPED
    return [
        label(size),
        phase,
        f"{sum(w.trips for w in got):,}",
        fmt(median([w.p50 for w in got]), ".3f", 1e3),
        fmt(median([w.p99 for w in got]), ".3f", 1e3),
        fmt(median([w.timed_p50 for w in got]), ".3f", 1e3),
        fmt(median([w.timed_p99 for w in got]), ".3f", 1e3),
        fmt(worst, ".1f", 1e3),
        str(sum(w.errors for w in got)),
        f"{sum(w.scrapes for w in got):,}" if scraped else "-",
        str(sum(w.failed for w in got)) if scraped else "-",
        fmt(rise(by_phase, phase, p50), "+.3f", 1e3) if scraped else "",
        fmt(rise(by_phase, phase, p99), "+.3f", 1e3) if scraped else "",
    ]


def probe_table(windows: Windows) -> list[str]:
    rows = [
        probe_row(size, by_phase, phase)
        for size, by_phase in windows.items()
        for phase in (UNSCRAPED, SCRAPED, TWIN)
        if phase in by_phase
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


def rise_targets(windows: Windows, largest: int) -> list[Target]:
    """The p99 rise at the largest size, and the twin's beside it for reference."""
    by_phase = windows.get(largest, {})
    value = rise(by_phase, SCRAPED, p99) if by_phase else None
    twin = rise(by_phase, TWIN, p99) if by_phase else None
    return [
        Target(
            f"{label(largest)}: another server's p99 scraped - unscraped (median of pairs)",
            value,
            f"< {RISE_LIMIT * 1e3:g} ms",
            None if value is None else value < RISE_LIMIT,
            "-" if value is None else f"{value * 1e3:+.3f} ms",
        ),
        Target(
            f"{label(largest)}: the same, its twin scraped instead (this machine's share)",
            twin,
            "(reference)",
            None,
            "-" if twin is None else f"{twin * 1e3:+.3f} ms",
        ),
    ]


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
        f"Supervisors with {sizes} servers, every server inline (bench.handler:Handler), each "
        "with a twin. The probe: bench/c/rtt, one client on the server `bench`, a round trip "
        f"(new connection, the exchange, the reply read to the close) begun every {interval}, "
        f"one at a time, each timed. {config.rounds} round(s); each round, each supervisor in "
        f"turn, the probe through three windows of {config.seconds:g} s, in an order rotated "
        "from round to round: unscraped; scraped (its /metrics scraped back to back on new "
        "connections, text and OpenMetrics, without and with gzip, in turn); twin scraped (the "
        "same scrapes sent to its twin: the same load on this machine, another loop). Round "
        f"trips count in the window they began and ended in. p50, p99: as clients arriving "
        f"every {interval} would have seen them (a round trip of T > {interval} also counted "
        f"for those due during it, waiting T - {interval}, T - 2x{interval}, ...: the probe "
        "waits for each round trip, so it would otherwise see a stall once); timed p50, p99: "
        "the round trips as measured; medians over rounds. max: over all. errors: failed round "
        "trips. failed: scrapes not answered 200 OK. rise: that window - unscraped, p50 and "
        "p99, the median of the rounds' pairs."
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


def measure(ctx: Context, pairs: Pairs) -> tuple[list[str], Windows]:
    """The probe rounds, or a line saying why there are none."""
    if ctx.pool.build is None:
        return ["probe unavailable: bench/c/ could not be compiled (gcc)"], {}
    try:
        return [], probe_rounds(ctx, ctx.pool.build / "rtt", pairs)
    except Unavailable as exc:
        return [f"probe unavailable: {exc}"], {}


def run(ctx: Context) -> Section:
    config = ctx.config
    sizes = list(config.many_sizes)
    pairs, lines = start_all(ctx.procs, ctx.workdir, sizes)
    try:
        print("  timing scrapes", flush=True)
        timed = time_scrapes(pairs, config)
        probe_lines, windows = measure(ctx, pairs)
    finally:
        stop_all(ctx.procs, pairs)
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
    return lines, [*rise_targets(windows, sizes[-1]), *scrape_targets(timed), *reply_targets(timed)]


SCENARIO = Scenario(
    "Scenario 8: a metrics scrape: another server's latency while scraped, the scrape's time",
    run,
)
