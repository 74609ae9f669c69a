"""Signals delivered into the loop: a no-op handler and `signal.set_wakeup_fd`.

The handlers do nothing themselves: the C-level handler writes the signal number to a socket the
loop watches, and the loop turns each number into an intent. Reaping, stopping and logging all
happen in the loop, never inside a signal handler.
"""

import _signal  # type: ignore[import-not-found]  # CPython's C module under `signal`
import contextlib
import enum
import os
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervisor.loop import Loop


class Intent(enum.Enum):
    """What a signal asks the supervisor to do."""

    STOP = "stop"
    FAST_STOP = "fast stop"
    RELOAD = "reload"
    REOPEN_LOGS = "reopen logs"
    UPGRADE = "upgrade"
    REAP = "reap"


INTENTS: dict[int, Intent] = {
    signal.SIGTERM: Intent.STOP,
    signal.SIGINT: Intent.STOP,
    signal.SIGQUIT: Intent.FAST_STOP,
    signal.SIGHUP: Intent.RELOAD,
    signal.SIGUSR1: Intent.REOPEN_LOGS,
    signal.SIGUSR2: Intent.UPGRADE,
    signal.SIGCHLD: Intent.REAP,
}
_INTENT_NUMBERS = frozenset(int(signum) for signum in INTENTS)
# One of these does the work of any number that arrived together.
_COALESCED = frozenset({Intent.REAP, Intent.RELOAD, Intent.REOPEN_LOGS, Intent.UPGRADE})


def block_signals() -> set[int]:
    """Block INTENTS' signals; return the previous mask, for `set_signal_mask`. Around every
    fork: `_signal`'s own call, since `signal.pthread_sigmask` turns each number of the mask it
    returns into an enum member, work the parent would do (and pages it would touch) per
    request."""
    previous: set[int] = _signal.pthread_sigmask(signal.SIG_BLOCK, _INTENT_NUMBERS)
    return previous


def set_signal_mask(mask: set[int]) -> None:
    _signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def defer() -> None:
    """Hold INTENTS' signals until a SignalWakeup is installed. Called first thing at start:
    PID 1 in a container has no default signal actions, so a SIGTERM that arrived while the
    configuration was loading would otherwise be lost, and `docker stop` end in SIGKILL. (The
    kernel drops a signal sent to PID 1 without a handler, but queues one that is blocked.)"""
    block_signals()


def release() -> None:
    """Undo `defer()` (a command that does not run the loop)."""
    _signal.pthread_sigmask(signal.SIG_UNBLOCK, _INTENT_NUMBERS)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the wake-up fd already carries the signal to the loop."""


class SignalWakeup:
    """Routes INTENTS' signals into `loop` as calls of `on_intent(intent, signum)`."""

    def __init__(self, loop: "Loop", on_intent: Callable[[Intent, int], None]) -> None:
        self._on_intent = on_intent
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        loop.add_reader(self._reader, self._drain)
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in INTENTS:
            signal.signal(signum, _ignore)
            signal.siginterrupt(signum, False)
        release()  # the signals held by defer() arrive now

    def _drain(self) -> None:
        received = bytearray()
        with contextlib.suppress(BlockingIOError):
            while chunk := self._reader.recv(4096):
                received += chunk
        done: set[Intent] = set()
        for signum in received:  # in order of arrival; a repeated stop signal counts again
            intent = INTENTS.get(signum)
            if intent is None or intent in done:
                continue
            if intent in _COALESCED:
                done.add(intent)
            self._on_intent(intent, signum)

    def close(self) -> None:
        """Stop waking the loop. Our signals are ignored from here on: the process is on its way
        out, and Python would otherwise restore their default action (death) while it exits."""
        signal.set_wakeup_fd(-1)
        for signum, intent in INTENTS.items():
            if intent is not Intent.REAP:
                signal.signal(signum, signal.SIG_IGN)
        self._reader.close()
        self._writer.close()

    def reset_in_child(self) -> None:
        """In a forked child: no wake-up fd, default actions again, but SIGINT ignored (a
        terminal's Ctrl-C reaches the whole process group: the parent drains its children).
        `_signal`'s calls: on every fork, `signal.signal` would convert each old handler to an
        enum member, in Python code that each child would run (and copy pages for)."""
        _signal.set_wakeup_fd(-1)
        for signum in _INTENT_NUMBERS:
            _signal.signal(signum, _signal.SIG_DFL)
        _signal.signal(signal.SIGINT, _signal.SIG_IGN)
        for sock in (self._reader, self._writer):
            os.close(sock.detach())
