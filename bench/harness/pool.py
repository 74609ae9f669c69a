"""The contenders by key, each started on first use and kept for the whole run.

A contender that cannot start (a missing package, or a supervisor that rejects its
configuration) is remembered as unavailable with the reason, and the run goes on without it.
Keys: `sv-MODE` (a supervisor), `many-SIZE-MODE` (a supervisor with SIZE servers, load on one),
`std-*` (the standard library's servers), `c-*`, `xinetd`, `tcpserver` and `floor`; for scenario
9, `sv-wsgi-MODE` and `sv-hello-handler|server-MODE` (a supervisor hosting bench.hosted_apps's
code) and `std-wsgi-*` (the standard library's WSGI servers, bench/wsgi_server.py), HTTP
servers whose readiness is any `200 OK` reply.
"""

import os
from collections.abc import Mapping
from pathlib import Path

from bench.harness.contenders import (
    Contender,
    Unavailable,
    start_printing_port,
    start_tcpserver,
    start_xinetd,
)
from bench.harness.load import Sample, fork_floor, load
from bench.harness.network import Expected, http_ok, is_reply, wait_serving
from bench.harness.places import BENCH, PYTHON
from bench.harness.processes import Processes
from bench.harness.supervisors import SupervisorSpec, start_supervisor

PREFORK_WORKERS = os.cpu_count() or 1  # the default of `workers`: one per CPU

LABELS: Mapping[str, str] = {
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
    "std-wsgi-plain": "wsgiref WSGIServer",
    "std-wsgi-plain-q": "wsgiref WSGIServer, backlog 1024",
    "std-wsgi-thread": "ThreadingMixIn + WSGIServer",
    "std-wsgi-thread-q": "ThreadingMixIn + WSGIServer, backlog 1024",
    "std-wsgi-fork": "ForkingMixIn + WSGIServer",
    "std-wsgi-fork-q": "ForkingMixIn + WSGIServer, backlog 1024",
}

STDLIB: Mapping[str, tuple[str, ...]] = {  # bench/stdlib_server.py's arguments
    "std-fork": ("forking",),
    "std-fork-q": ("forking", "1024"),
    "std-thread": ("threading",),
    "std-thread-q": ("threading", "1024"),
    "std-plain": ("plain",),
}

WSGI_PEERS: Mapping[str, tuple[str, ...]] = {  # bench/wsgi_server.py's arguments
    "std-wsgi-plain": ("plain",),
    "std-wsgi-plain-q": ("plain", "1024"),
    "std-wsgi-thread": ("threading",),
    "std-wsgi-thread-q": ("threading", "1024"),
    "std-wsgi-fork": ("forking",),
    "std-wsgi-fork-q": ("forking", "1024"),
}

HOSTED_MODES = ("fork", "thread", "inline", "prefork")
# What serves scenario 9's `bench`: bench.hosted_apps's code, through `handler =` or `server =`.
HOSTED_CODE: Mapping[str, str] = {
    "wsgi": 'server = "bench.hosted_apps:wsgi_server"',
    "hello-handler": 'handler = "bench.hosted_apps:QuietHello"',
    "hello-server": 'server = "bench.hosted_apps:hello_server"',
}
HOSTED_LABELS: Mapping[str, str] = {
    "wsgi": "server = wsgi_server",
    "hello-handler": "handler = QuietHello",
    "hello-server": "server = hello_server",
}

SUPERVISOR_MODES: Mapping[str, str] = {
    "sv-fork": "fork",
    "sv-thread": "thread",
    "sv-inline": "inline",
}


def many_key(size: int, mode: str) -> str:
    """The key of a supervisor with `size` servers in `mode` (1: the plain one)."""
    return f"sv-{mode}" if size == 1 else f"many-{size}-{mode}"


def hosted_key(code: str, mode: str) -> str:
    """The key of a scenario 9 supervisor running `code` (a key of HOSTED_CODE) in `mode`."""
    return f"sv-{code}-{mode}"


def hosted_parts(key: str) -> tuple[str, str] | None:
    """A scenario 9 supervisor's code (a key of HOSTED_CODE) and mode; None for the others."""
    code, _, mode = key.removeprefix("sv-").rpartition("-")
    return (code, mode) if code in HOSTED_CODE and mode in HOSTED_MODES else None


def expected_reply(key: str) -> Expected:
    """What a contender's reply is checked against before it is loaded."""
    return http_ok if key in WSGI_PEERS or hosted_parts(key) else is_reply


def supervisor_spec(key: str) -> SupervisorSpec | None:
    """The configuration of a supervisor contender; None for the others."""
    if key in SUPERVISOR_MODES:
        return SupervisorSpec(SUPERVISOR_MODES[key])
    if key == "sv-prefork":
        return SupervisorSpec("prefork", extra=f"workers = {PREFORK_WORKERS}")
    if parts := hosted_parts(key):
        code, mode = parts
        workers = f"workers = {PREFORK_WORKERS}" if mode == "prefork" else ""
        return SupervisorSpec(mode, code=HOSTED_CODE[code], extra=workers)
    if key.startswith("many-"):
        _, size, mode = key.split("-")
        return SupervisorSpec(mode, idle=int(size) - 1)
    return None


class Pool:
    """The contenders, each started on first use and kept for the whole run."""

    def __init__(self, procs: Processes, workdir: Path, build: Path | None) -> None:
        self.procs = procs
        self.workdir = workdir
        self.build = build
        self.running: dict[str, Contender] = {}
        self.unavailable: dict[str, str] = {}
        self.floor_rss: list[int] = []  # the fork floor's resident size, every run

    @staticmethod
    def label(key: str) -> str:
        if key.startswith("many-"):
            _, size, mode = key.split("-")
            return f"supervisor {mode}, {size} servers"
        if parts := hosted_parts(key):
            code, mode = parts
            workers = f" ({PREFORK_WORKERS} workers)" if mode == "prefork" else ""
            return f"supervisor {mode}{workers}, {HOSTED_LABELS[code]}"
        return LABELS[key]

    def get(self, key: str) -> Contender | None:
        if key in self.running:
            return self.running[key]
        if key in self.unavailable:
            return None
        print(f"  starting {self.label(key)} ...", flush=True)
        try:
            contender = self._start(key)
            if contender.proc is not None and not wait_serving(
                contender.port, expected=expected_reply(key)
            ):
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
        spec = supervisor_spec(key)
        if spec is not None:
            return start_supervisor(self.procs, self.workdir, key, self.label(key), spec)
        if key in STDLIB:
            argv = [PYTHON, str(BENCH / "stdlib_server.py"), *STDLIB[key]]
            return start_printing_port(self.procs, key, self.label(key), argv)
        if key in WSGI_PEERS:
            argv = [PYTHON, str(BENCH / "wsgi_server.py"), *WSGI_PEERS[key]]
            return start_printing_port(self.procs, key, self.label(key), argv)
        if key == "floor":
            return Contender(key, self.label(key), None)
        return self._start_c(key, self.label(key))

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
            sample, rss = fork_floor(self.procs, seconds)
            self.floor_rss.append(rss)
            return sample
        return load(self.procs, contender.pid, contender.port, connections, seconds)
