"""The event loop: the only caller of `select()` in the supervisor.

Callbacks ride in `SelectorKey.data`, so dispatch needs no table of its own. The loop sleeps
until a file descriptor is ready or the next timer is due: there is no polling tick, and an idle
supervisor does not wake up. Other threads hand work to the loop with `call_soon_threadsafe`.
"""

import collections
import contextlib
import heapq
import itertools
import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Callback = Callable[[], None]


@dataclass(order=True)
class Timer:
    """A callback due at `deadline` (monotonic seconds); `cancel()` drops it."""

    deadline: float
    sequence: int
    callback: Callback = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """A selectors loop with readers, timers and a thread-safe call queue."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list[Timer] = []
        self._sequence = itertools.count()
        self._pending: collections.deque[Callback] = collections.deque()
        self._wake_pending = False  # a wake-up byte is written and not yet read
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self.add_reader(self._wake_reader, self._run_pending)
        self._running = False
        self.turn = 0  # counts the turns of the loop: work done in one turn can be shared

    def add_reader(self, fileobj: Any, callback: Callback) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def remove_reader(self, fileobj: Any) -> None:
        self.selector.unregister(fileobj)

    def add_writer(self, fileobj: Any, callback: Callback) -> None:
        self.selector.register(fileobj, selectors.EVENT_WRITE, callback)

    remove_writer = remove_reader

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, next(self._sequence), callback)
        heapq.heappush(self._timers, timer)
        return timer

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
            for key, _ in self.selector.select(self._timeout()):
                key.data()
                if not self._running:
                    break
            self._run_timers()

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
        if not self._timers:
            return None
        return max(0.0, self._timers[0].deadline - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].deadline <= now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def _run_pending(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_reader.recv(4096):
                pass
        # After the bytes are read, before the queue is emptied: a thread that still sees the
        # flag set has queued its callback before this point, so it is run below; one that
        # sees it clear writes a new byte.
        self._wake_pending = False
        while self._pending:
            self._pending.popleft()()
