"""The supervisor against its peers: one command, every contender, interleaved rounds.

Run from the repository root:  .venv/bin/python bench/compare.py [--quick] [--only 1,4,...]

It installs the Debian packages it needs when they are missing and it runs as root (wrk,
xinetd, ucspi-tcp, gcc), compiles the C contenders (bench/c/) into a temporary directory,
starts every contender once, runs each scenario's loads interleaved across the contenders
(A B C A B C ... for several rounds), prints one table per scenario (medians, ratios to the
peers measured in the same rounds, PASS/MISS against the issue's targets) and writes the same
text, with the machine it ran on, to bench/results/compare.txt.

Every contender serves the same tiny exchange on a new TCP connection per request: wrk's GET
(with `Connection: close`) is read, a fixed short HTTP/1.0 reply is written, the server closes.
Loopback only; every load is bounded in time (wrk -d) and in connections (wrk -c); every
process started here runs in its own session and its process group is killed at the end.
Nothing here asserts a time: the targets are reported, never enforced.

Ports: the supervisor, the standard library's servers and the C servers bind port 0 and report
the port; xinetd and tcpserver get a port the harness found free (bound to port 0 and closed
again), which another process could take in between: acceptable for a benchmark.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results" / "compare.txt"
PYTHON = sys.executable
SUPERVISOR = str(Path(sys.executable).parent / "supervisor")
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
REPLY = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
LOOPBACK = "127.0.0.1"
PACKAGES = {"wrk": "wrk", "xinetd": "xinetd", "tcpserver": "ucspi-tcp", "gcc": "gcc"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WRK_THREADS = 2  # at most: wrk -t is min(this, connections)
PREFORK_WORKERS = os.cpu_count() or 1  # the default of `workers`: one per CPU
FLOOD_CLIENTS = 32  # scenario 5: clients kept on the slow server (max_children 2)
ISOLATION_CLIENTS = 1  # scenario 5: clients measuring the other servers' latency
SLOW_MAX_CHILDREN = 2
RELOAD_SERVERS = 100


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    seconds: float
    warmup: float  # seconds; wrk -d takes whole seconds, 1 at least
    concurrencies: tuple[int, ...]
    many_sizes: tuple[int, ...]
    idle_seconds: float
    reloads: int
    scrapes: int


def settings(quick: bool, rounds: int | None, seconds: float | None) -> Settings:
    if quick:
        base = Settings(True, 1, 1.0, 1.0, (8,), (1, 100, 1000), 3.0, 5, 10)
    else:
        base = Settings(False, 5, 3.0, 1.0, (8, 64), (1, 100, 1000), 10.0, 20, 50)
    return Settings(
        base.quick,
        rounds or base.rounds,
        seconds or base.seconds,
        base.warmup,
        base.concurrencies,
        base.many_sizes,
        base.idle_seconds,
        base.reloads,
        base.scrapes,
    )


# -- processes ------------------------------------------------------------------------------


class Proc:
    """A process in its own session; its output lines are read by threads, timestamped."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.popen = subprocess.Popen(  # noqa: S603 (argv built here from fixed parts)
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env=env,
        )
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.tail: list[str] = []
        self.out: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, keep), daemon=True)
            for stream, keep in ((self.popen.stdout, self.out), (self.popen.stderr, self.tail))
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self, stream: object, keep: list[str]) -> None:
        assert stream is not None  # noqa: S101 (PIPE)
        for raw in stream:  # type: ignore[attr-defined]
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.put((time.perf_counter(), line))
            keep.append(line)
            del keep[:-200]
        self.lines.put(None)

    def wait_line(self, match: Callable[[str], bool], timeout: float) -> tuple[float, str] | None:
        """The next line (from now on) that matches, with when it was read; None at the end of
        the output or after `timeout`."""
        deadline = time.perf_counter() + timeout
        while (left := deadline - time.perf_counter()) > 0:
            try:
                item = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if item is None:
                self.lines.put(None)  # stays at the end for the next caller
                return None
            if match(item[1]):
                return item
        return None

    def drain(self) -> None:
        """Forget the lines read so far."""
        with contextlib.suppress(queue.Empty):
            while True:
                item = self.lines.get_nowait()
                if item is None:
                    self.lines.put(None)
                    return

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 5 s."""
        for signum, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signum)
            try:
                self.popen.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # Whatever is left of the group (a child that outlived its parent).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        for reader in self._readers:
            reader.join(2)


class Processes:
    """Every process started, stopped in reverse order at the end."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, env)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()


def wait_quietly(proc: Proc, timeout: float) -> None:
    """Wait for a bounded program to end (it is stopped by the caller either way)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def exchange(port: int, timeout: float = 2.0) -> bool:
    """One request on a new connection: True if the reply is the expected one."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as connection:
            connection.sendall(REQUEST)
            received = b""
            while chunk := connection.recv(4096):
                received += chunk
    except OSError:
        return False
    return received == REPLY


