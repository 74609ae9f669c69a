"""The contenders by key, each started on first use and kept for the whole run.

A contender that cannot start (a missing package, or a supervisor that rejects its
configuration) is remembered as unavailable with the reason, and the run goes on without it.
Keys: `sv-MODE` (a supervisor), `many-SIZE-MODE` (a supervisor with SIZE servers, load on one),
`std-*` (the standard library's servers), `c-*`, `xinetd`, `tcpserver` and `floor`.
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
from bench.harness.network import wait_serving
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
}

STDLIB: Mapping[str, tuple[str, ...]] = {  # bench/stdlib_server.py's arguments
    "std-fork": ("forking",),
    "std-fork-q": ("forking", "1024"),
    "std-thread": ("threading",),
    "std-thread-q": ("threading", "1024"),
    "std-plain": ("plain",),
}

SUPERVISOR_MODES: Mapping[str, str] = {
    "sv-fork": "fork",
    "sv-thread": "thread",
    "sv-inline": "inline",
}


def many_key(size: int, mode: str) -> str:
    """The key of a supervisor with `size` servers in `mode` (1: the plain one)."""
    return f"sv-{mode}" if size == 1 else f"many-{size}-{mode}"


def supervisor_spec(key: str) -> SupervisorSpec | None:
    """The configuration of a supervisor contender; None for the others."""
    if key in SUPERVISOR_MODES:
        return SupervisorSpec(SUPERVISOR_MODES[key])
    if key == "sv-prefork":
        return SupervisorSpec("prefork", extra=f"workers = {PREFORK_WORKERS}")
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
        return LABELS[key]

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
        spec = supervisor_spec(key)
        if spec is not None:
            return start_supervisor(self.procs, self.workdir, key, self.label(key), spec)
        if key in STDLIB:
            argv = [PYTHON, str(BENCH / "stdlib_server.py"), *STDLIB[key]]
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
