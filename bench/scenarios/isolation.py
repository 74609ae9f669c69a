"""Scenario 5: isolation: one server flooded (at max_children, or with rejected clients),
another's latency.

An inline and a fork server of one supervisor measured with `wrk -c1`, alternately without and
with a flood (`wrk -c32`) on a third server of the same supervisor held at `max_children = 2`
by a 50 ms handler, then on a fourth that turns every client away, then on a port nobody
listens on (the reference: what such a flood costs this machine). Target: p99 rises by < 1 ms.
"""

import statistics
import time
from collections.abc import Mapping

from bench.harness.contenders import Contender, Unavailable
from bench.harness.load import Sample, load, parse_wrk, wrk_argv
from bench.harness.network import LOOPBACK, free_port, wait_serving
from bench.harness.processes import Processes, wait_quietly
from bench.harness.report import Target, fmt, render, wrapped
from bench.harness.rounds import median
from bench.harness.scenario import Context, Scenario, Section
from bench.harness.settings import Settings
from bench.harness.supervisors import SupervisorSpec, start_supervisor

FLOOD_CLIENTS = 32  # clients kept on the slow server (max_children 2)
ISOLATION_CLIENTS = 1  # clients measuring the other servers' latency
SLOW_MAX_CHILDREN = 2

# flood kind -> the server flooded; "" is a port nobody listens on (the kernel refuses each
# connection: what such a flood costs this machine without any server's work in it)
ISOLATION_FLOODS: Mapping[str, str] = {
    "slow server flooded": "slow",
    "rejected clients flood": "denied",
    "refused by the kernel": "",
}

Flooded = dict[str, dict[str, list[Sample]]]  # flood kind -> probed mode -> samples


def isolation_spec() -> SupervisorSpec:
    """`bench` (inline) and `fastfork` (fork) measured; `slow` flooded at its max_children,
    or `denied` flooded with clients its guard turns away."""
    return SupervisorSpec(
        "inline",
        servers="\n".join(
            [
                "[servers.fastfork]",
                f'address = "tcp://{LOOPBACK}:0"',
                'handler = "bench.handler:Handler"',
                'mode = "fork"',
                "",
                "[servers.slow]",
                f'address = "tcp://{LOOPBACK}:0"',
                'handler = "bench.handler:SlowHandler"',
                'mode = "fork"',
                f"max_children = {SLOW_MAX_CHILDREN}",
                "",
                "[servers.denied]",
                f'address = "tcp://{LOOPBACK}:0"',
                'handler = "bench.handler:Handler"',
                'mode = "fork"',
                'deny = ["0.0.0.0/0", "::/0"]',
                "",
            ]
        ),
    )


def rise_target(mode: str, target: str, calm: list[Sample], flooded: list[Sample]) -> Target:
    """The median of the per-round rises of p99 under a flood on `target`."""
    rises = [
        b.p99 - a.p99
        for a, b in zip(calm, flooded, strict=True)
        if a.p99 is not None and b.p99 is not None
    ]
    rise = statistics.median(rises) if rises else None
    what = "flooded" if target == "slow" else "during a flood of rejected clients"
    return Target(
        f"{mode} server: p99 {what} - p99 calm (median of pairs)",
        rise,
        "< 1 ms",
        None if rise is None else rise < 1e-3,
        "-" if rise is None else f"{rise * 1e3:+.3f} ms",
    )


def isolation_results(
    modes: list[str], calm: dict[str, list[Sample]], flooded: Flooded
) -> tuple[list[list[str]], list[Target]]:
    """Scenario 5's table rows and targets."""
    rows = []
    targets = []
    for mode in modes:
        for name, got in (
            ("without flood", calm[mode]),
            *((kind, flooded[kind][mode]) for kind in ISOLATION_FLOODS),
        ):
            rows.append(
                [
                    f"{mode}: {name}",
                    fmt(median([s.rps for s in got]), ",.0f"),
                    fmt(median([s.p50 for s in got]), ".3f", 1e3),
                    fmt(median([s.p99 for s in got]), ".3f", 1e3),
                    str(sum(s.errors for s in got)),
                ]
            )
        for kind, target in ISOLATION_FLOODS.items():
            if target:  # "" is the reference, not a target
                targets.append(rise_target(mode, target, calm[mode], flooded[kind][mode]))
    return rows, targets


