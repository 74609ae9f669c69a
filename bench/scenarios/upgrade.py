"""Scenario 10: upgrade under load: `supervisor upgrade`, spawned, and in place as PID 1.

One supervisor serves the exchange in fork, thread, inline and prefork mode, and `whoami`
(inline, bench.handler:PidHandler: its pid and when its code was imported), while
bench/c/rtt.c runs CLIENTS client threads per mode, each starting a round trip on a new
connection every INTERVAL at most, every round trip timed. It is upgraded `upgrades` times,
SETTLE s apart, with `supervisor upgrade -c FILE`: its wall time until exit 0 (the new
supervisor has taken over) and, from a probe polling `whoami`, until the first reply from the
new code. An upgrade's window runs from the command's start to the last of its exit, that
reply, the new code's `ready:` and fork server, and the old supervisor's `stopped` (drained),
plus MARGIN. Per mode, the round trips outside every window (after WARMUP) give the normal
p50, p99 and max, and the longest round trip overlapping a window is what a client waited
during an upgrade.

Then the same with the supervisor as PID 1 of a new PID namespace (`unshare --pid --fork
--mount-proc --kill-child`, as tests/integration/test_pid1.py runs it), where an upgrade checks
the new code in a child and execs it in place, not accepting meanwhile. From outside the
namespace `supervisor upgrade` is refused (the pidfile names pid 1; its lock holder is another
pid there): the command is run inside it with nsenter, or, without nsenter, the supervisor gets
SIGUSR2 and its `took over` log line ends the wait.

The supervisor runs from a copy of the package (and bench.handler) compiled to bytecode, as
installed code is; the last variant, in place again, from a copy that is not, as a checkout
without __pycache__ is under the harness's PYTHONDONTWRITEBYTECODE: every start then compiles
the package from source, which the new code's start-up, and an exec in place's pause, include.

Targets, per variant and mode: longest round trip in an upgrade - p99 outside < 100 ms (the
issue's "no client waits more than 100 ms longer than its normal latency"); 0 failed round
trips and upgrades.
"""

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.harness.network import LOOPBACK, REQUEST, wait_serving
from bench.harness.places import PYTHON, ROOT, SUPERVISOR
from bench.harness.pool import PREFORK_WORKERS
from bench.harness.processes import Proc, Processes
from bench.harness.report import Target, fmt, render, wrapped
from bench.harness.roundtrips import (
    RoundTrip,
    error_name,
    percentile,
    start_clients,
    stop_clients,
)
from bench.harness.scenario import Context, Scenario, Section
from bench.harness.supervisors import LISTENING, supervisor_env

MODES = ("fork", "thread", "inline", "prefork")
CLIENTS = 2  # client threads per mode: 8 in all
INTERVAL = 0.01  # seconds: each client starts a round trip at most this often (800/s in all)
SETTLE = 1.0  # seconds of load before the first upgrade, and after each one's window
WARMUP = 0.5  # seconds of load left out of the normal latency at its start
MARGIN = 0.1  # seconds after an upgrade's last sign still counted in its window
PROBE_EVERY = 0.002  # seconds between two of the probe's requests to `whoami`
LIMIT = 0.1  # seconds: the target
UPGRADE_TIMEOUT = 150.0  # the command's own is 120 s
UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")


@dataclass(frozen=True)
class Variant:
    name: str
    key: str  # its files' names
    wrapper: tuple[str, ...]  # what `supervisor run` is run under
    compiled: bool  # the code's bytecode cached (as installed code has it), or compiled at import

    @property
    def in_place(self) -> bool:
        return bool(self.wrapper)


VARIANTS = (
    Variant("spawned", "spawned", (), compiled=True),
    Variant("in place (PID 1)", "pid1", UNSHARE, compiled=True),
    Variant("in place (PID 1), no bytecode cached", "pid1-source", UNSHARE, compiled=False),
)


@dataclass
class Upgrade:
    """One upgrade, on time.perf_counter's clock."""

    began: float  # the command started (or SIGUSR2 was sent)
    returned: float | None = None  # the command exited 0 (None: SIGUSR2, or it failed)
    answered: float | None = None  # `whoami` first answered from the new code
    marks: dict[str, float] = field(default_factory=dict)  # log lines, by MARKS key
    error: str = ""

    @property
    def ended(self) -> float:
        """The end of its window."""
        signs = [self.returned, self.answered, *self.marks.values()]
        return max(sign for sign in [self.began, *signs] if sign is not None) + MARGIN

    def since(self, key: str, start: str | None = None) -> float | None:
        """Seconds from `start` (a mark; None: the command's start) to `key`."""
        origin = self.began if start is None else self.marks.get(start)
        end = {"returned": self.returned, "answered": self.answered}.get(key, self.marks.get(key))
        return None if origin is None or end is None else end - origin


