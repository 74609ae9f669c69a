"""The event loop: the only caller of `select()` in the supervisor.

Callbacks ride in `SelectorKey.data`, so dispatch needs no table of its own. The loop sleeps
until a file descriptor is ready or the next timer is due: there is no polling tick, and an idle
supervisor does not wake up. Other threads hand work to the loop with `call_soon_threadsafe`.

Work too long for one callback (a scrape of 1,000 servers, the status of each) is a `Job`: a
generator the loop runs a step at a time, for at most SLICE seconds per turn, between the turns
that serve every socket. Nothing else in the supervisor runs while a step does, so a job reads
the supervisor's state without locks, and no thread is started (the process forks).

It is also the supervisor's fault barrier: an exception escaping one callback (a bug, or input
nobody foresaw) is logged with its traceback and counted (`faults`), and the loop goes on with
the next one. A reader or writer whose callback raised is left out of the selector for
FAULT_PAUSE seconds, so that a callback failing on every readiness cannot spin the CPU; its
owner adding or removing it meanwhile works as usual. Only `SystemExit` (and a failure of
select() itself) ends the loop. Other code that catches what it cannot foresee reports it with
`fault()`, so that every such event is logged and counted the same way.
"""

import collections
import contextlib
import heapq
import itertools
import logging
import os
import selectors
import socket
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from supervisor.logs import Throttle, since

log = logging.getLogger("supervisor")

Callback = Callable[[], object]  # (what it returns is not looked at)
FAULT_PAUSE = 0.1  # seconds a reader or writer whose callback raised stays out of the selector
FAULT_LOG_EVERY = 10.0  # seconds: at most one traceback per place, with a count of the others
SLICE = 0.0005  # seconds of job steps per turn of the loop (and the step that ends past it)
CANCELLED_MIN = 64  # cancelled timers in the heap before it may be rebuilt without them


@dataclass(order=True)
class Timer:
    """A callback due at `deadline` (monotonic seconds); `cancel()` drops it."""

    deadline: float
    sequence: int
    callback: Callback = field(compare=False)
    cancelled: bool = field(default=False, compare=False)
    on_cancel: Callback | None = field(default=None, compare=False, repr=False)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self.on_cancel is not None:
                self.on_cancel()


@dataclass(eq=False)
class Job:
    """Work done a step at a time (`steps`: each `next()` is one step, of tens of microseconds);
    `done` gets what the generator returns, `failed` is called instead if a step raised (the
    loop has logged and counted it)."""

    name: str
    steps: Generator[None, None, Any]
    done: Callable[[Any], object]
    failed: Callable[[], object]


@dataclass
class _Paused:
    """A reader or writer taken out of the selector after its callback raised."""

    fileobj: Any
    events: int
    callback: Callback
    timer: Timer


