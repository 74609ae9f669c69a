"""The child table: fork, reap, and exit status decoding.

Invariants: every pid we fork is in the table until it is reaped; `reap()` collects every child
of ours that has exited, without ever blocking; counts per owner are derived from the table.

Processes that are not in the table are reaped only with `reap_strangers` (PID 1 in a container,
where orphans are re-parented to us). Otherwise such a process was started by code running in
the supervisor itself (an inline handler's `subprocess.Popen`), and reaping it would steal its
exit status from its owner. Every wait is `__WNOTHREAD`: it sees only the children of the thread
that forks and reaps (the loop's, which is also the one orphans are re-parented to), never those
of a thread-mode handler, so even as PID 1 a handler thread's `subprocess.run` keeps its status.
System calls come in through `SystemCalls` so unit tests can replace them.
"""

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar

Owner = TypeVar("Owner", bound=Hashable)

# Linux's __WNOTHREAD (not in the os module): wait only for children of the calling thread.
WNOTHREAD = 0x20000000 if sys.platform == "linux" else 0


@dataclass(frozen=True)
class SystemCalls:
    """The seam between the child table and the kernel."""

    fork: Callable[[], int] = os.fork
    waitid: Callable[[int, int, int], object | None] = os.waitid
    wait4: Callable[[int, int], tuple[int, int, object]] = os.wait4
    kill: Callable[[int, int], None] = os.kill
    clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: an exit code, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def decode(cls, status: int) -> "ExitStatus":
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        if os.WIFEXITED(status):
            return cls(code=os.WEXITSTATUS(status))
        return cls(code=None)  # stopped or continued: not an exit

    @property
    def ok(self) -> bool:
        return self.code == 0

    def __str__(self) -> str:
        if self.signal is not None:
            return f"killed by signal {signal_name(self.signal)}"
        return f"exited with status {self.code}"


def signal_name(signum: int) -> str:
    """SIGTERM for 15; real-time signals, which have no name, as SIGRTMIN+N."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"


@dataclass(slots=True)
class Child(Generic[Owner]):
    """A live child process and the server it belongs to."""

    pid: int
    owner: Owner
    started: float
    signalled: int | None = None  # the signal we sent it, if any
    adopted: bool = False  # forked by the fork server: signalled and reaped through it
    source: Hashable = None  # the client's source, counted by the server's guard
    deadline: float = 0.0  # request_timeout: when it is sent SIGTERM (then SIGKILL); 0: never
    timed_out: bool = False  # it ran over its request_timeout and was sent SIGTERM
    keeper: Any = None  # whoever started it, to be told of its exit (its server's mode)


@dataclass(frozen=True, slots=True)
class Reaped(Generic[Owner]):
    """A reaped process: `child` is None for a stranger (an orphan re-parented to us)."""

    pid: int
    status: ExitStatus
    rusage: object
    child: Child[Owner] | None
    duration: float = 0.0


@dataclass
class ChildTable(Generic[Owner]):
    """The parent's own record of its children, per owner."""

    calls: SystemCalls = field(default_factory=SystemCalls)
    reap_strangers: bool = False
    _children: dict[int, Child[Owner]] = field(default_factory=dict)
    _counts: Counter[Owner] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self._children)

    def __iter__(self) -> Iterator[Child[Owner]]:
        return iter(list(self._children.values()))

    def count(self, owner: Owner) -> int:
        return self._counts[owner]

    def spawn(
        self,
        owner: Owner,
        run_child: Callable[[], NoReturn],
        source: Hashable = None,
        keeper: Any = None,
    ) -> int:
        """Fork; the child runs `run_child` (which must end in os._exit); the parent records it."""
        pid = self.calls.fork()
        if pid == 0:
            run_child()
        self._children[pid] = Child(pid, owner, self.calls.clock(), source=source, keeper=keeper)
        self._counts[owner] += 1
        return pid

    def adopt(
        self,
        pid: int,
        owner: Owner,
        started: float,
        source: Hashable = None,
        keeper: Any = None,
    ) -> Child[Owner]:
        """Record a child forked by the fork server on our behalf (we cannot wait for it: its
        exit comes through `release`)."""
        child = Child(pid, owner, started, adopted=True, source=source, keeper=keeper)
        self._children[pid] = child
        self._counts[owner] += 1
        return child

    def get(self, pid: int) -> Child[Owner] | None:
        return self._children.get(pid)

    def release(self, pid: int, status: ExitStatus, rusage: object) -> Reaped[Owner]:
        """An adopted child has been reaped by the process that forked it."""
        return self._forget(pid, status, rusage)

    def reap(self) -> list[Reaped[Owner]]:
        """Collect every exited child of ours (and strangers if asked), never blocking."""
        reaped: list[Reaped[Owner]] = []
        while (pid := self._next_exited()) is not None:
            if pid not in self._children and not self.reap_strangers:
                # Someone else's process heads the queue: collect ours one by one instead (not
                # the adopted ones: their fork server waits for them).
                ours = [pid for pid, child in self._children.items() if not child.adopted]
                reaped.extend(r for p in ours if (r := self._collect(p)))
                break
            collected = self._collect(pid)
            if collected is None:
                break
            reaped.append(collected)
        return reaped

    def _next_exited(self) -> int | None:
        """The pid of an exited child, left waitable (WNOWAIT), or None."""
        try:
            info = self.calls.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT | WNOTHREAD)
        except ChildProcessError:
            return None
        pid: int | None = getattr(info, "si_pid", None)
        return pid or None

    def _collect(self, pid: int) -> Reaped[Owner] | None:
        try:
            pid, status, rusage = self.calls.wait4(pid, os.WNOHANG | WNOTHREAD)
        except ChildProcessError:
            return None  # already collected by someone else
        if pid == 0:
            return None
        return self._forget(pid, ExitStatus.decode(status), rusage)

    def _forget(self, pid: int, status: ExitStatus, rusage: object) -> Reaped[Owner]:
        child = self._children.pop(pid, None)
        if child is None:
            return Reaped(pid, status, rusage, None)
        self._counts[child.owner] -= 1
        if not self._counts[child.owner]:
            del self._counts[child.owner]
        return Reaped(pid, status, rusage, child, self.calls.clock() - child.started)

    def signal_all(self, signum: int) -> int:
        """Send `signum` to every live child of ours and mark the adopted ones, which the
        caller signals through their fork server (it knows whether the pid is still its
        child; we would risk a reused pid); return how many were signalled."""
        sent = 0
        for child in self._children.values():
            if not child.adopted:
                try:
                    self.calls.kill(child.pid, signum)
                except ProcessLookupError:
                    continue  # exited, not reaped yet
            child.signalled = signum
            sent += 1
        return sent