# The log lines an upgrade is followed by (the first one read after it began).
MARKS: dict[str, Callable[[str], bool]] = {
    "starting": lambda line: "upgrade: starting the code now installed" in line,
    "checked": lambda line: "upgrade: the new code checked" in line,
    # The old supervisor's line, just before it stops accepting (spawned), ends with "finish
    # here"; the new one's does not (in place, only that one is logged).
    "handed over": lambda line: "took over from pid" in line and "finish here" in line,
    "took over": lambda line: "took over from pid" in line and "finish here" not in line,
    "ready": lambda line: " ready: " in line,
    "fork server": lambda line: re.search(r"fork server \d+: forking for", line) is not None,
    "failed": lambda line: "upgrade failed" in line,
}


@dataclass
class Supervised:
    """A running supervisor of this scenario: its process (or unshare), ports, pid."""

    proc: Proc
    ports: dict[str, int]
    pid: int  # the serving supervisor's pid, seen from here (the host pid of PID 1)
    path: Path
    env: dict[str, str]  # its, and its commands' (`supervisor upgrade`)


# -- the supervisor ---------------------------------------------------------------------


def upgrade_config(pidfile: Path) -> str:
    lines = [
        "[supervisor]",
        'log_level = "info"',
        f'pidfile = "{pidfile}"',
        "shutdown_timeout = 5",
        "kill_grace = 1",
        "",
        "[metrics]",
        f'address = "tcp://{LOOPBACK}:0"',
        "",
    ]
    for name, handler, mode in [
        *((mode, "Handler", mode) for mode in MODES),
        ("whoami", "PidHandler", "inline"),
    ]:
        lines += [
            f"[servers.{name}]",
            f'address = "tcp://{LOOPBACK}:0"',
            f'handler = "bench.handler:{handler}"',
            f'mode = "{mode}"',
            f"workers = {PREFORK_WORKERS}" if mode == "prefork" else "",
            "",
        ]
    return "\n".join(lines)


def environment(workdir: Path, variant: Variant) -> dict[str, str]:
    """The supervisor's environment: PYTHONPATH a copy of this checkout's code (the package and
    bench.handler) in `workdir`, compiled to bytecode for a `compiled` variant. The harness
    runs the supervisor with PYTHONDONTWRITEBYTECODE: a checkout without __pycache__ would be
    compiled at every start, which installed code is not (pip and the Dockerfile compile it);
    and whether the checkout has a __pycache__ must not decide what is measured."""
    code = workdir / f"code-{variant.key}"
    shutil.copytree(
        ROOT / "supervisor", code / "supervisor", ignore=shutil.ignore_patterns("__pycache__")
    )
    (code / "bench").mkdir()
    for name in ("__init__.py", "handler.py"):
        shutil.copy2(ROOT / "bench" / name, code / "bench" / name)
    if variant.compiled:
        subprocess.run(  # noqa: S603 (this Python, the checkout's own code)
            [PYTHON, "-m", "compileall", "-q", str(code)], stdout=subprocess.DEVNULL, check=False
        )
    env = dict(supervisor_env(), PYTHONPATH=str(code))
    if not variant.in_place:
        # A foreground supervisor whose parent waits for it (this harness) may exec in place
        # by default (later code: nothing would follow a new process): a handover is asked.
        env["SUPERVISOR_UPGRADE_MODE"] = "handover"
    return env


def start(procs: Processes, workdir: Path, variant: Variant) -> Supervised | str:
    """The supervisor started, serving; or why not."""
    rundir = workdir / f"upgrade-{variant.key}"
    rundir.mkdir(mode=0o700)
    path = rundir / "supervisor.toml"
    path.write_text(upgrade_config(rundir / "supervisor.pid"), encoding="utf-8")
    env = environment(workdir, variant)
    argv = [*variant.wrapper, SUPERVISOR, "run", "-c", str(path)]
    proc = procs.start(f"upgrade {variant.key}", argv, env)
    ports: dict[str, int] = {}
    while item := proc.wait_line(lambda line: "listening on" in line or " ready: " in line, 60):
        if " ready: " in item[1]:
            break
        if match := LISTENING.search(item[1] + " "):
            ports[match.group(1)] = int(match.group(2))
    pid = proc.pid
    with contextlib.suppress(psutil.Error, ValueError):
        if variant.in_place:
            (inner,) = psutil.Process(proc.pid).children()
            pid = inner.pid
    if item is None or (pid == proc.pid and variant.in_place):
        reason = next((line for line in reversed(proc.tail) if line.strip()), "no 'ready:' line")
        procs.stop(proc)
        return reason
    if not all(wait_serving(ports[mode]) for mode in MODES):
        procs.stop(proc)
        return "does not answer the exchange"
    return Supervised(proc, ports, pid, path, env)