def under_flood(
    procs: Processes, contender: Contender, probed: dict[str, int], config: Settings, target: str
) -> tuple[dict[str, Sample], str]:
    """One load on each probed server during a flood on `target` ("" a port nobody listens
    on): the samples, and the flood's wrk output."""
    flood_seconds = len(probed) * (config.seconds + 0.5) + 1
    flooded_port = contender.ports[target] if target else free_port()
    flood = procs.start("flood", wrk_argv(flooded_port, FLOOD_CLIENTS, flood_seconds, timeout=30))
    time.sleep(0.5)  # the slow server at max_children, its queue filling
    samples = {
        mode: load(procs, contender.pid, port, ISOLATION_CLIENTS, config.seconds)
        for mode, port in probed.items()
    }
    wait_quietly(flood, flood_seconds + 30)
    procs.stop(flood)
    return samples, "\n".join(flood.out)


def measure(
    procs: Processes, contender: Contender, probed: dict[str, int], config: Settings
) -> tuple[dict[str, list[Sample]], Flooded, list[float]]:
    """Each round: every probed server calm, then under each kind of flood; the slow server's
    req/s during its floods."""
    calm: dict[str, list[Sample]] = {mode: [] for mode in probed}
    flooded = {kind: {mode: list[Sample]() for mode in probed} for kind in ISOLATION_FLOODS}
    flood_rps: list[float] = []
    for port in probed.values():
        wait_serving(port)
    for _ in range(config.rounds):
        for mode, port in probed.items():
            calm[mode].append(load(procs, contender.pid, port, ISOLATION_CLIENTS, config.seconds))
        for kind, target in ISOLATION_FLOODS.items():
            samples, flood_text = under_flood(procs, contender, probed, config, target)
            for mode, sample in samples.items():
                flooded[kind][mode].append(sample)
            if target == "slow":
                flood_rps.append(parse_wrk(flood_text)[1])
    return calm, flooded, flood_rps


def run(ctx: Context) -> Section:
    procs, workdir, config = ctx.procs, ctx.workdir, ctx.config
    try:
        contender = start_supervisor(procs, workdir, "isolation", "isolation", isolation_spec())
    except Unavailable as exc:
        return [f"unavailable: {exc}"], []
    probed = {"inline": contender.port, "fork": contender.ports["fastfork"]}
    try:
        calm, flooded, flood_rps = measure(procs, contender, probed, config)
    finally:
        if contender.proc is not None:
            procs.stop(contender.proc)
    rows, targets = isolation_results(list(probed), calm, flooded)
    lines = [
        *wrapped(
            f"Two servers measured with wrk -c{ISOLATION_CLIENTS} (one client: latency without "
            "queueing), one inline and one fork (bench.handler:Handler), each alternately "
            "without and with a flood on a third server of the same supervisor, `slow` (fork, "
            f"SlowHandler: 50 ms per request, max_children = {SLOW_MAX_CHILDREN}; "
            f"wrk -c{FLOOD_CLIENTS} on it keeps it at max_children with a queue). The slow "
            f"server served {fmt(median(flood_rps), '.0f')} req/s during the floods. Then the "
            f"same with wrk -c{FLOOD_CLIENTS} on a fourth server, `denied` (deny = everyone: each "
            "connection accepted, turned away and closed, never forked), and on a port nobody "
            "listens on (refused by the kernel: the cost of such a flood to this machine, with "
            "no server's work in it)."
        ),
        "",
        *render(["measured server", "req/s", "p50 ms", "p99 ms", "errors"], rows),
    ]
    return lines, targets


SCENARIO = Scenario(
    "Scenario 5: isolation: one server flooded (at max_children, or with rejected "
    "clients), another's latency",
    run,
)
