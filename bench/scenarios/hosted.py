"""Scenario 9: hosted servers (`server =`): a WSGI application against wsgiref's own servers,
and `server =` against `handler =` in every mode.

At the first concurrency: a WSGI application (bench/hosted_apps.py) hosted through
`server = "bench.hosted_apps:wsgi_server"` (wsgiref's WSGIServer, built unbound) in prefork mode
against the same application on wsgiref's WSGIServer and on ThreadingMixIn + WSGIServer, each
run by its own serve_forever() (bench/wsgi_server.py), and in fork mode against ForkingMixIn +
WSGIServer; the peers with the standard library's listen queue (5) and with 1024. Then one
HTTP handler (bench.hosted_apps:QuietHello, which needs nothing of its server) through
`handler =` and through `server = "bench.hosted_apps:hello_server"` (a plain TCPServer), in
each mode. Targets: prefork >= 1.5x WSGIServer and ThreadingMixIn + WSGIServer; fork >= 1x
ForkingMixIn + WSGIServer; `server =` >= 0.95x `handler =` in every mode (req/s).
"""

from bench.harness.load import Sample
from bench.harness.pool import HOSTED_MODES, Pool, hosted_key
from bench.harness.report import Target, at_least, info, wrapped
from bench.harness.rounds import Cell, at_first, load_table, paired, rps, rps_ratio
from bench.harness.scenario import Context, Scenario, Section
from bench.harness.settings import Settings

# (the contender, its peers: the ratios' reference first, the informative ones after)
PREFORK = ("sv-wsgi-prefork", "std-wsgi-plain", "std-wsgi-plain-q")
PREFORK_THREAD = ("std-wsgi-thread", "std-wsgi-thread-q")
FORK = ("sv-wsgi-fork", "std-wsgi-fork", "std-wsgi-fork-q")
WSGI_TARGETS = (  # (contender, peer, goal); a goal of None: shown for information
    ("sv-wsgi-prefork", "std-wsgi-plain", 1.5),
    ("sv-wsgi-prefork", "std-wsgi-thread", 1.5),
    ("sv-wsgi-prefork", "std-wsgi-plain-q", None),
    ("sv-wsgi-prefork", "std-wsgi-thread-q", None),
    ("sv-wsgi-fork", "std-wsgi-fork", 1.0),
    ("sv-wsgi-fork", "std-wsgi-fork-q", None),
)
OVERHEAD_GOAL = 0.95  # server = over handler =, req/s


def pair(mode: str) -> tuple[str, str]:
    """The `handler =` and the `server =` supervisor of the hello handler in `mode`."""
    return hosted_key("hello-handler", mode), hosted_key("hello-server", mode)


def keys() -> list[str]:
    return [*PREFORK, *PREFORK_THREAD, *FORK, *(key for mode in HOSTED_MODES for key in pair(mode))]


def cells(config: Settings) -> list[Cell]:
    return at_first(keys(), config)


def cpu(sample: Sample) -> float | None:
    return sample.cpu


def wsgi_targets(pool: Pool, samples: dict[Cell, list[Sample]], connections: int) -> list[Target]:
    found = []
    for ours, peer, goal in WSGI_TARGETS:
        what = f"{pool.label(ours).partition(',')[0]} / {pool.label(peer)}, req/s"
        value = rps_ratio(samples, ours, peer, connections)
        found.append(info(what, value) if goal is None else at_least(what, value, goal))
    return found


def overhead_targets(samples: dict[Cell, list[Sample]], connections: int) -> list[Target]:
    found = []
    for mode in HOSTED_MODES:
        handler, server = ((key, connections) for key in pair(mode))
        got, reference = samples.get(server, []), samples.get(handler, [])
        what = f"{mode}: server = / handler ="
        found.append(at_least(f"{what}, req/s", paired(got, reference, rps), OVERHEAD_GOAL))
        found.append(info(f"{what}, CPU per request", paired(got, reference, cpu)))
    return found


def notes(connections: int) -> list[str]:
    return wrapped(
        "A WSGI application (bench.hosted_apps.application: a fixed 3-byte body, wsgiref's "
        "request handler without its access line) hosted with server = "
        '"bench.hosted_apps:wsgi_server" (a wsgiref WSGIServer built with '
        "bind_and_activate=False), against the same application and handler on wsgiref's "
        "WSGIServer, ThreadingMixIn + WSGIServer and ForkingMixIn + WSGIServer, each run by its "
        "serve_forever() in a process of its own (bench/wsgi_server.py), with the standard "
        "library's listen queue (5) and with 1024. Then one HTTP handler that needs nothing of "
        "its server (bench.hosted_apps:QuietHello, services/hello.py's reply without its log "
        'line) through handler = and through server = "bench.hosted_apps:hello_server" (a '
        f"plain TCPServer), in each mode. Every load: wrk -c{connections}, GET /, Connection: "
        "close."
    )


def run(ctx: Context) -> Section:
    pool, samples = ctx.pool, ctx.samples
    connections = ctx.config.concurrencies[0]
    lines = ["", *notes(connections)]
    for title, table in (
        ("The WSGI application, prefork:", [*PREFORK, *PREFORK_THREAD]),
        ("The WSGI application, fork:", list(FORK)),
    ):
        row_cells = [(key, connections) for key in table]
        lines += ["", title, *load_table(pool, samples, row_cells, row_cells[1], faults=True)]
    lines += ["", "server = against handler =, the same handler (QuietHello), by mode:"]
    for mode in HOSTED_MODES:
        row_cells = [(key, connections) for key in pair(mode)]
        lines += load_table(pool, samples, row_cells, row_cells[0], faults=True)
    return lines, wsgi_targets(pool, samples, connections) + overhead_targets(samples, connections)


SCENARIO = Scenario(
    "Scenario 9: hosted servers (server =): WSGI against wsgiref, server = against handler =",
    run,
    cells,
)