def wait_serving(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exchange(port):
            return True
        time.sleep(0.05)
    return False


# -- measuring ------------------------------------------------------------------------------


def listen_overflows() -> int:
    """TcpExt ListenOverflows of this network namespace (/proc/net/netstat)."""
    with open("/proc/net/netstat", encoding="ascii") as netstat:
        rows = [line.split() for line in netstat if line.startswith("TcpExt:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["ListenOverflows"])


def settle_overflows(quiet: float = 0.3, limit: float = 3.0) -> None:
    """Wait (at most `limit` s) until ListenOverflows has not moved for `quiet` s: the counter is
    the namespace's, and a listen queue that overflowed in one load keeps counting for a moment
    after it (late ACKs), which would land in the next contender's row."""
    deadline = time.monotonic() + limit
    last, since = listen_overflows(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = listen_overflows()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def tree_usage(pid: int) -> tuple[float, int]:
    """CPU seconds (utime+stime+cutime+cstime) and minor faults (minflt+cminflt) of a process
    and of all its live descendants: reaped children are in their parent's c* fields, live ones
    are counted themselves, so a difference of two readings counts each child once."""
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0.0, 0
    cpu, faults = 0.0, 0
    for proc in procs:
        try:
            with open(f"/proc/{proc.pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        faults += int(fields[7]) + int(fields[8])
        cpu += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
    return cpu, faults


@dataclass(frozen=True)
class Sample:
    """One bounded load on one contender (or one run of the fork floor)."""

    requests: int
    rps: float
    p50: float | None  # seconds
    p99: float | None
    errors: int  # wrk's socket errors (connect, read, write, timeout) and non-2xx replies
    overflows: int  # ListenOverflows during the run
    cpu: float | None  # CPU seconds per request of the server's process tree
    faults: float | None  # minor page faults per request


FLOOR_RSS: list[int] = []  # the fork floor's resident size, every run


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(text: str) -> tuple[int, float, float | None, float | None, int]:
    requests = re.search(r"(\d+) requests in", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    percentiles: dict[str, float] = {}
    for share, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        percentiles[share] = float(value) * UNITS[unit]
    errors = 0
    if socket_errors := re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(count) for count in socket_errors.groups())
    if non_2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors += int(non_2xx.group(1))
    return (
        int(requests.group(1)) if requests else 0,
        float(rps.group(1)) if rps else 0.0,
        percentiles.get("50") if requests and int(requests.group(1)) else None,
        percentiles.get("99") if requests and int(requests.group(1)) else None,
        errors,
    )


def wrk_argv(port: int, connections: int, seconds: float, timeout: float = 5.0) -> list[str]:
    return [
        "wrk",
        f"-t{min(WRK_THREADS, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout:g}s",
        "--latency",
        "-H",
        "Connection: close",
        f"http://{LOOPBACK}:{port}/",
    ]


def run_wrk(procs: Processes, port: int, connections: int, seconds: float) -> str:
    proc = procs.start("wrk", wrk_argv(port, connections, seconds))
    wait_quietly(proc, seconds + 20)
    procs.stop(proc)
    return "\n".join(proc.out)


def load(procs: Processes, server_pid: int, port: int, connections: int, seconds: float) -> Sample:
    """wrk on `port`, with the server's CPU, faults and the ListenOverflows around it."""
    settle_overflows()
    overflows = listen_overflows()
    cpu, faults = tree_usage(server_pid)
    text = run_wrk(procs, port, connections, seconds)
    cpu_after, faults_after = tree_usage(server_pid)
    overflows = listen_overflows() - overflows
    requests, rps, p50, p99, errors = parse_wrk(text)
    return Sample(
        requests,
        rps,
        p50,
        p99,
        errors,
        overflows,
        (cpu_after - cpu) / requests if requests else None,
        (faults_after - faults) / requests if requests else None,
    )


def fork_floor(procs: Processes, seconds: float) -> Sample:
    proc = procs.start("fork floor", [PYTHON, str(BENCH / "fork_floor.py"), f"{seconds:g}"])
    wait_quietly(proc, seconds + 30)
    procs.stop(proc)
    result = json.loads(proc.out[-1]) if proc.out else {"forks": 0}
    FLOOR_RSS.append(int(result.get("rss", 0)))
    forks = int(result["forks"])
    if not forks:
        return Sample(0, 0.0, None, None, 1, 0, None, None)
    return Sample(
        forks,
        forks / float(result["seconds"]),
        None,
        None,
        0,
        0,
        float(result["cpu"]) / forks,
        int(result["minflt"]) / forks,
    )


# -- contenders -----------------------------------------------------------------------------


@dataclass
class Contender:
    key: str
    label: str
    proc: Proc | None  # None: the fork floor, a program run per round
    port: int = 0  # where the load goes
    pid: int = 0  # the process whose tree is accounted
    ports: dict[str, int] = field(default_factory=dict)  # a supervisor's servers
    metrics_port: int | None = None


class Unavailable(Exception):
    pass


@dataclass(frozen=True)
class SupervisorSpec:
    """A supervisor configuration: the loaded server `bench`, and `idle` other servers."""

    mode: str
    idle: int = 0
    extra: str = ""  # more keys for `bench`
    servers: str = ""  # more [servers.*] tables

    def text(self) -> str:
        lines = [
            "[supervisor]",
            'log_level = "info"',
            "shutdown_timeout = 1",
            "kill_grace = 1",
            "",
            "[metrics]",
            f'address = "tcp://{LOOPBACK}:0"',
            "",
            "[servers.bench]",
            f'address = "tcp://{LOOPBACK}:0"',
            'handler = "bench.handler:Handler"',
            f'mode = "{self.mode}"',
            self.extra,
            "",
        ]
        for index in range(self.idle):
            lines += [
                f"[servers.idle{index:04d}]",
                f'address = "tcp://{LOOPBACK}:0"',
                'handler = "bench.handler:Handler"',
                "",
            ]
        return "\n".join(lines) + self.servers


LISTENING = re.compile(r"INFO supervisor\[\d+\]: (\S+): listening on tcp://127\.0\.0\.1:(\d+) ")


def start_supervisor(
    procs: Processes, workdir: Path, key: str, label: str, spec: SupervisorSpec
) -> Contender:
    path = workdir / f"{key}.toml"
    path.write_text(spec.text(), encoding="utf-8")
    proc = start_supervisor_file(procs, key, path)
    contender = Contender(key, label, proc, pid=proc.pid)
    ready = None
    while ready is None:
        item = proc.wait_line(lambda line: "listening on" in line or "ready:" in line, 120)
        if item is None:
            break
        if " ready: " in item[1]:
            ready = item
        elif match := LISTENING.search(item[1] + " "):
            if match.group(1) == "metrics":
                contender.metrics_port = int(match.group(2))
            else:
                contender.ports[match.group(1)] = int(match.group(2))
    if ready is None:
        reason = next(
            (line for line in reversed(proc.tail) if line.strip()), "no 'ready:' line within 120 s"
        )
        status = proc.popen.poll()
        procs.stop(proc)
        raise Unavailable(f"exit status {status}: {reason}" if status is not None else reason)
    contender.port = contender.ports.get("bench", 0)
    return contender


def start_supervisor_file(procs: Processes, key: str, path: Path) -> Proc:
    # Run as root (it installs its tools), like the peers it is compared with: let it.
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", SUPERVISOR_ALLOW_ROOT="1"
    )
    return procs.start(key, [SUPERVISOR, "run", "-c", str(path)], env)


def start_printing_port(procs: Processes, key: str, label: str, argv: Sequence[str]) -> Contender:
    """A server that prints `listening on PORT` on stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    proc = procs.start(key, argv, env)
    item = proc.wait_line(lambda line: line.startswith("listening on "), 30)
    if item is None:
        procs.stop(proc)
        raise Unavailable(proc.tail[-1] if proc.tail else "no port printed")
    return Contender(key, label, proc, port=int(item[1].split()[-1]), pid=proc.pid)


def start_xinetd(procs: Processes, workdir: Path, responder: Path) -> Contender:
    xinetd = shutil.which("xinetd") or "/usr/sbin/xinetd"
    if not Path(xinetd).exists():
        raise Unavailable("xinetd is not installed")
    if os.geteuid() != 0:
        raise Unavailable("xinetd with user = root needs root")
    port = free_port()
    unlimited = [
        "    instances = UNLIMITED",
        "    per_source = UNLIMITED",
        "    cps = 100000 1",  # never disables the service for a burst of connections
    ]
    config = workdir / "xinetd.conf"
    config.write_text(
        "\n".join(
            [
                "defaults",
                "{",
                *unlimited,
                "    log_on_success =",
                "    log_on_failure =",
                "}",
                "service bench",
                "{",
                "    type = UNLISTED",
                "    socket_type = stream",
                "    protocol = tcp",
                "    wait = no",
                "    user = root",
                f"    bind = {LOOPBACK}",
                f"    port = {port}",
                f"    server = {responder}",
                *unlimited,
                "    log_on_success =",
                "    log_on_failure =",
                "}",
                "",
            ]
        ),
        encoding="utf-8",
    )
    argv = [xinetd, "-dontfork", "-f", str(config), "-pidfile", str(workdir / "xinetd.pid")]
    proc = procs.start("xinetd", argv)
    return Contender("xinetd", "xinetd + C responder", proc, port=port, pid=proc.pid)


def start_tcpserver(procs: Processes, responder: Path) -> Contender:
    if shutil.which("tcpserver") is None:
        raise Unavailable("tcpserver (ucspi-tcp) is not installed")
    port = free_port()
    argv = ["tcpserver", "-c", "1000", "-b", "1024", "-H", "-R", "-l", "0", LOOPBACK, str(port)]
    proc = procs.start("tcpserver", [*argv, str(responder)])
    return Contender("tcpserver", "tcpserver + C responder", proc, port=port, pid=proc.pid)


class Pool:
    """The contenders, each started on first use and kept for the whole run."""

    def __init__(self, procs: Processes, workdir: Path, build: Path | None) -> None:
        self.procs = procs
        self.workdir = workdir
        self.build = build
        self.running: dict[str, Contender] = {}
        self.unavailable: dict[str, str] = {}

    LABELS: dict[str, str] = {  # noqa: RUF012 (read only)
        "sv-fork": "supervisor fork",
        "sv-prefork": f"supervisor prefork ({PREFORK_WORKERS} workers)",
        "sv-thread": "supervisor thread",
        "sv-inline": "supervisor inline",
        "std-fork": "stdlib ForkingTCPServer",
        "std-fork-q": "stdlib ForkingTCPServer, backlog 1024",
        "std-thread": "stdlib ThreadingTCPServer",
        "std-thread-q": "stdlib ThreadingTCPServer, backlog 1024",
        "std-plain": "stdlib TCPServer",
        "xinetd": "xinetd + C responder (fork+exec)",
        "tcpserver": "tcpserver + C responder (fork+exec)",
        "c-fork": "C accept+fork (ceiling)",
        "c-inline": "C accept loop, inline (ceiling)",
        "floor": "CPython fork floor (fork+_exit+waitpid)",
    }

    @staticmethod
    def label(key: str) -> str:
        if key.startswith("many-"):
            _, size, mode = key.split("-")
            return f"supervisor {mode}, {size} servers"
        return Pool.LABELS[key]

    def get(self, key: str) -> Contender | None:
        if key in self.running:
            return self.running[key]
        if key in self.unavailable:
            return None
        print(f"  starting {self.label(key)} ...", flush=True)
        try:
            contender = self._start(key)
            if contender.proc is not None and not wait_serving(contender.port):
                reason = "does not answer the exchange"
                if contender.proc.tail:
                    reason += f": {contender.proc.tail[-1]}"
                self.procs.stop(contender.proc)
                raise Unavailable(reason)  # noqa: TRY301 (handled just below, like the others)
        except Unavailable as exc:
            self.unavailable[key] = str(exc)
            print(f"  {self.label(key)}: unavailable ({exc})", flush=True)
            return None
        self.running[key] = contender
        return contender

    def _start(self, key: str) -> Contender:
        label = self.label(key)
        modes = {"sv-fork": "fork", "sv-thread": "thread", "sv-inline": "inline"}
        spec = None
        if key in modes:
            spec = SupervisorSpec(modes[key])
        elif key == "sv-prefork":
            spec = SupervisorSpec("prefork", extra=f"workers = {PREFORK_WORKERS}")
        elif key.startswith("many-"):
            _, size, mode = key.split("-")
            spec = SupervisorSpec(mode, idle=int(size) - 1)
        if spec is not None:
            return start_supervisor(self.procs, self.workdir, key, label, spec)
        stdlib = {
            "std-fork": ["forking"],
            "std-fork-q": ["forking", "1024"],
            "std-thread": ["threading"],
            "std-thread-q": ["threading", "1024"],
            "std-plain": ["plain"],
        }
        if key in stdlib:
            argv = [PYTHON, str(BENCH / "stdlib_server.py"), *stdlib[key]]
            return start_printing_port(self.procs, key, label, argv)
        if key == "floor":
            return Contender(key, label, None)
        return self._start_c(key, label)

    def _start_c(self, key: str, label: str) -> Contender:
        if self.build is None:
            raise Unavailable("the C programs could not be compiled (gcc)")
        if key in ("c-fork", "c-inline"):
            argv = [str(self.build / "server"), key.removeprefix("c-"), "0"]
            return start_printing_port(self.procs, key, label, argv)
        if key == "xinetd":
            return start_xinetd(self.procs, self.workdir, self.build / "responder")
        if key == "tcpserver":
            return start_tcpserver(self.procs, self.build / "responder")
        raise Unavailable(f"unknown contender {key}")

    def measure(self, key: str, connections: int, seconds: float) -> Sample | None:
        contender = self.get(key)
        if contender is None:
            return None
        if contender.proc is None:
            return fork_floor(self.procs, seconds)
        return load(self.procs, contender.pid, contender.port, connections, seconds)


# -- scenarios 1-4: throughput, interleaved -------------------------------------------------

Cell = tuple[str, int]  # (contender, connections); connections 0: the fork floor


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


def fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, 100)


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """A plain-text table: the first `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        cells = [
            str(cell).ljust(width) if index < left else str(cell).rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(headers), line(["-" * width for width in widths]), *map(line, rows)]


@dataclass(frozen=True)
class Target:
    what: str
    value: float | None
    goal: str
    ok: bool | None
    shown: str = ""


def at_least(what: str, value: float | None, goal: float, unit: str = "x") -> Target:
    shown = fmt(value, ".2f") + (unit if value is not None else "")
    return Target(
        what, value, f">= {goal:g}{unit}", None if value is None else value >= goal, shown
    )


def at_most(what: str, value: float | None, goal: float, unit: str = "x") -> Target:
    shown = fmt(value, ".2f") + (unit if value is not None else "")
    return Target(
        what, value, f"<= {goal:g}{unit}", None if value is None else value <= goal, shown
    )


def below_ms(what: str, seconds: float | None, limit_ms: float, digits: int = 1) -> Target:
    """A time in seconds against a limit in milliseconds."""
    return Target(
        what,
        seconds,
        f"< {limit_ms:g} ms",
        None if seconds is None else seconds * 1e3 < limit_ms,
        fmt(seconds, f".{digits}f", 1e3) + " ms",
    )


def targets_table(targets: Sequence[Target]) -> list[str]:
    rows = [
        [
            target.what,
            target.shown or fmt(target.value, ".2f"),
            target.goal,
            "n/a" if target.ok is None else "PASS" if target.ok else "MISS",
        ]
        for target in targets
    ]
    return render(["target", "measured", "goal", "result"], rows)


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
        ratio = paired(got, samples.get(reference, []), rps) if reference else None
        row.append(fmt(ratio, ".2f"))
        rows.append(row)
    # An unavailable row has fewer cells: pad it, its reason stays in the req/s column.
    width = len(headers)
    padded = [row + [""] * (width - len(row)) for row in rows]
    title = [f"ratio: over {pool.label(reference[0])}"] if reference else []
    return [*title, *render(headers, padded)]


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


def scenario_1(ctx: "Context") -> tuple[list[str], list[Target]]:
    pool, samples, config = ctx.pool, ctx.samples, ctx.config
    lines: list[str] = []
    targets: list[Target] = []
    floor = samples.get(("floor", 0), [])
    ours_pid = pool.running["sv-fork"].pid if "sv-fork" in pool.running else None
    if FLOOR_RSS and ours_pid is not None:
        supervisor = psutil.Process(ours_pid)
        forking = [
            process.memory_info().rss / 2**20
            for process in supervisor.children()
            if is_fork_server(process)
        ]
        lines += wrapped(
            f"Sizes: the fork floor's process {statistics.median(FLOOR_RSS) / 2**20:.1f} MiB RSS, "
            f"the fork-mode supervisor's {supervisor.memory_info().rss / 2**20:.1f} MiB (they "
            "should be close: the floor is what forking from the supervisor would allow); "
            + (
                f"its fork server's {forking[0]:.1f} MiB (what its children are forked from)."
                if forking
                else "no fork server running."
            )
        )
    for connections in config.concurrencies:
        keys = ["sv-fork", "std-fork", "std-fork-q", "c-fork", "xinetd", "tcpserver"]
        cells = [(key, connections) for key in keys] + [("floor", 0)]
        lines += ["", f"concurrency {connections}:"]
        lines += load_table(pool, samples, cells, ("std-fork", connections), faults=True)
        ours = samples.get(("sv-fork", connections), [])
        stdlib = samples.get(("std-fork", connections), [])
        targets += [
            at_least(
                f"c={connections}: fork / ForkingTCPServer, req/s", paired(ours, stdlib, rps), 1.3
            ),
            at_most(
                f"c={connections}: fork / ForkingTCPServer, p99", paired(ours, stdlib, p99), 0.8
            ),
            at_least(f"c={connections}: fork / CPython fork floor", paired(ours, floor, rps), 0.8),
        ]
        informative = [
            ("std-fork-q", "ForkingTCPServer backlog 1024"),
            ("c-fork", "C accept+fork"),
        ]
        for key, name in informative:
            value = paired(ours, samples.get((key, connections), []), rps)
            targets.append(
                Target(
                    f"c={connections}: fork / {name}, req/s",
                    value,
                    "(info)",
                    None,
                    fmt(value, ".2f") + "x",
                )
            )
    return lines, targets


def scenario_2(ctx: "Context") -> tuple[list[str], list[Target]]:
    pool, samples, config = ctx.pool, ctx.samples, ctx.config
    connections = config.concurrencies[0]
    cells = [(key, connections) for key in ("sv-prefork", "c-inline", "tcpserver", "sv-fork")]
    lines = ["", f"concurrency {connections}:"]
    lines += load_table(pool, samples, cells, ("c-inline", connections), faults=True)
    ours = samples.get(("sv-prefork", connections), [])
    targets = [
        at_least(
            "prefork / C inline server, req/s",
            paired(ours, samples.get(("c-inline", connections), []), rps),
            0.8,
        ),
        at_least(
            "prefork / tcpserver, req/s",
            paired(ours, samples.get(("tcpserver", connections), []), rps),
            10,
        ),
    ]
    return lines, targets


def scenario_3(ctx: "Context") -> tuple[list[str], list[Target]]:
    pool, samples, config = ctx.pool, ctx.samples, ctx.config
    connections = config.concurrencies[0]
    keys = ("sv-thread", "std-thread", "std-thread-q", "sv-inline", "std-plain", "c-inline")
    cells = [(key, connections) for key in keys]
    lines = ["", f"concurrency {connections}:"]
    lines += load_table(pool, samples, cells, ("std-thread", connections), faults=True)

    def ratio(a: str, b: str) -> float | None:
        return paired(samples.get((a, connections), []), samples.get((b, connections), []), rps)

    targets = [
        at_least("thread / ThreadingTCPServer, req/s", ratio("sv-thread", "std-thread"), 1.0),
        at_least("inline / TCPServer, req/s", ratio("sv-inline", "std-plain"), 0.9),
        Target(
            "thread / ThreadingTCPServer backlog 1024",
            ratio("sv-thread", "std-thread-q"),
            "(info)",
            None,
            fmt(ratio("sv-thread", "std-thread-q"), ".2f") + "x",
        ),
    ]
    return lines, targets


def many_key(size: int, mode: str) -> str:
    return f"sv-{mode}" if size == 1 else f"many-{size}-{mode}"


def scenario_4_cells(config: Settings) -> list[Cell]:
    connections = config.concurrencies[0]
    return [
        (many_key(size, mode), connections)
        for mode in ("fork", "inline")
        for size in config.many_sizes
    ]


def scenario_4(ctx: "Context") -> tuple[list[str], list[Target]]:
    pool, samples, config = ctx.pool, ctx.samples, ctx.config
    connections = config.concurrencies[0]
    lines: list[str] = ["", f"Load on one server (concurrency {connections}), the others idle:"]
    targets = []
    for mode in ("fork", "inline"):
        cells = [(many_key(size, mode), connections) for size in config.many_sizes]
        lines += load_table(pool, samples, cells, cells[0], faults=True)
        single = samples.get(cells[0], [])
        for size, cell in zip(config.many_sizes[1:], cells[1:], strict=True):
            value = paired(samples.get(cell, []), single, rps)
            targets.append(at_least(f"{mode}: {size} servers / 1 server, req/s", value, 0.9))
        lines.append("")
    idle_lines, idle_targets = idle_wakeups(pool, config)
    return lines + idle_lines, targets + idle_targets


def idle_wakeups(pool: Pool, config: Settings) -> tuple[list[str], list[Target]]:
    """Context switches of idle supervisors over the same window, side by side."""
    keys = [many_key(size, "fork") for size in config.many_sizes]
    live = [(key, pool.get(key)) for key in keys]
    before: dict[str, tuple[int, int]] = {}
    time.sleep(1.0)  # the last load's children reaped, the last scrape answered
    for key, contender in live:
        if contender is not None:
            switches = psutil.Process(contender.pid).num_ctx_switches()
            before[key] = (switches.voluntary, switches.involuntary)
    time.sleep(config.idle_seconds)
    rows = []
    counts: dict[str, int] = {}
    for key, contender in live:
        if contender is None or key not in before:
            rows.append([pool.label(key), "unavailable", ""])
            continue
        switches = psutil.Process(contender.pid).num_ctx_switches()
        voluntary = switches.voluntary - before[key][0]
        counts[key] = voluntary
        rows.append([pool.label(key), str(voluntary), str(switches.involuntary - before[key][1])])
    lines = [
        *wrapped(
            f"Idle: context switches of the supervisor process over {config.idle_seconds:g} s, "
            "all measured over the same window (psutil num_ctx_switches; every wake-up from a "
            "sleep is a voluntary switch):"
        ),
        *render(["contender", "voluntary", "involuntary"], rows),
    ]
    biggest = keys[-1]
    value = counts.get(biggest)
    targets = [
        Target(
            f"idle {config.many_sizes[-1]} servers, {config.idle_seconds:g} s: wake-ups",
            value,
            "0",
            None if value is None else value == 0,
            "-" if value is None else str(value),
        )
    ]
    return lines, targets


# -- scenario 5: isolation ------------------------------------------------------------------


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


# flood kind -> the server flooded; "" is a port nobody listens on (the kernel refuses each
# connection: what such a flood costs this machine without any server's work in it)
ISOLATION_FLOODS = {
    "slow server flooded": "slow",
    "rejected clients flood": "denied",
    "refused by the kernel": "",
}


def isolation_results(
    modes: list[str],
    calm: dict[str, list[Sample]],
    flooded: dict[str, dict[str, list[Sample]]],
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
            rises = [
                b.p99 - a.p99
                for a, b in zip(calm[mode], flooded[kind][mode], strict=True)
                if a.p99 is not None and b.p99 is not None
            ]
            rise = statistics.median(rises) if rises else None
            if not target:  # the reference, not a target
                continue
            what = "flooded" if target == "slow" else "during a flood of rejected clients"
            targets.append(
                Target(
                    f"{mode} server: p99 {what} - p99 calm (median of pairs)",
                    rise,
                    "< 1 ms",
                    None if rise is None else rise < 1e-3,
                    "-" if rise is None else f"{rise * 1e3:+.3f} ms",
                )
            )
    return rows, targets


def scenario_5(ctx: "Context") -> tuple[list[str], list[Target]]:
    procs, workdir, config = ctx.procs, ctx.workdir, ctx.config
    try:
        contender = start_supervisor(procs, workdir, "isolation", "isolation", isolation_spec())
    except Unavailable as exc:
        return [f"unavailable: {exc}"], []
    probed = {"inline": contender.port, "fork": contender.ports["fastfork"]}
    calm: dict[str, list[Sample]] = {mode: [] for mode in probed}
    flooded = {kind: {mode: list[Sample]() for mode in probed} for kind in ISOLATION_FLOODS}
    flood_rps: list[float] = []
    try:
        for port in probed.values():
            wait_serving(port)
        for _ in range(config.rounds):
            for mode, port in probed.items():
                calm[mode].append(
                    load(procs, contender.pid, port, ISOLATION_CLIENTS, config.seconds)
                )
            for kind, target in ISOLATION_FLOODS.items():
                flood_seconds = len(probed) * (config.seconds + 0.5) + 1
                flooded_port = contender.ports[target] if target else free_port()
                flood = procs.start(
                    "flood", wrk_argv(flooded_port, FLOOD_CLIENTS, flood_seconds, timeout=30)
                )
                time.sleep(0.5)  # the slow server at max_children, its queue filling
                for mode, port in probed.items():
                    flooded[kind][mode].append(
                        load(procs, contender.pid, port, ISOLATION_CLIENTS, config.seconds)
                    )
                wait_quietly(flood, flood_seconds + 30)
                procs.stop(flood)
                if target == "slow":
                    flood_rps.append(parse_wrk("\n".join(flood.out))[1])
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


# -- scenario 6: reload ---------------------------------------------------------------------


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


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def serve_poll(port: int, timeout: float) -> tuple[float, float] | None:
    """Connect to `port` every 0.2 ms until a connection is accepted by the kernel, then do the
    exchange on it: when the connection succeeded and when the reply was complete."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2.0) as connection:
                connected = time.perf_counter()
                connection.sendall(REQUEST)
                received = b""
                while chunk := connection.recv(4096):
                    received += chunk
                if received == REPLY:
                    return connected, time.perf_counter()
        except OSError:
            pass
        time.sleep(0.0002)
    return None


@dataclass
class Reloads:
    connected: list[float] = field(default_factory=list)  # SIGHUP -> connect() succeeds
    served: list[float] = field(default_factory=list)  # SIGHUP -> the added server answers
    logged: list[float] = field(default_factory=list)  # SIGHUP -> 'reloaded:' (adding)
    removed: list[float] = field(default_factory=list)  # SIGHUP -> 'reloaded:' (removing)
    loaded: int = 0  # adding reloads while wrk was still running
    failures: int = 0


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


def scenario_6(ctx: "Context") -> tuple[list[str], list[Target]]:
    procs, workdir, config = ctx.procs, ctx.workdir, ctx.config
    path = workdir / "reload.toml"
    path.write_text(reload_config(None), encoding="utf-8")
    proc = start_supervisor_file(procs, "reload", path)
    try:
        if proc.wait_line(lambda line: " ready: " in line, 120) is None:
            return [f"unavailable: {proc.tail[-1] if proc.tail else 'no ready line'}"], []
        port = next(
            int(match.group(2))
            for line in proc.tail
            if (match := LISTENING.search(line + " ")) and match.group(1) == "bench"
        )
        wait_serving(port)
        pace = 0.25
        under_load = max(2, round(config.reloads * pace + 2))
        wrk = procs.start("wrk", wrk_argv(port, 8, under_load))
        time.sleep(0.3)
        done = reload_rounds(proc, path, wrk, config.reloads, pace)
        wait_quietly(wrk, under_load + 20)
        procs.stop(wrk)
        wrk_text = "\n".join(wrk.out)
        requests, rate, _, _, errors = parse_wrk(wrk_text)
        kinds = re.search(r"Socket errors: (.*)", wrk_text)
    finally:
        procs.stop(proc)

    def stats(values: Sequence[float]) -> list[str]:
        if not values:
            return ["-", "-", "-"]
        return [
            f"{statistics.median(values) * 1e3:.1f}",
            f"{min(values) * 1e3:.1f}",
            f"{max(values) * 1e3:.1f}",
        ]

    rows = [
        ["SIGHUP -> connect() to the added server succeeds", *stats(done.connected)],
        ["SIGHUP -> 'reloaded:' log line read (adding)", *stats(done.logged)],
        ["SIGHUP -> the added server's reply complete", *stats(done.served)],
        ["SIGHUP -> 'reloaded:' log line read (removing)", *stats(done.removed)],
    ]
    lines = [
        *wrapped(
            f"A {RELOAD_SERVERS}-server configuration (fork mode) reloaded {config.reloads} times "
            "with SIGHUP, adding one server (inline mode) on a new port, each followed by a "
            "reload removing it again. A connect() succeeds once the new socket listens (bound "
            "while the new configuration is prepared, before the switch); the 'reloaded:' line "
            "is logged after the switch; the reply needs the loop to serve the new server. "
            f"wrk -c8 on an unchanged fork-mode server meanwhile: {requests:,} requests "
            f"({rate:,.0f}/s), {errors} failed"
            + (f" ({kinds.group(1).strip()})" if kinds else "")
            + f"; {done.loaded} of the adding reloads happened "
            f"under load; {done.failures} reloads failed."
        ),
        "",
        *render(["interval", "median ms", "min ms", "max ms"], rows),
    ]
    reload_time = statistics.median(done.logged) if done.logged else None
    served = statistics.median(done.served) if done.served else None
    return lines, [
        below_ms(
            f"reload of {RELOAD_SERVERS} servers: SIGHUP to 'reloaded:' (median)", reload_time, 50
        ),
        below_ms(f"reload of {RELOAD_SERVERS} servers: SIGHUP to the reply (median)", served, 50),
        Target(
            "failed connections on an unchanged server during reloads",
            float(errors),
            "0",
            errors == 0 and requests > 0 and done.failures == 0,
            str(errors),
        ),
    ]


# -- scenario 7: memory ---------------------------------------------------------------------


def held_child(contender: Contender, timeout: float = 3.0) -> tuple[socket.socket, int] | None:
    """Open a connection without sending the request: the child that serves it waits in recv.
    Returns the connection and the new child's pid."""
    parent = psutil.Process(contender.pid)
    # (recursive: the supervisor's fork children are its fork server's)
    known = {child.pid for child in parent.children(recursive=True)}
    connection = socket.create_connection((LOOPBACK, contender.port), timeout=2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [child.pid for child in parent.children(recursive=True) if child.pid not in known]
        if new:
            time.sleep(0.1)  # past the fork, in the handler's recv
            return connection, new[0]
        time.sleep(0.005)
    connection.close()
    return None


def is_fork_server(process: psutil.Process) -> bool:
    """The supervisor's fork server (supervisor/forkserver.py), not a request's child."""
    try:
        return any(arg.endswith("forkserver.py") for arg in process.cmdline())
    except psutil.Error:  # gone, or a zombie: a child exiting
        return False


def memory_of(pid: int) -> tuple[int, int]:
    info = psutil.Process(pid).memory_full_info()
    return int(info.rss), int(info.uss)


def scenario_7(ctx: "Context") -> tuple[list[str], list[Target]]:
    pool, config = ctx.pool, ctx.config
    mib = 1 << 20
    rows = []
    keys = ["sv-fork", "std-fork", many_key(config.many_sizes[-1], "fork"), "sv-prefork"]
    keys += ["sv-thread", "sv-inline"]
    for key in keys:
        contender = pool.get(key)
        if contender is None:
            rows.append([pool.label(key), f"unavailable: {pool.unavailable.get(key, '')}"])
            continue
        rss, uss = memory_of(contender.pid)
        child = "-"
        fork_servers = [p for p in psutil.Process(contender.pid).children() if is_fork_server(p)]
        if key == "sv-prefork":
            workers = psutil.Process(contender.pid).children()
            sizes = sorted(memory_of(worker.pid)[1] for worker in workers)
            if sizes:
                child = (
                    f"{len(sizes)} workers: USS {statistics.median(sizes) / mib:.2f} MiB each "
                    f"(median), RSS {memory_of(workers[0].pid)[0] / mib:.1f} MiB"
                )
        elif "fork" in key:
            samples = []
            for _ in range(3):
                held = held_child(contender)
                if held is None:
                    continue
                connection, pid = held
                try:
                    samples.append(memory_of(pid))
                finally:
                    connection.close()
                time.sleep(0.05)
            if samples:
                child_rss = statistics.median(sample[0] for sample in samples)
                child_uss = statistics.median(sample[1] for sample in samples)
                child = f"live child: USS {child_uss / mib:.2f} MiB, RSS {child_rss / mib:.1f} MiB"
            for fork_server in fork_servers:
                server_rss, server_uss = memory_of(fork_server.pid)
                child += (
                    f"; fork server: USS {server_uss / mib:.1f} MiB, RSS {server_rss / mib:.1f} MiB"
                )
        rows.append([pool.label(key), f"{rss / mib:.1f}", f"{uss / mib:.1f}", child])
    padded = [row + [""] * (4 - len(row)) for row in rows]
    lines = [
        *wrapped(
            "The server process's RSS and USS (psutil memory_full_info), and a child's: a "
            "request held open (connected, request not sent) so that its child waits in recv; "
            "median of 3. USS is the memory only that process has (what a child really costs; a "
            "parent's pages shared with live children or workers are not in its USS); a child's "
            "RSS counts the pages it shares copy-on-write with the parent."
        ),
        "",
        *render(["contender", "RSS MiB", "USS MiB", "children"], padded),
    ]
    return lines, []


# -- scenario 8: a metrics scrape -----------------------------------------------------------


def scrape(port: int) -> tuple[float, int]:
    started = time.perf_counter()
    with socket.create_connection((LOOPBACK, port), timeout=10) as connection:
        connection.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return time.perf_counter() - started, len(received)


def scenario_8(ctx: "Context") -> tuple[list[str], list[Target]]:
    pool, config = ctx.pool, ctx.config
    keys = [many_key(size, "fork") for size in config.many_sizes]
    live = [(key, contender) for key in keys if (contender := pool.get(key)) is not None]
    times: dict[str, list[float]] = {key: [] for key, _ in live}
    sizes: dict[str, int] = {}
    for _ in range(config.scrapes):
        for key, contender in live:
            if contender.metrics_port is None:
                continue
            elapsed, size = scrape(contender.metrics_port)
            times[key].append(elapsed)
            sizes[key] = size
    rows = []
    for key in keys:
        got = times.get(key, [])
        if not got:
            rows.append([pool.label(key), "unavailable", "", "", ""])
            continue
        ordered = sorted(got)
        rows.append(
            [
                pool.label(key),
                f"{statistics.median(got) * 1e3:.2f}",
                f"{ordered[int(0.9 * (len(ordered) - 1))] * 1e3:.2f}",
                f"{ordered[-1] * 1e3:.2f}",
                f"{sizes.get(key, 0):,}",
            ]
        )
    lines = [
        *wrapped(
            f"GET /metrics on a new connection, {config.scrapes} times per supervisor, "
            "interleaved; client-side time from connect to the end of the reply."
        ),
        "",
        *render(["supervisor", "median ms", "p90 ms", "max ms", "bytes"], rows),
    ]
    hundred = many_key(100, "fork")
    value = statistics.median(times[hundred]) if times.get(hundred) else None
    return lines, [below_ms("a scrape with 100 servers (median)", value, 10, digits=2)]


# -- the run --------------------------------------------------------------------------------

TITLES = {
    1: "Scenario 1: fork per request, against the standard library, the C ceiling and the floor",
    2: "Scenario 2: prefork, against the C inline server and tcpserver",
    3: "Scenario 3: thread and inline modes, against ThreadingTCPServer and TCPServer",
    4: "Scenario 4: many servers configured, load on one; idle wake-ups",
    5: "Scenario 5: isolation: one server flooded (at max_children, or with rejected "
    "clients), another's latency",
    6: "Scenario 6: reload",
    7: "Scenario 7: memory",
    8: "Scenario 8: a metrics scrape",
}


def matrix_cells(selected: Sequence[int], config: Settings) -> list[Cell]:
    cells: list[Cell] = []
    first = config.concurrencies[0]
    if 1 in selected:
        for connections in config.concurrencies:
            for key in ("sv-fork", "std-fork", "std-fork-q", "c-fork", "xinetd", "tcpserver"):
                cells.append((key, connections))
        cells.append(("floor", 0))
    if 2 in selected:
        cells += [(key, first) for key in ("sv-prefork", "c-inline", "tcpserver", "sv-fork")]
    if 3 in selected:
        keys = ("sv-thread", "std-thread", "std-thread-q", "sv-inline", "std-plain", "c-inline")
        cells += [(key, first) for key in keys]
    if 4 in selected:
        cells += scenario_4_cells(config)
    unique: list[Cell] = []
    for cell in cells:
        if cell not in unique:
            unique.append(cell)
    return unique


def ensure_tools() -> list[str]:
    """Install the missing Debian packages when root; returns what is still missing."""

    def missing() -> list[str]:
        return [
            binary
            for binary in PACKAGES
            if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists()
        ]

    wanted = [PACKAGES[binary] for binary in missing()]
    if wanted and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(wanted)} with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["update"], ["install", "-y", "--no-install-recommends", *wanted]):
            subprocess.run(  # noqa: S603
                ["apt-get", *argv],  # noqa: S607
                stdout=subprocess.DEVNULL,
                env=env,
                check=False,
            )
    return missing()


def compile_c(build: Path) -> str | None:
    """Compile bench/c/ into `build`; None when done, else the reason."""
    if shutil.which("gcc") is None:
        return "gcc is not installed"
    for name in ("server", "responder"):
        result = subprocess.run(  # noqa: S603
            ["gcc", "-O2", "-Wall", "-o", str(build / name), str(BENCH / "c" / f"{name}.c")],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return f"gcc {name}.c: {result.stderr.strip().splitlines()[-1:]}"
    return None


def version_of(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(  # noqa: S603
            list(argv), capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "-"
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else "-"


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def header(config: Settings, selected: Sequence[int]) -> list[str]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    load_avg = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    mode = "--quick" if config.quick else "full"
    return [
        "bench/compare.py: the supervisor against its peers, new TCP connection per request",
        f"date:      {now}  ({mode}; scenarios {','.join(map(str, selected))}; "
        f"{config.rounds} round(s) of {config.seconds:g} s)",
        f"cpu:       {cpu_model()} ({os.cpu_count()} CPUs; load average {load_avg} at start)",
        f"kernel:    {platform.system()} {platform.release()} ({platform.machine()}); "
        f"net.core.somaxconn {somaxconn}",
        f"python:    {sys.version.split()[0]} ({platform.python_implementation()})",
        f"tools:     {version_of(['wrk', '-v'])}; {version_of(['gcc', '--version'])}",
        "",
    ]


def run(selected: Sequence[int], config: Settings) -> list[str]:
    lines = header(config, selected)
    print("\n".join(lines), flush=True)

    def emit(section: list[str]) -> None:
        print("\n".join(section), flush=True)
        lines.extend(section)

    missing = ensure_tools()
    if "wrk" in missing:
        emit(["wrk is not installed and could not be installed: nothing to measure"])
        return lines
    if missing:
        emit([f"missing (their contenders are unavailable): {', '.join(missing)}", ""])
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as directory:
        workdir = Path(directory)
        build = workdir / "build"
        build.mkdir()
        failure = compile_c(build)
        if failure:
            emit([f"C contenders unavailable: {failure}", ""])
        pool = Pool(procs, workdir, None if failure else build)
        try:
            samples: dict[Cell, list[Sample]] = {}
            cells = matrix_cells(selected, config)
            if cells:
                print("Scenarios 1-4 (throughput): starting the contenders", flush=True)
                samples = run_matrix(pool, cells, config)
            for number in selected:
                print(f"{TITLES[number]} ...", flush=True)
                started = time.perf_counter()
                section, targets = SCENARIOS[number](Context(pool, procs, workdir, samples, config))
                if number <= 4:
                    section = [*notes_for_matrix(config), *section]
                emit(
                    [
                        "=" * 100,
                        TITLES[number],
                        "=" * 100,
                        *section,
                        "",
                        *(targets_table(targets) if targets else []),
                        f"({time.perf_counter() - started:.1f} s)" if number > 4 else "",
                        "",
                    ]
                )
        finally:
            procs.stop_all()
    return lines


@dataclass(frozen=True)
class Context:
    """What a scenario works with."""

    pool: Pool
    procs: Processes
    workdir: Path
    samples: dict[Cell, list[Sample]]
    config: Settings


SCENARIOS: dict[int, Callable[[Context], tuple[list[str], list[Target]]]] = {
    1: scenario_1,
    2: scenario_2,
    3: scenario_3,
    4: scenario_4,
    5: scenario_5,
    6: scenario_6,
    7: scenario_7,
    8: scenario_8,
}


def parse_only(text: str) -> list[int]:
    numbers = sorted({int(part) for part in re.split(r"[,\s]+", text.strip()) if part})
    if not numbers or any(number not in TITLES for number in numbers):
        raise argparse.ArgumentTypeError(f"scenarios are 1-{len(TITLES)}, got {text!r}")
    return numbers


@contextlib.contextmanager
def more_files() -> Iterator[None]:
    """1000 servers need more than 1024 descriptors: raise the soft limit to the hard one for
    this process and what it starts."""
    import resource  # noqa: PLC0415

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def write_results(text: str) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(RESULTS, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s, concurrency 8")
    parser.add_argument("--only", type=parse_only, default=list(TITLES), help="e.g. 1,3,5")
    parser.add_argument("--rounds", type=int, help="rounds per contender (default 5, quick 1)")
    parser.add_argument("--seconds", type=int, help="whole seconds per load (default 3, quick 1)")
    arguments = parser.parse_args()
    # SIGTERM (timeout, kill) ends the run like Ctrl-C: through the finally blocks that stop
    # every contender, not leaving them behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    config = settings(arguments.quick, arguments.rounds, arguments.seconds)
    started = time.perf_counter()
    with more_files():
        lines = run(arguments.only, config)
    lines.append(f"(whole run: {time.perf_counter() - started:.0f} s)")
    print(lines[-1])
    write_results("\n".join(lines) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
