"""Scenario 6: reload.

A 100-server configuration (fork mode) reloaded with SIGHUP, each time adding a server (inline
mode) on a new port and then removing it, under `wrk -c8` on an unchanged server: SIGHUP to
connect(), to the `reloaded:` line, to the new server's reply. Targets: < 50 ms; 0 failed
connections.
"""

import os
import re
import signal
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness.load import parse_wrk, wrk_argv
from bench.harness.network import LOOPBACK, exchange_on, free_port, wait_serving
from bench.harness.processes import Proc, Processes, wait_quietly
from bench.harness.report import Target, below_ms, render, wrapped, write_atomically
from bench.harness.scenario import Context, Scenario, Section
from bench.harness.supervisors import LISTENING, SupervisorSpec, start_supervisor_file

RELOAD_SERVERS = 100
PACE = 0.25  # seconds: at most one adding and one removing reload per PACE


@dataclass
class Reloads:
    connected: list[float] = field(default_factory=list)  # SIGHUP -> connect() succeeds
    served: list[float] = field(default_factory=list)  # SIGHUP -> the added server answers
    logged: list[float] = field(default_factory=list)  # SIGHUP -> 'reloaded:' (adding)
    removed: list[float] = field(default_factory=list)  # SIGHUP -> 'reloaded:' (removing)
    loaded: int = 0  # adding reloads while wrk was still running
    failures: int = 0


@dataclass(frozen=True)
class Traffic:
    """What wrk on the unchanged server saw during the reloads."""

    requests: int
    rate: float
    errors: int
    kinds: str | None  # wrk's "Socket errors:" line, if any


def reload_config(added_port: int | None) -> str:
    idle = SupervisorSpec("fork", idle=RELOAD_SERVERS - 1).text()
    if added_port is None:
        return idle
    return idle + "\n".join(
        [
            "[servers.added]",
            f'address = "tcp://{LOOPBACK}:{added_port}"',
            'handler = "bench.handler:Handler"',
            'mode = "inline"',
            "",
        ]
    )