def stop(procs: Processes, supervised: Supervised) -> None:
    """SIGTERM to the supervisor serving now (the first one's process group has the others,
    killed after it: procs.stop)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(supervised.pid, signal.SIGTERM)
    with contextlib.suppress(psutil.Error):
        psutil.Process(supervised.pid).wait(15)
    procs.stop(supervised.proc)


# -- one upgrade ------------------------------------------------------------------------


def identity(port: int) -> bytes | None:
    """`whoami`'s reply body: the pid of the code serving it and when it was imported."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=10) as connection:
            connection.sendall(REQUEST)
            received = b""
            while chunk := connection.recv(4096):
                received += chunk
    except OSError:
        return None
    head, _, body = received.partition(b"\r\n\r\n")
    return body.strip() if head.startswith(b"HTTP/1.0 200 OK") and body else None


class Probe(threading.Thread):
    """Polls `whoami` until the reply is another code's: when that reply was complete."""

    def __init__(self, port: int, old: bytes | None, timeout: float) -> None:
        super().__init__(daemon=True)
        self.port, self.old, self.timeout = port, old, timeout
        self.answered: float | None = None
        self.failures = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        deadline = time.perf_counter() + self.timeout
        while not self.stopped.is_set() and time.perf_counter() < deadline:
            got = identity(self.port)
            if got is None:
                self.failures += 1
            elif self.old is not None and got != self.old:
                self.answered = time.perf_counter()
                return
            time.sleep(PROBE_EVERY)


def read_marks(
    proc: Proc, upgrade: Upgrade, wanted: set[str], old_pid: int | None, timeout: float
) -> None:
    """The log lines read since the upgrade began, until every mark in `wanted` (or a
    failure) is seen, or `timeout`; `stopped` is the old supervisor's (`old_pid`) last line."""
    deadline = time.perf_counter() + timeout
    while not wanted <= upgrade.marks.keys() and "failed" not in upgrade.marks:
        try:
            item = proc.lines.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
            return
        if item is None:
            proc.lines.put(None)  # (stays at the end for the next caller)
            return
        read, text = item
        for key, match in MARKS.items():
            if key not in upgrade.marks and match(text):
                upgrade.marks[key] = read
                if key == "failed":
                    upgrade.error = text
        if old_pid is not None and text.endswith(f"supervisor[{old_pid}]: stopped"):
            upgrade.marks["stopped"] = read