class Loop:
    """A selectors loop with readers, timers and a thread-safe call queue."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.faults = 0  # unexpected exceptions caught (here, or reported with fault())
        self._paused: dict[int, _Paused] = {}  # fd -> a reader or writer out for FAULT_PAUSE
        self._fault_log = Throttle(FAULT_LOG_EVERY)
        self._timers: list[Timer] = []
        self._cancelled = 0  # cancelled timers still in the heap (about: see _timer_cancelled)
        self._sequence = itertools.count()
        self._pending: collections.deque[Callback] = collections.deque()
        self._jobs: collections.deque[Job] = collections.deque()
        self._wake_pending = False  # a wake-up byte is written and not yet read
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self.add_reader(self._wake_reader, self._run_pending)
        self._running = False
        self.turn = 0  # counts the turns of the loop: work done in one turn can be shared

    def add_reader(self, fileobj: Any, callback: Callback) -> None:
        if self._paused:
            self._unpause(fileobj)
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def remove_reader(self, fileobj: Any) -> None:
        if self._paused and self._unpause(fileobj):
            return
        self.selector.unregister(fileobj)

    def add_writer(self, fileobj: Any, callback: Callback) -> None:
        if self._paused:
            self._unpause(fileobj)
        self.selector.register(fileobj, selectors.EVENT_WRITE, callback)

    remove_writer = remove_reader

    def fault(self, where: str) -> None:
        """Report the exception being handled, caught at `where` because nothing else could
        handle it: logged with its traceback (at most once per place every FAULT_LOG_EVERY
        seconds, with a count of the others) and counted."""
        self.faults += 1
        left_out = self._fault_log(where)
        if left_out is not None:
            log.exception("internal error in %s; going on%s", where, since(left_out))

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, next(self._sequence), callback)
        timer.on_cancel = self._timer_cancelled
        heapq.heappush(self._timers, timer)
        return timer

    def _timer_cancelled(self) -> None:
        """A cancelled timer stays in the heap until it comes to the top: under a flood of
        connections each cancelling a long timeout, thousands would pile up behind the short
        ones, and then be popped in one go (10,000: 39 ms). Rebuild the heap without them once
        they are half of it."""
        self._cancelled += 1
        if self._cancelled > CANCELLED_MIN and 2 * self._cancelled > len(self._timers):
            self._timers = [timer for timer in self._timers if not timer.cancelled]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def start_job(
        self,
        name: str,
        steps: Generator[None, None, Any],
        done: Callable[[Any], object],
        failed: Callable[[], object],
    ) -> Job:
        """Run `steps` a slice at a time from the next turn on (see `Job`)."""
        job = Job(name, steps, done, failed)
        self._jobs.append(job)
        return job

    def call_soon_threadsafe(self, callback: Callback) -> None:
        """Run `callback` in the loop's thread soon; safe to call from any thread.

        One wake-up byte serves every call made before the loop runs the queue: a thread that
        finds one already on its way adds its callback and writes nothing (each write is a
        system call and, in thread mode, one per request). The loop clears the flag after it
        has read the bytes and before it empties the queue (see _run_pending)."""
        self._pending.append(callback)
        if self._wake_pending:
            return
        self._wake_pending = True
        # BlockingIOError: the socket is full of bytes already. OSError: the loop is closed (a
        # thread abandoned at shutdown finishing late); there is nothing left to wake.
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        """Dispatch events until `stop()` is called."""
        self._running = True
        while self._running:
            self.turn += 1
            timeout = 0.0 if self._jobs else self._timeout()
            for key, _ in self.selector.select(timeout):
                try:  # (free in CPython 3.11+ while nothing is raised)
                    key.data()
                except Exception:
                    self._callback_failed(key)
                if not self._running:
                    break
            self._run_timers()
            if self._jobs and self._running:
                self._run_jobs()

    def _callback_failed(self, key: selectors.SelectorKey) -> None:
        self.fault(_name(key.data))
        try:
            current = self.selector.get_key(key.fileobj)
        except (KeyError, ValueError):
            return  # its owner removed it (or closed it) before it failed
        if current.data is not key.data:
            return
        self.selector.unregister(key.fileobj)
        timer = self.call_later(FAULT_PAUSE, lambda: self._resume(key.fd))
        self._paused[key.fd] = _Paused(key.fileobj, key.events, key.data, timer)

    def _resume(self, fd: int) -> None:
        paused = self._paused.pop(fd, None)
        if paused is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):  # (closed meanwhile)
                self.selector.register(paused.fileobj, paused.events, paused.callback)

    def _unpause(self, fileobj: Any) -> bool:
        """Forget a paused reader or writer (its owner now adds or removes it itself)."""
        for fd, paused in self._paused.items():
            if paused.fileobj is fileobj or fd == fileobj:
                paused.timer.cancel()
                del self._paused[fd]
                return True
        return False

    def close_in_child(self) -> None:
        """In a forked child, which never runs this loop: close its descriptors only. Closing
        the selector would first empty its map of every registered socket, touching (and so
        copying) one key object per server in every child."""
        for fd in (self.selector.fileno(), self._wake_reader.detach(), self._wake_writer.detach()):
            os.close(fd)

    def close(self) -> None:
        """Release the selector and wake-up sockets."""
        self.selector.close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _timeout(self) -> float | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
            self._cancelled = max(0, self._cancelled - 1)
        if not self._timers:
            return None
        return max(0.0, self._timers[0].deadline - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].deadline <= now:
            timer = heapq.heappop(self._timers)
            timer.on_cancel = None  # (out of the heap: a cancel now counts for nothing)
            if timer.cancelled:
                self._cancelled = max(0, self._cancelled - 1)
            else:
                try:
                    timer.callback()
                except Exception:
                    self.fault(_name(timer.callback))

    def _run_jobs(self) -> None:
        """Steps of the jobs in turn (one step each, round and round) until SLICE is used."""
        jobs = self._jobs
        deadline = time.perf_counter() + SLICE
        while jobs:
            job = jobs[0]
            try:
                next(job.steps)
            except StopIteration as stop:
                jobs.popleft()
                self._finish(job, partial(job.done, stop.value))
            except Exception:
                jobs.popleft()
                self.fault(f"job {job.name}")
                self._finish(job, job.failed)
            else:
                jobs.rotate(-1)
            if time.perf_counter() >= deadline:
                return

    def _finish(self, job: Job, call: Callback) -> None:
        try:
            call()
        except Exception:
            self.fault(f"job {job.name}: its end")

    def _run_pending(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_reader.recv(4096):
                pass
        # After the bytes are read, before the queue is emptied: a thread that still sees the
        # flag set has queued its callback before this point, so it is run below; one that
        # sees it clear writes a new byte.
        self._wake_pending = False
        while self._pending:
            callback = self._pending.popleft()
            try:
                callback()
            except Exception:
                self.fault(_name(callback))


def _name(callback: Callback) -> str:
    """Where a callback's code is, for a log line: its qualified name."""
    inner = getattr(callback, "func", callback)  # (a functools.partial)
    return str(getattr(inner, "__qualname__", None) or type(inner).__name__)