def serve_poll(port: int, timeout: float) -> tuple[float, float] | None:
    """Connect to `port` every 0.2 ms until a connection is accepted by the kernel, then do the
    exchange on it: when the connection succeeded and when the reply was complete."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2.0) as connection:
                connected = time.perf_counter()
                if exchange_on(connection):
                    return connected, time.perf_counter()
        except OSError:
            pass
        time.sleep(0.0002)
    return None


def reloaded(text: str) -> bool:
    return "reloaded:" in text or "reload failed" in text


def hangup(proc: Proc, path: Path, text: str) -> float:
    """Write the configuration, forget the log so far, send SIGHUP: when it was sent."""
    write_atomically(path, text)
    proc.drain()
    sent = time.perf_counter()
    os.kill(proc.pid, signal.SIGHUP)
    return sent


def reload_rounds(proc: Proc, path: Path, wrk: Proc, count: int, pace: float) -> Reloads:
    """`count` times: a reload adding a server on a new port, then one removing it."""
    done = Reloads()
    for _ in range(count):
        begun = time.perf_counter()
        added = free_port()
        sent = hangup(proc, path, reload_config(added))
        serving = serve_poll(added, 5.0)
        line = proc.wait_line(reloaded, 5)
        if serving is None or line is None or "reload failed" in line[1]:
            done.failures += 1
            continue
        done.connected.append(serving[0] - sent)
        done.served.append(serving[1] - sent)
        done.logged.append(line[0] - sent)
        done.loaded += wrk.popen.poll() is None
        sent = hangup(proc, path, reload_config(None))
        back = proc.wait_line(reloaded, 5)
        if back is None or "reload failed" in back[1]:
            done.failures += 1
        else:
            done.removed.append(back[0] - sent)
        time.sleep(max(0.0, pace - (time.perf_counter() - begun)))
    return done


def under_load(procs: Processes, proc: Proc, path: Path, reloads: int) -> tuple[Reloads, Traffic]:
    """The reloads, with wrk on the unchanged server `bench` meanwhile."""
    port = next(
        int(match.group(2))
        for line in proc.tail
        if (match := LISTENING.search(line + " ")) and match.group(1) == "bench"
    )
    wait_serving(port)
    seconds = max(2, round(reloads * PACE + 2))
    wrk = procs.start("wrk", wrk_argv(port, 8, seconds))
    time.sleep(0.3)
    done = reload_rounds(proc, path, wrk, reloads, PACE)
    wait_quietly(wrk, seconds + 20)
    procs.stop(wrk)
    wrk_text = "\n".join(wrk.out)
    requests, rate, _, _, errors = parse_wrk(wrk_text)
    kinds = re.search(r"Socket errors: (.*)", wrk_text)
    return done, Traffic(requests, rate, errors, kinds.group(1).strip() if kinds else None)


def stats(values: Sequence[float]) -> list[str]:
    if not values:
        return ["-", "-", "-"]
    return [
        f"{statistics.median(values) * 1e3:.1f}",
        f"{min(values) * 1e3:.1f}",
        f"{max(values) * 1e3:.1f}",
    ]


def report(done: Reloads, traffic: Traffic, reloads: int) -> Section:
    rows = [
        ["SIGHUP -> connect() to the added server succeeds", *stats(done.connected)],
        ["SIGHUP -> 'reloaded:' log line read (adding)", *stats(done.logged)],
        ["SIGHUP -> the added server's reply complete", *stats(done.served)],
        ["SIGHUP -> 'reloaded:' log line read (removing)", *stats(done.removed)],
    ]
    lines = [
        *wrapped(
            f"A {RELOAD_SERVERS}-server configuration (fork mode) reloaded {reloads} times "
            "with SIGHUP, adding one server (inline mode) on a new port, each followed by a "
            "reload removing it again. A connect() succeeds once the new socket listens (bound "
            "while the new configuration is prepared, before the switch); the 'reloaded:' line "
            "is logged after the switch; the reply needs the loop to serve the new server. "
            f"wrk -c8 on an unchanged fork-mode server meanwhile: {traffic.requests:,} requests "
            f"({traffic.rate:,.0f}/s), {traffic.errors} failed"
            + (f" ({traffic.kinds})" if traffic.kinds is not None else "")
            + f"; {done.loaded} of the adding reloads happened "
            f"under load; {done.failures} reloads failed."
        ),
        "",
        *render(["interval", "median ms", "min ms", "max ms"], rows),
    ]
    return lines, targets(done, traffic)


def targets(done: Reloads, traffic: Traffic) -> list[Target]:
    reload_time = statistics.median(done.logged) if done.logged else None
    served = statistics.median(done.served) if done.served else None
    return [
        below_ms(
            f"reload of {RELOAD_SERVERS} servers: SIGHUP to 'reloaded:' (median)", reload_time, 50
        ),
        below_ms(f"reload of {RELOAD_SERVERS} servers: SIGHUP to the reply (median)", served, 50),
        Target(
            "failed connections on an unchanged server during reloads",
            float(traffic.errors),
            "0",
            traffic.errors == 0 and traffic.requests > 0 and done.failures == 0,
            str(traffic.errors),
        ),
    ]


def run(ctx: Context) -> Section:
    procs, config = ctx.procs, ctx.config
    path = ctx.workdir / "reload.toml"
    path.write_text(reload_config(None), encoding="utf-8")
    proc = start_supervisor_file(procs, "reload", path)
    try:
        if proc.wait_line(lambda line: " ready: " in line, 120) is None:
            return [f"unavailable: {proc.tail[-1] if proc.tail else 'no ready line'}"], []
        done, traffic = under_load(procs, proc, path, config.reloads)
    finally:
        procs.stop(proc)
    return report(done, traffic, config.reloads)


SCENARIO = Scenario("Scenario 6: reload", run)