def run_command(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`supervisor upgrade` (or it under nsenter), its output captured."""
    return subprocess.run(  # noqa: S603 (our own command)
        command, env=env, capture_output=True, text=True, timeout=UPGRADE_TIMEOUT, check=False
    )


def how_to_upgrade(supervised: Supervised, variant: Variant) -> tuple[list[str] | None, str]:
    """The command that upgrades it (None: SIGUSR2), and a note on how it was chosen. In
    place, `supervisor upgrade` from here is tried first (the supervisor is not serving load
    yet: an upgrade it did is harmless)."""
    command = [SUPERVISOR, "upgrade", "-c", str(supervised.path)]
    if not variant.in_place:
        return command, ""
    outside = run_command(command, supervised.env)
    text = (outside.stderr or outside.stdout).replace(str(supervised.path.parent), "DIR")
    said = text.strip().splitlines()
    note = f"`supervisor upgrade` from outside the namespace: exit status {outside.returncode}"
    note += f" ({said[-1]})" if said else ""
    if outside.returncode == 0:
        supervised.proc.wait_line(lambda line: " ready: " in line, 60)
        return command, note + "; used as is"
    if shutil.which("nsenter"):
        inside = ["nsenter", "-t", str(supervised.pid), "-p", "-m", *command]
        return inside, note + "; run inside it with nsenter -t PID -p -m instead"
    return None, note + "; no nsenter: SIGUSR2 to the supervisor's pid instead"


def upgrade_once(
    supervised: Supervised, variant: Variant, command: list[str] | None
) -> tuple[Upgrade, int]:
    """One upgrade, the probe polling `whoami` meanwhile: the upgrade, the probe's failed
    requests. `supervised.pid` is the new supervisor's afterwards."""
    whoami = supervised.ports["whoami"]
    old = None
    for _ in range(10):
        if (old := identity(whoami)) is not None:
            break
        time.sleep(0.05)
    old_pid = supervised.pid
    supervised.proc.drain()
    probe = Probe(whoami, old, UPGRADE_TIMEOUT)
    probe.start()
    upgrade = Upgrade(time.perf_counter())
    if command is None:
        os.kill(supervised.pid, signal.SIGUSR2)
    else:
        try:
            done = run_command(command, supervised.env)
        except subprocess.TimeoutExpired:
            upgrade.error = f"`supervisor upgrade` still running after {UPGRADE_TIMEOUT:g}s"
        else:
            if done.returncode == 0:
                upgrade.returned = time.perf_counter()
            else:
                said = (done.stderr or done.stdout).strip().splitlines()
                upgrade.error = f"exit status {done.returncode}: {said[-1] if said else ''}"
            if not variant.in_place and (new := re.search(r"upgraded: pid (\d+)", done.stdout)):
                supervised.pid = int(new.group(1))
    wanted = {"took over", "ready", "fork server", "checked" if variant.in_place else "stopped"}
    if upgrade.error:
        wanted = set()  # (what was logged meanwhile: the reason is the command's)
    drained = None if variant.in_place else old_pid
    read_marks(supervised.proc, upgrade, wanted, drained, 30)
    probe.join(0 if upgrade.error else 30)
    probe.stopped.set()
    upgrade.answered = probe.answered
    return upgrade, probe.failures


# -- a variant under load ---------------------------------------------------------------


@dataclass
class Measured:
    variant: Variant
    note: str  # how the upgrades were asked for
    loaded: float  # the clients started
    upgrades: list[Upgrade]
    trips: list[RoundTrip]
    probe_failures: int


def under_load(ctx: Context, supervised: Supervised, variant: Variant, rtt: Path) -> Measured | str:
    command, note = how_to_upgrade(supervised, variant)
    out = ctx.workdir / f"rtt-{variant.key}.bin"
    ports = [supervised.ports[mode] for mode in MODES]
    clients = start_clients(ctx.procs, rtt, out, ports, clients=CLIENTS, interval=INTERVAL)
    if clients is None:
        return "bench/c/rtt.c did not start"
    loaded = time.perf_counter()
    upgrades: list[Upgrade] = []
    probe_failures = 0
    try:
        time.sleep(SETTLE)
        for _ in range(ctx.config.upgrades):
            upgrade, failures = upgrade_once(supervised, variant, command)
            upgrades.append(upgrade)
            probe_failures += failures
            if upgrade.error:
                break  # (the next one would meet the same)
            time.sleep(max(0.0, upgrade.ended - time.perf_counter()) + SETTLE)
    finally:
        trips = stop_clients(ctx.procs, clients, out)
    return Measured(variant, note, loaded, upgrades, trips, probe_failures)


def measure(ctx: Context, variant: Variant) -> Measured | str:
    """The variant's upgrades under load; or why it could not run."""
    rtt = None if ctx.pool.build is None else ctx.pool.build / "rtt"
    if rtt is None or not rtt.exists():
        return "the C client (bench/c/rtt.c) could not be compiled"
    if variant.in_place and shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    print(f"  {variant.name}: {ctx.config.upgrades} upgrades under load ...", flush=True)
    supervised = start(ctx.procs, ctx.workdir, variant)
    if isinstance(supervised, str):
        return supervised
    try:
        return under_load(ctx, supervised, variant, rtt)
    finally:
        stop(ctx.procs, supervised)


# -- the report -------------------------------------------------------------------------


def window_of(trip: RoundTrip, upgrades: Sequence[Upgrade]) -> int | None:
    """The index of the upgrade whose window the round trip overlaps, if any."""
    overlapped = (i for i, u in enumerate(upgrades) if trip.begin < u.ended and trip.end > u.began)
    return next(overlapped, None)


@dataclass
class ModeResult:
    outside: list[float] = field(default_factory=list)  # seconds, sorted once complete
    # per upgrade (by index): its longest round trip, and when it began after the command's start
    inside: dict[int, tuple[float, float]] = field(default_factory=dict)
    count: int = 0  # round trips inside a window
    failures: dict[str, int] = field(default_factory=dict)  # error -> count

    @property
    def longest(self) -> tuple[float, float] | None:
        return max(self.inside.values()) if self.inside else None

    @property
    def typical(self) -> float | None:
        """The median over the upgrades of each one's longest round trip."""
        return statistics.median(v[0] for v in self.inside.values()) if self.inside else None

    def rise(self) -> float | None:
        """The longest round trip in an upgrade window - p99 outside."""
        longest, p99 = self.longest, percentile(self.outside, 0.99)
        return None if longest is None or p99 is None else longest[0] - p99


def by_mode(measured: Measured) -> dict[str, ModeResult]:
    results = {mode: ModeResult() for mode in MODES}
    for trip in measured.trips:
        result = results[MODES[trip.target]]
        if trip.error:
            name = error_name(trip.error)
            result.failures[name] = result.failures.get(name, 0) + 1
            continue
        index = window_of(trip, measured.upgrades)
        if index is not None:
            began = trip.begin - measured.upgrades[index].began
            result.inside[index] = max(result.inside.get(index, (0.0, 0.0)), (trip.seconds, began))
            result.count += 1
        elif trip.begin >= measured.loaded + WARMUP:
            result.outside.append(trip.seconds)
    for result in results.values():
        result.outside.sort()
    return results


INTERVALS: dict[bool, list[tuple[str, str, str | None]]] = {  # in place -> label, key, start
    False: [
        ("`supervisor upgrade` run -> exit 0 (the new one has taken over)", "returned", None),
        ("run -> whoami's first reply from the new supervisor", "answered", None),
        ("run -> 'upgrade: starting' logged (the command's start-up)", "starting", None),
        ("run -> the new one's 'took over' (the switch)", "took over", None),
        ("'starting' -> the new one's 'took over' (its start-up)", "took over", "starting"),
        (
            "the old one's 'took over' -> the new one's 'ready:' (neither accepts)",
            "ready",
            "handed over",
        ),
        ("'took over' -> its fork server ready", "fork server", "took over"),
        ("run -> the old one's 'stopped' (drained)", "stopped", None),
    ],
    True: [
        ("`supervisor upgrade` run -> exit 0 (answered by the new code)", "returned", None),
        ("run -> whoami's first reply from the new code", "answered", None),
        ("run -> 'upgrade: starting' logged (the command's start-up)", "starting", None),
        ("run -> 'checked' (accepting stops)", "checked", None),
        ("'starting' -> 'checked' (the new code checked in a child)", "checked", "starting"),
        ("'checked' -> 'ready:' (not accepting: exec, start-up)", "ready", "checked"),
        ("'checked' -> 'took over' (the new code's start-up)", "took over", "checked"),
        ("'took over' -> its fork server ready", "fork server", "took over"),
    ],
}


def spread(values: Sequence[float]) -> list[str]:
    if not values:
        return ["-", "-", "-"]
    return [f"{v * 1e3:.1f}" for v in (statistics.median(values), min(values), max(values))]


def upgrade_rows(measured: Measured) -> list[list[str]]:
    rows = []
    for label, key, start_mark in INTERVALS[measured.variant.in_place]:
        values = [v for u in measured.upgrades if (v := u.since(key, start_mark)) is not None]
        rows.append([label, *spread(values), str(len(values))])
    return rows


def mode_rows(results: dict[str, ModeResult]) -> list[list[str]]:
    rows = []
    for mode, result in results.items():
        ordered = result.outside
        longest = result.longest
        rise = result.rise()
        worst = None if longest is None or not ordered else longest[0] - ordered[-1]
        rows.append(
            [
                mode,
                f"{len(ordered):,}",
                fmt(percentile(ordered, 0.5), ".2f", 1e3),
                fmt(percentile(ordered, 0.99), ".2f", 1e3),
                fmt(ordered[-1] if ordered else None, ".1f", 1e3),
                f"{result.count:,}",
                fmt(None if longest is None else longest[0], ".1f", 1e3),
                fmt(result.typical, ".1f", 1e3),
                fmt(None if longest is None else longest[1], ".0f", 1e3),
                "-" if rise is None else f"{rise * 1e3:+.1f}",
                "-" if worst is None else f"{worst * 1e3:+.1f}",
                str(sum(result.failures.values())),
            ]
        )
    return rows


def variant_section(measured: Measured) -> Section:
    variant = measured.variant
    results = by_mode(measured)
    done = [u for u in measured.upgrades if not u.error]
    failures = {
        f"{mode} {name}": count
        for mode, result in results.items()
        for name, count in result.failures.items()
    }
    lines = [
        f"-- {variant.name} " + "-" * (96 - len(variant.name)),
        *wrapped(
            (f"{measured.note}. " if measured.note else "")
            + f"{len(done)} of {len(measured.upgrades)} upgrades done"
            + "".join(f"; failed: {u.error}" for u in measured.upgrades if u.error)
            + f"; the probe's failed requests: {measured.probe_failures}"
            + (f"; failed round trips: {failures}" if failures else "")
            + "."
        ),
        "",
        *render(["per upgrade", "median ms", "min ms", "max ms", "n"], upgrade_rows(measured)),
        "",
        *render(
            [
                "mode",
                "outside",
                "p50",
                "p99",
                "max",
                "inside",
                "longest",
                "typical",
                "at",
                "-p99",
                "-max",
                "failed",
            ],
            mode_rows(results),
        ),
        "",
    ]
    return lines, targets(measured, results)


def targets(measured: Measured, results: dict[str, ModeResult]) -> list[Target]:
    name = measured.variant.name
    found: list[Target] = []
    for mode, result in results.items():
        rise = result.rise()
        found.append(
            Target(
                f"{name}, {mode}: longest round trip in an upgrade - p99 outside",
                rise,
                f"< {LIMIT * 1e3:g} ms",
                None if rise is None else rise < LIMIT,
                "-" if rise is None else f"{rise * 1e3:+.1f} ms",
            )
        )
    failed = sum(sum(r.failures.values()) for r in results.values()) + measured.probe_failures
    failed += sum(1 for u in measured.upgrades if u.error)
    found.append(
        Target(
            f"{name}: failed round trips, probe requests and upgrades",
            float(failed),
            "0",
            failed == 0 and bool(measured.trips) and bool(measured.upgrades),
            str(failed),
        )
    )
    returned = [v for u in measured.upgrades if (v := u.since("returned")) is not None]
    value = statistics.median(returned) if returned else None
    found.append(
        Target(
            f"{name}: `supervisor upgrade` to exit 0 (median)",
            value,
            "(info)",
            None,
            fmt(value, ".0f", 1e3) + " ms",
        )
    )
    return found


def run(ctx: Context) -> Section:
    lines = wrapped(
        f"One supervisor: fork, thread, inline and prefork ({PREFORK_WORKERS} workers) servers "
        f"of the exchange, under bench/c/rtt.c: {CLIENTS} client threads per mode, each "
        f"starting a round trip on a new connection every {INTERVAL * 1e3:g} ms at most "
        f"({len(MODES) * CLIENTS / INTERVAL:,.0f}/s in all: the machine keeps CPU to spare "
        "for the new interpreter), each timed; and `whoami` (inline, its pid and when its code "
        f"was imported), polled every {PROBE_EVERY * 1e3:g} ms during an upgrade. "
        f"{ctx.config.upgrades} upgrades per variant, {SETTLE:g} s apart. An upgrade's window: "
        "from the command's start to the last of its exit, whoami's first reply from the new "
        "code, the new code's 'ready:' and fork server, the old supervisor's 'stopped', plus "
        f"{MARGIN * 1e3:g} ms. Times in ms. outside: round trips overlapping no window (after "
        f"the first {WARMUP:g} s), their p50, p99, max; inside: round trips overlapping one; "
        "longest: the longest inside; typical: the median over the upgrades of each one's "
        "longest; at: when the longest began after the command's start; -p99, -max: longest "
        "minus p99 and max outside. The variants: spawned (a new process takes the sockets, "
        "the old one drains); in place, the supervisor PID 1 of a new PID namespace (unshare "
        "--pid --fork --mount-proc), where an upgrade checks the new code in a child, then "
        "stops accepting (clients wait in the listen queue) and execs it. Each runs a copy of "
        "the code compiled to bytecode, as installed code is; the last one, without: "
        "every module compiled from source at import, as in a checkout run with "
        "PYTHONDONTWRITEBYTECODE and no __pycache__ (the other scenarios' supervisors)."
    )
    lines.append("")
    found: list[Target] = []
    for variant in VARIANTS:
        measured = measure(ctx, variant)
        if isinstance(measured, str):
            lines += [f"-- {variant.name}: unavailable: {measured}", ""]
            continue
        section, more = variant_section(measured)
        lines += section
        found += more
    return lines, found


SCENARIO = Scenario("Scenario 10: upgrade under load, spawned and in place (PID 1)", run)
